import pytest
import torch

from divcfg.model.delay import delay_valid_mask, delayed_length, undelay
from divcfg.model.guidance import cfg_mix, sample_tokens
from divcfg.model.policy import build_policy
from divcfg.model.policy_config import policy_config
from divcfg.model.text_condition import PromptTooLongError

PROMPTS = ["a calm piano melody", "fast loud drums", "", "ünïcödé bells"]


@pytest.fixture(scope="module")
def policy():
    return build_policy(seed=0).eval()


def generate_reference(policy, cond, n_frames, guidance_scale, generator):
    """Slow reference sampler: recompute the whole prefix at every step (no KV cache)."""
    k = policy.cfg.n_codebooks
    b = cond.states.shape[0]
    both = policy.with_null(cond) if guidance_scale != 1 else cond
    valid = delay_valid_mask(k, n_frames)
    columns = torch.full((b, k, 1), policy.special, dtype=torch.long)
    step_logits = []
    with torch.no_grad():
        for s in range(delayed_length(n_frames, k)):
            inp = torch.cat([columns, columns]) if guidance_scale != 1 else columns
            logits = policy.forward_delayed(inp, both)[:, :, -1]
            if guidance_scale != 1:
                logits = cfg_mix(logits[:b], logits[b:], guidance_scale)
            step_logits.append(logits)
            tokens, _ = sample_tokens(logits, generator=generator)
            tokens = torch.where(valid[:, s], tokens, policy.special)
            columns = torch.cat([columns, tokens[:, :, None]], dim=2)
    return undelay(columns[:, :, 1:], n_frames), torch.stack(step_logits, 2)


def test_tiny_factory_is_fast():
    """Counted, not timed (a wall-clock bound fails on a loaded machine): the tiny model is small and one generate
    call is cheap in matmul FLOPs, so every test that builds one runs in milliseconds."""
    from torch.utils.flop_counter import FlopCounterMode
    m = build_policy()
    assert sum(p.numel() for p in m.parameters()) < 1_000_000  # 621,696
    with FlopCounterMode(display=False) as flops:
        m.generate(m.encode_condition(["x"]), 4)
    assert 0 < flops.get_total_flops() < 10_000_000  # 2.66 MFLOP


@pytest.mark.parametrize("gamma", [1.0, 3.0])
def test_kv_cache_matches_full_recompute(policy, gamma):
    cond = policy.encode_condition(PROMPTS)
    fast = policy.generate(cond, 12, guidance_scale=gamma, generator=torch.Generator().manual_seed(1),
                           return_logits=True)
    codes, ref_logits = generate_reference(policy, cond, 12, gamma, torch.Generator().manual_seed(1))
    assert torch.allclose(fast.step_logits, ref_logits, atol=1e-5), (fast.step_logits - ref_logits).abs().max()
    assert torch.equal(fast.codes, codes)


@pytest.mark.parametrize("gamma", [1.0, 3.0])
def test_step_logits_match_whole_sequence_logits(policy, gamma):
    cond = policy.encode_condition(PROMPTS[:2])
    out = policy.generate(cond, 9, guidance_scale=gamma, generator=torch.Generator().manual_seed(2),
                          return_logits=True)
    whole = policy.guided_logits(out.codes, cond, gamma)
    assert whole.shape == (2, policy.cfg.n_codebooks, 9, policy.cfg.card)
    assert torch.allclose(undelay(out.step_logits, 9), whole, atol=1e-5)
    # Stored log-probs are those of the sampled codes under the (unfiltered) guided distribution.
    lp = torch.log_softmax(whole, -1).gather(-1, out.codes[..., None]).squeeze(-1)
    assert torch.allclose(out.logprobs, lp, atol=1e-5)


def test_gamma_one_equals_conditional_model(policy):
    cond = policy.encode_condition(PROMPTS[:2])
    codes = torch.randint(0, policy.cfg.card, (2, policy.cfg.n_codebooks, 6))
    assert torch.equal(policy.guided_logits(codes, cond, 1.0), policy.logits(codes, cond))


def test_cfg_uses_null_condition(policy):
    cond = policy.encode_condition(PROMPTS[:2])
    codes = torch.randint(0, policy.cfg.card, (2, policy.cfg.n_codebooks, 6))
    null = policy.null_condition(2, cond.states.shape[1])
    expect = cfg_mix(policy.logits(codes, cond), policy.logits(codes, null), 3.0)
    assert torch.allclose(policy.guided_logits(codes, cond, 3.0), expect, atol=1e-5)


def test_seeded_sampling_is_reproducible_and_filters_apply(policy):
    cond = policy.encode_condition(PROMPTS[:2])
    a = policy.generate(cond, 8, top_k=5, top_p=0.9, temperature=0.8, generator=torch.Generator().manual_seed(3))
    b = policy.generate(cond, 8, top_k=5, top_p=0.9, temperature=0.8, generator=torch.Generator().manual_seed(3))
    c = policy.generate(cond, 8, top_k=5, top_p=0.9, temperature=0.8, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a.codes, b.codes) and not torch.equal(a.codes, c.codes)
    assert a.codes.min() >= 0 and a.codes.max() < policy.cfg.card
    # With top_k=1 sampling is greedy: the argmax of the model's own logits.
    g = policy.generate(cond, 6, top_k=1, generator=torch.Generator().manual_seed(5))
    assert torch.equal(g.codes, policy.logits(g.codes, cond).argmax(-1))


def test_condition_dropout_gives_null(policy):
    cond = policy.encode_condition(PROMPTS[:2])
    dropped = policy.drop_condition(cond, torch.tensor([True, False]))
    null = policy.null_condition(2, cond.states.shape[1])
    assert torch.equal(dropped.states[0], null.states[0]) and torch.equal(dropped.states[1], cond.states[1])
    assert dropped.mask[0].tolist() == [True] + [False] * (cond.mask.shape[1] - 1)


def test_presets_and_bad_config():
    assert policy_config("small").dim == 256 and policy_config("base").n_layers == 24
    with pytest.raises(ValueError, match="unknown model preset 'huge'; known presets: tiny, small, medium, base"):
        policy_config("huge")
    with pytest.raises(ValueError, match="model.dim=66 is not divisible by model.n_heads=4"):
        policy_config("tiny", dim=66, n_heads=4)


def test_prompt_too_long(policy):
    with pytest.raises(PromptTooLongError, match="over the text encoder's limit of 96"):
        policy.encode_condition(["x" * 97])
    assert policy.encode_condition(["x" * 97], truncate=True).states.shape[1] == 96


def test_generate_rejects_bad_arguments(policy):
    cond = policy.encode_condition(["a"])
    with pytest.raises(ValueError, match="guidance_scale must be >= 0, got -1"):
        policy.generate(cond, 4, guidance_scale=-1)
    with pytest.raises(ValueError, match="top_p must be in"):
        policy.generate(cond, 4, top_p=0.0)
    with pytest.raises(ValueError, match="n_frames must be in"):
        policy.generate(cond, policy.cfg.max_frames + 1)


def test_logits_trainable_and_causal(policy):
    """Changing a later code never changes the logits of an earlier one (no look-ahead through the delay)."""
    cond = policy.encode_condition(["a"])
    codes = torch.randint(0, policy.cfg.card, (1, policy.cfg.n_codebooks, 8))
    base = policy.logits(codes, cond)
    changed = codes.clone()
    changed[:, :, 5:] = (changed[:, :, 5:] + 1) % policy.cfg.card
    after = policy.logits(changed, cond)
    # Frame t of codebook k is predicted at column t+k from columns < t+k. The first changed cell is frame 5 of
    # codebook 0, at column 5, so every prediction at a column <= 5 (frames t <= 5-k) must be unchanged.
    for k in range(policy.cfg.n_codebooks):
        assert torch.allclose(base[:, k, : 6 - k], after[:, k, : 6 - k], atol=1e-6)
    assert not torch.allclose(base[:, 0, 6], after[:, 0, 6])
    assert not torch.allclose(base, after)


def test_word_features_name_whole_words_wherever_they_stand():
    from divcfg.model.text_condition import tokenize_prompts
    ids, words, mask = tokenize_prompts(["a fast tune", "Fast, low-pitched"], 32, word_buckets=4096)
    fast_a, fast_b = words[0, 2:6], words[1, 0:4]
    assert fast_a.unique().numel() == 1 and torch.equal(fast_a, fast_b)  # same word, other position and case
    assert words[0, 1] == 0 and words[1, 4] == 0 and words[0, 11:].eq(0).all()  # space, comma, padding
    assert words[1, 6:17].unique().numel() == 1 and words[1, 6] != fast_a[0]  # "low-pitched" is one word
    assert (words[mask] >= 0).all() and words.max() <= 4096
    _, no_words, _ = tokenize_prompts(["a fast tune"], 32, word_buckets=0)
    assert not no_words.any()


def test_inference_linear_matches_nn_linear_and_follows_weight_updates():
    """The cached-Wᵀ fast path (CPU, grad off) against F.linear, including after an in-place update and a
    state-dict load, which must rebuild the cached copy; training keeps F.linear and its gradients."""
    import torch.nn.functional as F

    from divcfg.model.layers import Linear
    lin = Linear(16, 24)
    x = torch.randn(2, 3, 16)
    with torch.no_grad():
        assert torch.allclose(lin(x), F.linear(x, lin.weight, lin.bias), atol=1e-6)
        lin.weight.mul_(2.0)  # an optimizer step is in place too
        assert torch.allclose(lin(x), F.linear(x, lin.weight, lin.bias), atol=1e-6)
    other = Linear(16, 24)
    other.load_state_dict(lin.state_dict())
    lin.load_state_dict({k: torch.randn_like(v) for k, v in lin.state_dict().items()})
    with torch.inference_mode():
        assert torch.allclose(lin(x), F.linear(x, lin.weight, lin.bias), atol=1e-6)
        assert not torch.allclose(lin(x), other(x))
    assert set(lin.state_dict()) == {"weight", "bias"}
    y = lin(x).sum()  # grad enabled: the ordinary path, differentiable
    y.backward()
    assert lin.weight.grad is not None
    # A fused optimizer writes the weights without bumping their version: the cache must follow it anyway.
    opt = torch.optim.Adam(lin.parameters(), lr=0.1, fused=True)
    with torch.no_grad():
        before = lin(x)
    lin(x).square().sum().backward()
    opt.step()
    with torch.no_grad():
        assert not torch.allclose(lin(x), before) and torch.allclose(lin(x), F.linear(x, lin.weight, lin.bias),
                                                                     atol=1e-6)
    # bf16 weights take F.linear itself, with no transposed copy (that layout is slower for bf16 GEMM).
    half = Linear(16, 24).to(torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(half(x.bfloat16()), F.linear(x.bfloat16(), half.weight, half.bias))
    assert half._transposed is None
