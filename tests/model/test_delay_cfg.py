import pytest
import torch

from divcfg.model.delay import delay, delay_valid_mask, undelay
from divcfg.model.guidance import cfg_mix, filter_logits, sample_from_logits, sample_tokens, top_k_indices


def test_delay_hand_example():
    codes = torch.tensor([[[1, 2, 3], [4, 5, 6]]])  # B=1, K=2, T=3
    assert delay(codes, 9).tolist() == [[[1, 2, 3, 9], [9, 4, 5, 6]]]
    assert delay_valid_mask(2, 3).tolist() == [[True, True, True, False], [False, True, True, True]]


@pytest.mark.parametrize("k,t", [(1, 5), (4, 7), (8, 3)])
def test_delay_round_trip(k, t):
    codes = torch.randint(0, 50, (3, k, t))
    seq = delay(codes, 50)
    assert seq.shape == (3, k, t + k - 1)
    assert torch.equal(undelay(seq, t), codes)
    # Padding cells are exactly the invalid ones.
    assert torch.equal(seq == 50, ~delay_valid_mask(k, t).expand(3, -1, -1))


def test_undelay_carries_trailing_dims():
    logits = torch.randn(2, 3, 6, 5)  # [B, K, S=T+K-1, V], T=4
    out = undelay(logits, 4)
    for k in range(3):
        assert torch.equal(out[:, k], logits[:, k, k:k + 4])


def test_cfg_mix_hand_computed():
    cond = torch.tensor([2.0, 0.0, -1.0])
    uncond = torch.tensor([1.0, 1.0, 1.0])
    # uncond + 3 * (cond - uncond) = [1+3, 1-3, 1-6]
    assert torch.equal(cfg_mix(cond, uncond, 3.0), torch.tensor([4.0, -2.0, -5.0]))
    assert torch.equal(cfg_mix(cond, uncond, 0.0), uncond)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.5, 3.0, 7.0])
def test_cfg_mix_matches_the_written_out_formula(gamma):
    """cfg_mix is one fused lerp; the reference is METHOD.md's uncond + γ · (cond − uncond), to float rounding."""
    cond, uncond = torch.randn(3, 4, 9, 64) * 4, torch.randn(3, 4, 9, 64) * 4
    assert torch.allclose(cfg_mix(cond, uncond, gamma), uncond + gamma * (cond - uncond), atol=1e-5, rtol=1e-6)


def test_cfg_mix_gamma_one_is_exactly_conditional():
    cond, uncond = torch.randn(2, 4, 7, 11), torch.randn(2, 4, 7, 11)
    assert cfg_mix(cond, uncond, 1.0) is cond


def test_cfg_mix_rejects_negative_scale():
    with pytest.raises(ValueError, match="guidance_scale must be >= 0, got -0.5"):
        cfg_mix(torch.zeros(1), torch.zeros(1), -0.5)


def test_filter_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[False, False, True, True]]
    # Mass before each token: 0, .5, .8, .95 -> top_p=0.7 keeps the first two.
    assert torch.isinf(filter_logits(logits, top_p=0.7)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.5)).tolist() == [[False, True, True, True]]
    with pytest.raises(ValueError, match="top_p must be in \\(0, 1\\], got 1.5"):
        filter_logits(logits, top_p=1.5)
    with pytest.raises(ValueError, match="top_p must be in \\(0, 1\\], got 0"):
        filter_logits(logits, top_p=0)


def test_sample_logprobs_are_those_of_the_drawn_distribution(gen):
    logits = filter_logits(torch.randn(64, 10), top_k=3)
    tokens, logprobs = sample_from_logits(logits, gen)
    assert torch.allclose(logprobs, torch.log_softmax(logits, -1).gather(-1, tokens[:, None]).squeeze(-1))
    assert torch.isfinite(logprobs).all()  # never a filtered token


@pytest.mark.parametrize("top_k,temperature", [(0, 1.0), (3, 1.0), (5, 0.7)])
def test_fast_sampler_matches_reference_distribution(top_k, temperature):
    """The top-k / inverse-CDF fast path draws from the same distribution, with the same log-probs, as
    filter_logits + multinomial."""
    logits = torch.randn(2, 8)
    reference = torch.softmax(filter_logits(logits, temperature, top_k), -1)
    rows = logits.repeat(20000, 1)
    tokens, logprobs = sample_tokens(rows, temperature, top_k, generator=torch.Generator().manual_seed(0))
    for r in range(2):
        freq = torch.bincount(tokens[r::2], minlength=8).float() / 20000
        assert torch.allclose(freq, reference[r], atol=0.015), (freq, reference[r])
        assert torch.allclose(logprobs[r::2], reference[r].log()[tokens[r::2]], atol=1e-5)
    if top_k:
        assert all(reference[r, tokens[r::2]].min() > 0 for r in range(2))  # never a filtered token


@pytest.mark.parametrize("rows,vocab,k", [(1, 8, 1), (32, 2048, 250), (5, 300, 299)])
def test_top_k_indices_match_torch_topk(rows, vocab, k):
    """The CPU fast path (NumPy's argpartition) selects the same set as torch.topk, also on a strided view."""
    logits = torch.randn(rows, 2 * vocab)[:, ::2]
    with torch.inference_mode():  # as in the sampler
        fast = top_k_indices(logits, k)
    assert fast.dtype == torch.long and fast.shape == (rows, k)
    assert torch.equal(fast.sort(-1).values, torch.topk(logits, k, dim=-1).indices.sort(-1).values)


def test_fast_sampler_validates():
    with pytest.raises(ValueError, match="top_p must be in \\(0, 1\\], got 2"):
        sample_tokens(torch.zeros(1, 3), top_p=2)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        sample_tokens(torch.zeros(1, 3), temperature=0)


@pytest.mark.parametrize("top_k,temperature", [(0, 1.0), (0, 0.7), (4, 1.0)])
def test_fast_sampler_leaves_its_input_alone(top_k, temperature):
    """It builds its CDF in place, in its own buffer: the caller's logits (which it may receive uncopied) stay."""
    logits = torch.randn(4, 16)
    before = logits.clone()
    sample_tokens(logits, temperature, top_k, generator=torch.Generator().manual_seed(0))
    assert torch.equal(logits, before)
