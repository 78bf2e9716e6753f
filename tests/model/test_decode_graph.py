"""The static-shape decoding step (model/decode_graph.py) against the eager KV-cached step and the full recompute.

On CPU the static step runs uncaptured, which checks everything the graph bakes in except the capture itself; the
GPU tests (skipped without CUDA; run on the device machine) check the captured graph against the eager step.
"""
import gc
import pickle
import weakref

import pytest
import torch
from test_policy import PROMPTS, generate_reference

from divcfg.model.decode_graph import _GRAPHS, decode_graph, pad_condition
from divcfg.model.delay import undelay
from divcfg.model.policy import build_policy

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture()
def policy():
    return build_policy(seed=0).eval()


def use_static_step(policy, monkeypatch, capture):
    def step(cond, rows, s_len, guidance_scale):
        graph = decode_graph(policy, rows, s_len, guidance_scale, capture=capture)
        graph.load(cond)
        return graph.step
    monkeypatch.setattr(policy, "_decode_step", step)


@pytest.mark.parametrize("gamma", [1.0, 3.0])
def test_static_step_matches_full_recompute(policy, monkeypatch, gamma):
    """Prompts of different lengths (so the condition is padded), both CFG and not, two calls through one cached
    step: the codes and every step's logits equal the no-cache reference."""
    use_static_step(policy, monkeypatch, capture=False)
    cond = policy.encode_condition(PROMPTS)
    assert cond.states.shape[1] < policy.cfg.text_max_len  # the padding path is exercised
    for seed in (1, 2):
        fast = policy.generate(cond, 12, guidance_scale=gamma, generator=torch.Generator().manual_seed(seed),
                               return_logits=True)
        codes, ref_logits = generate_reference(policy, cond, 12, gamma, torch.Generator().manual_seed(seed))
        assert torch.allclose(fast.step_logits, ref_logits, atol=1e-5), (fast.step_logits - ref_logits).abs().max()
        assert torch.equal(fast.codes, codes)
    assert len(_GRAPHS[policy]) == 1


def test_static_step_follows_in_place_weight_updates(policy, monkeypatch):
    """A cached step reads the parameters by address: an in-place update (as a snapshot load does) is seen."""
    use_static_step(policy, monkeypatch, capture=False)
    cond = policy.encode_condition(PROMPTS[:2])
    before = policy.generate(cond, 6, generator=torch.Generator().manual_seed(0), return_logits=True).step_logits
    with torch.no_grad():
        policy.heads.bias.add_(1.0)
    after = policy.generate(cond, 6, generator=torch.Generator().manual_seed(0), return_logits=True).step_logits
    assert torch.allclose(after, before + 1.0, atol=1e-5)
    assert len(_GRAPHS[policy]) == 1


def test_pad_condition_and_policy_still_pickles(policy):
    cond = policy.encode_condition(["ab"])
    padded = pad_condition(cond, 10)
    assert padded.states.shape[1] == 10 and padded.mask[0, cond.mask.shape[1]:].any().item() is False
    with pytest.raises(ValueError, match="more than 1"):
        pad_condition(cond, 1)
    decode_graph(policy, 2, 5, 1.0, capture=False)
    pickle.loads(pickle.dumps(policy))  # the graph cache lives outside the module


def test_graph_cache_lets_a_policy_go():
    policy = build_policy(seed=0).eval()
    decode_graph(policy, 2, 5, 1.0, capture=False)
    assert len(_GRAPHS) >= 1
    ref = weakref.ref(policy)
    del policy
    gc.collect()
    assert ref() is None  # its graphs, and their buffers, went with it


@cuda
@pytest.mark.parametrize("gamma", [1.0, 3.0])
def test_cuda_graph_replays_the_static_step(monkeypatch, gamma):
    """The captured graph computes what the same static step computes uncaptured (the CPU-tested path): same
    kernels, so the same codes from the same generator; replays reuse one graph; in-place weight updates are seen."""
    policy = build_policy(seed=0, preset="small").eval().cuda()
    cond = policy.encode_condition(PROMPTS)

    def run(seed):
        gen = torch.Generator(device="cuda").manual_seed(seed)
        return policy.generate(cond, 20, guidance_scale=gamma, top_k=250, generator=gen, return_logits=True)

    graphed = [run(0), run(1)]  # the second call replays the graph captured by the first
    assert len(_GRAPHS[policy]) == 1 and next(iter(_GRAPHS[policy].values())).graph is not None
    with monkeypatch.context() as m:
        use_static_step(policy, m, capture=False)
        static = [run(0), run(1)]
    for g, st in zip(graphed, static):
        assert torch.equal(g.codes, st.codes)
        assert torch.allclose(g.step_logits, st.step_logits, atol=1e-5)
    with torch.no_grad():
        policy.heads.bias.add_(1.0)
    moved = policy.generate(cond, 20, guidance_scale=gamma, top_k=1, return_logits=True)
    policy.cuda_graphs = False
    eager = policy.generate(cond, 20, guidance_scale=gamma, top_k=1, return_logits=True)
    # top-1 codes ignore a uniform shift; the shifted logits must show in the replay.
    assert (moved.codes == eager.codes).float().mean() > 0.95
    first = (slice(None), slice(None), 0)
    assert torch.allclose(moved.step_logits[first], eager.step_logits[first], atol=1e-4)


@cuda
@pytest.mark.parametrize("gamma", [1.0, 3.0])
def test_cuda_graph_step_logits_match_whole_sequence_logits(gamma):
    """Graphed sampling against teacher-forced scoring of its own codes (no dependence on near-tied draws)."""
    policy = build_policy(seed=0, preset="small").eval().cuda()
    cond = policy.encode_condition(PROMPTS)
    out = policy.generate(cond, 16, guidance_scale=gamma, generator=torch.Generator("cuda").manual_seed(3),
                          return_logits=True)
    with torch.no_grad():
        whole = policy.guided_logits(out.codes, cond, gamma)
    assert torch.allclose(undelay(out.step_logits, 16), whole, atol=1e-4)
    lp = torch.log_softmax(whole, -1).gather(-1, out.codes[..., None]).squeeze(-1)
    assert torch.allclose(out.logprobs, lp, atol=1e-4)


@cuda
def test_cuda_graph_under_autocast_matches_whole_sequence():
    """Captured inside a caller's bf16 autocast region, and replayed after that region ended once."""
    policy = build_policy(seed=0, preset="small").eval().cuda()
    cond = policy.encode_condition(PROMPTS)
    errors = {}
    for graphs, seed in ((False, 0), (True, 0), (True, 1)):
        policy.cuda_graphs = graphs
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = policy.generate(cond, 12, guidance_scale=3.0, generator=torch.Generator("cuda").manual_seed(seed),
                                  return_logits=True)
        with torch.no_grad():
            whole = policy.guided_logits(out.codes, cond, 3.0)  # fp32 scoring of the same codes
        errors[graphs, seed] = (undelay(out.step_logits, 12).float() - whole).abs().max().item()
    # bf16 rounding, amplified by the CFG extrapolation, is the same for the graphed and the eager step.
    assert max(errors[True, 0], errors[True, 1]) <= 2 * errors[False, 0] + 1e-3, errors
    assert len([k for k in _GRAPHS[policy] if k[4]]) == 1
