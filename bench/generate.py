"""Generation benchmark: divcfg's KV-cached sampler against Hugging Face MusicGen at the same decoder size.

What is timed (median of ``repeats`` after one untimed warm-up call, on ``torch.set_num_threads(threads)``; the
divcfg and peer calls, with and without CFG, alternate call by call so that machine load hits them alike):

* divcfg: ``AudioTokenPolicy.generate(cond, T, guidance_scale=γ, top_k=k, generator=g)``: T + K - 1 KV-cached
  decoder steps, sampling, delay/undelay. The text condition is encoded once beforehand (not timed).
* peer: ``MusicgenForConditionalGeneration.generate(input_ids, attention_mask, encoder_outputs=..., do_sample=True,
  top_k=k, guidance_scale=γ or None, max_new_tokens=T + K - 1)`` with randomly initialised weights. The T5 text
  encoder output is precomputed and passed as ``encoder_outputs`` (for CFG, ``[cond; zeros]`` with a zero mask,
  exactly what ``generate`` builds itself), and ``audio_encoder.decode`` is replaced by an identity stub, so the
  timing covers HF's generate set-up, its cached decoder forwards, logits processors (CFG, top-k), sampling and
  the delay-pattern bookkeeping, and neither text encoding nor EnCodec decoding. With one BOS column and
  ``max_new_tokens = T + K - 1``, MusicGen's delay pattern yields exactly T frames per codebook (checked; one fewer
  new token gives T - 1 frames). HF's loop runs T + K decoder forwards for that (one more than divcfg's T + K - 1
  steps; 0.7 % of the work at T = 150), which is its own cost and is left in.

The peer decoder is a ``MusicgenDecoderConfig`` with the same hidden size, layers, heads, ffn dim (ffn_mult · dim),
codebooks and vocabulary as the divcfg preset; its parameter count is checked against divcfg's decoder part
(everything but the text encoder) before timing. The T5 text encoder has ``d_model = dim`` (so MusicGen adds no
``enc_to_dec_proj``) and is otherwise minimal; the EnCodec config is minimal (it is never run).

Entries: ``generate/<preset>/b<B>/{nocfg,cfg}`` (frames/s, baseline = peer frames/s, target divcfg/peer >= 2) and
``cfg_cost/<preset>/b<B>`` (no-CFG seconds / CFG seconds at equal batch and length: the share of the CFG cost a
distilled model pays; the method promises about 0.5, target <= 0.55; baseline = the peer's own share, ratio = divcfg
share / peer share).

Run: ``python -m divcfg.bench.generate --json /tmp/gen.json``.
"""
from __future__ import annotations

import argparse
import math
import sys
import types
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from divcfg.bench.common import (
    _prompts,
    interleaved_median_times,
    machine_info,
    median_time,
    print_table,
    write_results,
)
from divcfg.model.policy import AudioTokenPolicy, build_policy
from divcfg.model.policy_config import policy_config

N_CODEBOOKS = 4
CARD = 2048
CFG_SCALE = 3.0
SPEEDUP_TARGET = 2.0
CFG_COST_TARGET = 0.55
PARAM_TOLERANCE = 0.03  # relative difference allowed between the two decoders' parameter counts

# ---- divcfg ---------------------------------------------------------------------------------------------------------
def build_divcfg(preset: str, frames: int, seed: int = 0, device: str = "cpu") -> AudioTokenPolicy:
    cfg = policy_config(preset, card=CARD, n_codebooks=N_CODEBOOKS, max_frames=frames)
    return build_policy(cfg, seed=seed).eval().to(device)


# ---- the physical limit ---------------------------------------------------------------------------------------------
def matmul_flops_per_s(device: torch.device, dtype: torch.dtype, n: int | None = None, repeats: int = 5) -> float:
    """Measured dense matmul throughput of this device: ``torch.mm`` of two ``n × n`` matrices, median of repeats."""
    n = n or (4096 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)

    def mm():
        torch.mm(a, b)
        _sync(device)

    seconds, _ = median_time(mm, repeats=repeats, warmup=2)
    return 2 * n ** 3 / seconds


def generation_flops(cfg, batch: int, frames: int, text_len: int, use_cfg: bool) -> float:
    """Matmul FLOPs of one ``generate`` call as divcfg's CPU path runs it: every decoder step, every row.

    Per cond row and step: the projections (self-attention q, k, v, o; cross-attention q, o; the feed-forward) and
    the output heads, 2 FLOPs per weight; attention scores and mixing over the cached steps and the text, 4 · D per
    position. With CFG the B null rows add the self-attention and feed-forward only: their cross-attention output is a
    per-layer constant and the guided mix comes before the heads (``AudioTokenPolicy._cross_rows``, ``_heads``), so
    CFG does less than twice the work. Text keys and values are computed once per call and left out, as are
    embeddings (lookups) and sampling. (The GPU's CUDA-graph step runs the null rows' cross-attention too.)
    """
    d, layers = cfg.dim, cfg.n_layers
    steps = frames + cfg.n_codebooks - 1
    trunk = layers * (4 * d * d + 2 * cfg.ffn_mult * d * d)  # self-attention projections and feed-forward
    cond_weights = trunk + layers * 2 * d * d + d * cfg.n_codebooks * cfg.card  # + cross q, o and the heads
    cond = 2 * cond_weights * steps + sum(4 * layers * d * (t + 1 + text_len) for t in range(steps))
    null = 2 * trunk * steps + sum(4 * layers * d * (t + 1) for t in range(steps))
    return batch * (cond + (null if use_cfg else 0))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":  # kernels are asynchronous: time their completion, not their launch
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, dtype: torch.dtype):
    return torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()


def divcfg_decoder_params(policy: AudioTokenPolicy) -> int:
    """Parameters of everything except the text encoder (code embeddings, positions, null condition, layers, heads)."""
    return policy.num_parameters() - sum(p.numel() for p in policy.text.parameters())


# ---- the peer: Hugging Face MusicGen --------------------------------------------------------------------------------
def build_peer(policy_cfg, seed: int = 0):
    """``MusicgenForConditionalGeneration`` with random weights and a decoder the size of ``policy_cfg``'s."""
    try:
        import transformers
        from transformers import (
            EncodecConfig,
            MusicgenConfig,
            MusicgenDecoderConfig,
            MusicgenForConditionalGeneration,
            T5Config,
        )
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the peer baseline needs transformers: pip install 'divcfg[bench]' (or pass --no-peer)") from e
    transformers.logging.set_verbosity_error()  # special ids == vocab_size is MusicGen's own convention; not a problem
    d = policy_cfg.dim
    # Minimal T5: only its d_model matters (== decoder width, so no enc_to_dec_proj); it runs once, untimed.
    text = T5Config(vocab_size=32, d_model=d, d_kv=4, d_ff=4, num_layers=1, num_decoder_layers=0, num_heads=1,
                    dropout_rate=0.0)
    # Minimal EnCodec: never run (decode is stubbed out), only needed to build the composite model.
    audio = EncodecConfig(hidden_size=8, num_filters=2, num_lstm_layers=1, num_residual_layers=1,
                          upsampling_ratios=[2], codebook_size=policy_cfg.card, codebook_dim=8,
                          target_bandwidths=[1.5])
    decoder = MusicgenDecoderConfig(
        vocab_size=policy_cfg.card, hidden_size=d, num_hidden_layers=policy_cfg.n_layers,
        num_attention_heads=policy_cfg.n_heads, ffn_dim=policy_cfg.ffn_mult * d, num_codebooks=policy_cfg.n_codebooks,
        max_position_embeddings=2048, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
        activation_function="gelu", pad_token_id=policy_cfg.card, bos_token_id=policy_cfg.card,
        decoder_start_token_id=policy_cfg.card)
    torch.manual_seed(seed)
    model = MusicgenForConditionalGeneration(MusicgenConfig(text_encoder=text, audio_encoder=audio, decoder=decoder))
    model.eval()
    if hasattr(model, "enc_to_dec_proj"):
        raise RuntimeError("peer has an enc_to_dec_proj: T5 d_model should equal the decoder width")
    # Time only the generation of audio codes: generate() always ends with audio_encoder.decode(codes); make it return
    # the codes ([1, B, K, T]) unchanged.
    model.audio_encoder.decode = lambda codes, audio_scales=None, **kw: types.SimpleNamespace(audio_values=codes)
    return model


def peer_decoder_params(model) -> int:
    return sum(p.numel() for p in model.decoder.parameters())


def _peer_inputs(model, mask: torch.Tensor, use_cfg: bool, seed: int = 0):
    """Token ids, mask and precomputed T5 states of the same shape ``[B, L]`` as divcfg's condition."""
    from transformers.modeling_outputs import BaseModelOutput  # optional extra (divcfg[musicgen])

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.text_encoder.vocab_size, mask.shape, generator=g).to(model.device)
    am = mask.long().to(model.device)
    with torch.inference_mode():
        states = model.text_encoder(input_ids=ids, attention_mask=am).last_hidden_state
    if use_cfg:  # what generate() does itself when it runs the text encoder
        states = torch.cat([states, torch.zeros_like(states)])
        am = torch.cat([am, torch.zeros_like(am)])
    return ids, am, BaseModelOutput(last_hidden_state=states)


def _divcfg_fn(policy, cond, frames, scale, top_k, dtype=torch.float32):
    gen = torch.Generator(device=policy.device).manual_seed(0)
    shape = (cond.states.shape[0], policy.cfg.n_codebooks, frames)

    def fn():
        with _autocast(policy.device, dtype):
            out = policy.generate(cond, frames, guidance_scale=scale, top_k=top_k, generator=gen)
        _sync(policy.device)
        assert out.codes.shape == shape, out.codes.shape

    return fn


def _peer_fn(peer, mask, scale, top_k, batch, n_codebooks, frames, dtype=torch.float32):
    ids, am, enc = _peer_inputs(peer, mask, scale != 1.0)
    steps = frames + n_codebooks - 1  # one BOS column + T + K - 1 new columns -> T frames after the delay pattern

    def fn():
        with torch.inference_mode(), _autocast(peer.device, dtype):
            out = peer.generate(input_ids=ids, attention_mask=am, encoder_outputs=enc, do_sample=True, top_k=top_k,
                                guidance_scale=scale if scale != 1.0 else None, max_new_tokens=steps)
        _sync(peer.device)
        assert tuple(out.shape) == (1, batch, n_codebooks, frames), out.shape

    return fn


def _check_params(preset: str, policy: AudioTokenPolicy, peer) -> tuple[int, int]:
    ours, theirs = divcfg_decoder_params(policy), peer_decoder_params(peer)
    rel = abs(ours - theirs) / theirs
    print(f"[{preset}] decoder parameters: divcfg {ours:,} (learned positions {policy.pos.numel():,} + biases; "
          f"text encoder excluded)  vs  HF MusicGen {theirs:,} (sinusoidal positions, no biases)  "
          f"-> difference {rel:.2%}", flush=True)
    if rel > PARAM_TOLERANCE:
        raise RuntimeError(f"decoder sizes differ by {rel:.2%} > {PARAM_TOLERANCE:.0%}: the comparison is not fair")
    return ours, theirs


def _entry(name, value, unit, baseline, target, **extra) -> dict:
    """A result row. ``generate/*``: ratio = divcfg / peer frames/s, met = ratio >= target (None without a peer).
    ``cfg_cost/*``: value = no-CFG seconds / CFG seconds, met = value <= target, ratio = divcfg share / peer share."""
    ratio = value / baseline if baseline else None
    if name.startswith("cfg_cost/"):
        met = value <= target
    else:
        met = None if ratio is None else ratio >= target
    return dict(name=name, value=value, unit=unit, baseline_value=baseline, ratio=ratio, target=target, met=met,
                **extra)


@dataclass(frozen=True)
class _Setting:
    """What every measurement of one :func:`run` shares."""

    frames: int
    repeats: int
    warmup: int
    torch_dtype: torch.dtype
    peak: float
    """Measured matmul FLOP/s of the device, in the dtype the matmuls run in."""
    dtype: str
    weights: str
    cuda_graphs: bool
    """CUDA graphs in use: asked for, on a GPU."""
    verbose: bool


def _measure_batch(st: _Setting, preset: str, policy, peer, batch: int, k: int, params: dict) -> list[dict]:
    """frames/s of one preset at one batch, with and without CFG (and the peer's), then the CFG cost."""
    frames, dtype, weights, peak, verbose = st.frames, st.dtype, st.weights, st.peak, st.verbose
    steps = frames + policy.cfg.n_codebooks - 1
    results: list[dict] = []
    cond = policy.encode_condition(_prompts(batch))
    modes = (("nocfg", 1.0), ("cfg", CFG_SCALE))
    fns = {}
    for mode, scale in modes:
        fns[("divcfg", mode)] = _divcfg_fn(policy, cond, frames, scale, k, st.torch_dtype)
        if peer is not None:
            fns[("peer", mode)] = _peer_fn(peer, cond.mask, scale, k, batch, policy.cfg.n_codebooks, frames,
                                           st.torch_dtype)
    # All four calls alternate, so a change in machine load affects the ratios as little as possible.
    timed = interleaved_median_times(fns, st.repeats, st.warmup)
    seconds = {mode: timed[("divcfg", mode)][0] for mode, _ in modes}
    peer_seconds = {mode: timed[("peer", mode)][0] for mode, _ in modes} if peer is not None else {}
    for mode, scale in modes:
        fps = batch * frames / seconds[mode]
        peer_fps = batch * frames / peer_seconds[mode] if peer_seconds else None
        flops = generation_flops(policy.cfg, batch, frames, cond.mask.shape[1], scale != 1.0)
        entry = _entry(f"generate/{preset}/b{batch}/{mode}", fps, "frames/s", peer_fps, SPEEDUP_TARGET,
                       seconds=seconds[mode], all_s=timed[("divcfg", mode)][1],
                       peer_seconds=peer_seconds.get(mode),
                       peer_all_s=timed[("peer", mode)][1] if peer_seconds else None,
                       guidance_scale=scale, top_k=k, frames=frames, steps=steps, batch=batch,
                       flops_per_s=flops / seconds[mode], peak_matmul_flops_per_s=peak,
                       fraction_of_peak=flops / seconds[mode] / peak, dtype=dtype, weights=weights,
                       cuda_graphs=st.cuda_graphs, **params)
        results.append(entry)
        if verbose:
            peer_txt = f"  peer {peer_fps:8.1f} frames/s ({peer_seconds[mode]:.3f} s)" if peer_fps else ""
            print(f"[{preset} b{batch} {mode}] divcfg {fps:8.1f} frames/s ({seconds[mode]:.3f} s, "
                  f"{entry['fraction_of_peak']:.1%} of matmul peak){peer_txt}", flush=True)
    cost = seconds["nocfg"] / seconds["cfg"]
    peer_cost = peer_seconds["nocfg"] / peer_seconds["cfg"] if peer_seconds else None
    # The share if every FLOP cost the same: no-CFG FLOPs over CFG FLOPs as divcfg runs them.
    work = (generation_flops(policy.cfg, batch, frames, cond.mask.shape[1], False)
            / generation_flops(policy.cfg, batch, frames, cond.mask.shape[1], True))
    if verbose:
        print(f"[{preset} b{batch}] cfg_cost {cost:.3f} (FLOP ratio no-CFG / CFG: {work:.3f})", flush=True)
    results.append(_entry(f"cfg_cost/{preset}/b{batch}", cost, "x", peer_cost, CFG_COST_TARGET,
                          work_ratio=work, batch=batch, frames=frames, dtype=dtype, weights=weights,
                          cuda_graphs=st.cuda_graphs))
    return results


def run(presets=("tiny", "small"), batches=(8,), frames: int = 150, threads: int = 1, repeats: int = 3,
        json_out: str | None = None, include_peer: bool = True, warmup: int = 1, top_k: int = 250,
        verbose: bool = True, device: str = "cpu", dtype: str = "fp32", weights: str = "fp32",
        cuda_graphs: bool = True) -> list[dict]:
    """Measure frames/s (batch × frames / seconds) with and without CFG, for divcfg and optionally the peer.

    ``dtype`` bf16 runs both sides under autocast (fp32 weights, bf16 matmuls: the GPU path). ``weights`` bf16 casts
    both sides' weights to bf16 instead, as rollout actors with ``actors.dtype=bf16`` hold them: every decoding step
    then reads half the weight bytes. The matmul peak is measured in bf16 when either is bf16. ``cuda_graphs``
    False decodes with the eager step on a GPU too (the graph is captured in the untimed warm-up call).
    """
    dev = torch.device(device)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    torch_dtype, weight_dtype = dtypes[dtype], dtypes[weights]
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    results: list[dict] = []
    try:
        peak_dtype = torch.bfloat16 if torch.bfloat16 in (torch_dtype, weight_dtype) else torch.float32
        peak = matmul_flops_per_s(dev, peak_dtype)
        if verbose:
            print(f"[{dev} {dtype} weights {weights}] measured matmul peak ({peak_dtype}): {peak / 1e9:.1f} GFLOP/s",
                  flush=True)
        setting = _Setting(frames, repeats, warmup, torch_dtype, peak, dtype, weights,
                           cuda_graphs and dev.type == "cuda", verbose)
        for preset in presets:
            policy = build_divcfg(preset, frames, device=device).to(weight_dtype)
            policy.cuda_graphs = cuda_graphs
            k = min(top_k, policy.cfg.card)
            peer = None
            params = {"divcfg_decoder_params": divcfg_decoder_params(policy)}
            if include_peer:
                peer = build_peer(policy.cfg).to(dev, weight_dtype)
                ours, theirs = _check_params(preset, policy, peer)
                params["peer_decoder_params"] = theirs
            for batch in batches:
                results += _measure_batch(setting, preset, policy, peer, batch, k, params)
    finally:
        torch.set_num_threads(previous_threads)
    for r in results:
        assert math.isfinite(r["value"]) and r["value"] > 0, r
    if json_out:
        machine = machine_info(device)
        machine["threads"] = threads
        if include_peer:
            import transformers
            machine["transformers"] = transformers.__version__
        write_results(json_out, results, machine)
    return results


def _split(values, cast):
    out = []
    for v in values:
        out += [cast(x) for x in str(v).split(",") if x]
    return tuple(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m divcfg.bench.generate", description=__doc__.split("\n")[0])
    ap.add_argument("--presets", nargs="+", default=["tiny,small"], help="model presets (space or comma separated)")
    ap.add_argument("--batches", nargs="+", default=None,
                    help="batch sizes (space or comma separated; default 8, with --musicgen 1,8,64)")
    ap.add_argument("--frames", type=int, default=150, help="audio frames T per sample (not delayed columns)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats (median is reported)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--json", dest="json_out", metavar="OUT", default=None, help="write results JSON here")
    ap.add_argument("--no-peer", dest="include_peer", action="store_false", help="skip the HF MusicGen baseline")
    ap.add_argument("--top-k", dest="top_k", type=int, default=250,
                    help="top-k filter of both sides (250: MusicGen's default; 0: the full distribution, as the "
                         "rollout actors sample)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"),
                    help="bf16: autocast on both sides (GPU); with --musicgen both models' weights in this dtype")
    ap.add_argument("--weights", default="fp32", choices=("fp32", "bf16"),
                    help="bf16: both sides' weights cast to bf16, as actors.dtype=bf16 holds them")
    ap.add_argument("--cuda-graphs", default="on", choices=("on", "off"),
                    help="off: divcfg decodes with the eager step on a GPU too (on: one CUDA graph per step)")
    ap.add_argument("--musicgen", metavar="DIR|tiny-random|small-shape", default=None,
                    help="instead: this MusicGen in divcfg's decoder against transformers' generate on the same "
                         "weights (bench/generate_musicgen.py)")
    ap.add_argument("--peer-compile", action="store_true",
                    help="--musicgen: also time transformers with its static cache and torch.compile (a GPU)")
    args = ap.parse_args(argv)
    if args.musicgen:
        from divcfg.bench.generate_musicgen import run as run_musicgen
        results = run_musicgen(args.musicgen, _split(args.batches or ["1,8,64"], int), args.frames, args.repeats,
                               args.top_k, args.device, args.dtype, args.peer_compile, args.threads, args.json_out,
                               cuda_graphs=args.cuda_graphs == "on")
        print_table(results)
        return 0
    results = run(presets=_split(args.presets, str), batches=_split(args.batches or ["8"], int), frames=args.frames,
                  threads=args.threads, repeats=args.repeats, json_out=args.json_out, include_peer=args.include_peer,
                  device=args.device, dtype=args.dtype, weights=args.weights, top_k=args.top_k,
                  cuda_graphs=args.cuda_graphs == "on")
    print()
    print_table(results)
    if args.json_out:
        print(f"\nwrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
