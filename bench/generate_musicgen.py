"""``divcfg bench generate --musicgen DIR|tiny-random|small-shape``: one MusicGen's weights in divcfg's decoder
(model/musicgen/convert.py) against transformers' own ``generate`` on the same weights, prompts and sampling.

Both sides get the same T5 states, encoded once and untimed (divcfg: ``MusicGenPolicy.encode_condition``; transformers:
``encoder_outputs=`` the raw T5 states, which its forward projects with ``enc_to_dec_proj`` itself) and draw T frames
with ``top_k`` and guidance scale γ (γ = 1: no CFG). transformers' ``audio_encoder.decode`` is stubbed out, so neither
side decodes audio. Calls alternate (``interleaved_median_times``), so each ratio is taken in the same run under the
same machine load. Peers: ``eager`` (transformers' dynamic cache), and with ``--peer-compile`` (a GPU) also
``static_compile``: ``generation_config.cache_implementation = "static"`` and ``model.forward = torch.compile(...)``, as
transformers documents; a peer that fails is reported and left out, not fatal.

``small-shape``: random weights of musicgen-small's decoder (24 layers, width 1024, 16 heads, ffn 4096, 4 × 2048
codes); its T5 keeps t5-base's width 768 (so ``enc_to_dec_proj`` runs) but one layer, since it encodes each prompt
once and untimed.

Entries: ``musicgen/<model>/b<B>/{nocfg,cfg}``: frames/s of divcfg's decoder, baseline = transformers eager,
target >= 2; ``peer_static_compile_fps`` beside it when measured.
"""
from __future__ import annotations

import copy
import math
import types

import torch

from divcfg.bench.common import _prompts, interleaved_median_times, machine_info, write_results
from divcfg.model.musicgen.loading import TINY, ByteTokenizer, load_musicgen, tiny_musicgen
from divcfg.model.musicgen.policy import MusicGenPolicy

CFG_SCALE = 3.0
SPEEDUP_TARGET = 2.0
SMALL_SHAPE = "small-shape"


def small_shape_musicgen(seed: int = 0):
    """``MusicgenForConditionalGeneration`` with musicgen-small's decoder shape and random weights, and a one-layer
    T5 of t5-base's width over the byte tokenizer's ids."""
    from transformers import (
        EncodecConfig,
        MusicgenConfig,
        MusicgenDecoderConfig,
        MusicgenForConditionalGeneration,
        T5Config,  # optional extra (divcfg[musicgen])
    )


    text = T5Config(vocab_size=ByteTokenizer.vocab_size, d_model=768, d_kv=64, d_ff=256, num_layers=1,
                    num_decoder_layers=0, num_heads=12, dropout_rate=0.0)
    audio = EncodecConfig(hidden_size=8, num_filters=2, num_lstm_layers=1, num_residual_layers=1,
                          upsampling_ratios=[2], codebook_size=2048, codebook_dim=8, target_bandwidths=[1.5])
    decoder = MusicgenDecoderConfig(vocab_size=2048, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                    ffn_dim=4096, num_codebooks=4, max_position_embeddings=2048, dropout=0.0,
                                    pad_token_id=2048, bos_token_id=2048, decoder_start_token_id=2048)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MusicgenForConditionalGeneration(MusicgenConfig(text_encoder=text, audio_encoder=audio,
                                                               decoder=decoder)).eval()


def load(which: str, seed: int = 0):
    """``(model, tokenizer or None)`` for ``--musicgen``."""

    if which == TINY:
        return tiny_musicgen(seed), None
    if which == SMALL_SHAPE:
        return small_shape_musicgen(seed), None
    return load_musicgen(which, local_files_only=True)


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _peer_fn(model, ids, mask, frames: int, k: int, scale: float, top_k: int):
    """transformers' generate on precomputed T5 states (``[cond; zeros]`` under CFG, as generate builds itself)."""
    from transformers.modeling_outputs import BaseModelOutput  # optional extra (divcfg[musicgen])

    with torch.inference_mode():
        states = model.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    if scale != 1.0:
        states, mask = torch.cat([states, torch.zeros_like(states)]), torch.cat([mask, torch.zeros_like(mask)])
    enc = BaseModelOutput(last_hidden_state=states)

    def fn():
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, encoder_outputs=enc, do_sample=True,
                                 top_k=top_k, guidance_scale=scale if scale != 1.0 else None,
                                 max_new_tokens=frames + k - 1)
        _sync(model.device)
        assert tuple(out.shape) == (1, ids.shape[0], k, frames), out.shape
    return fn


def _ours_fn(policy, cond, frames: int, scale: float, top_k: int):
    gen = torch.Generator(device=policy.device).manual_seed(0)

    def fn():
        out = policy.generate(cond, frames, guidance_scale=scale, top_k=top_k, generator=gen)
        _sync(policy.device)
        assert out.codes.shape == (cond.states.shape[0], policy.cfg.n_codebooks, frames)
    return fn


def _static_compile(model):
    """A second peer on the same weights: transformers' static cache and a compiled forward."""
    peer = copy.copy(model)  # shares the modules; its own generation_config and forward
    peer.generation_config = copy.deepcopy(model.generation_config)
    peer.generation_config.cache_implementation = "static"
    peer.forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)
    return peer


def _batch_fns(policy, peers, prompts, frames, top_k):
    k = policy.cfg.n_codebooks
    ids, mask = policy._tokenize(prompts, truncate=True)
    cond = policy.encode_condition(prompts, truncate=True)
    fns = {}
    for mode, scale in (("nocfg", 1.0), ("cfg", CFG_SCALE)):
        fns[("divcfg", mode)] = _ours_fn(policy, cond, frames, scale, top_k)
        for name, peer in peers.items():
            fns[(name, mode)] = _peer_fn(peer, ids, mask.long(), frames, k, scale, top_k)
    return fns


def _usable(fns: dict, verbose: bool) -> dict:
    """One untimed call of each: a peer that fails (torch.compile on this MusicGen, say) is dropped and said so."""
    out, failed = {}, set()
    for key, fn in fns.items():
        if key[0] in failed:
            continue
        try:
            fn()
            out[key] = fn
        except Exception as e:  # noqa: BLE001 - any failure of a peer is a result to report, not a crash
            failed.add(key[0])
            if verbose:
                print(f"[musicgen] peer {key[0]} failed and is left out: {type(e).__name__}: {str(e)[:300]}",
                      flush=True)
    return {k: f for k, f in out.items() if k[0] not in failed}


def run(musicgen: str, batches=(1, 8, 64), frames: int = 150, repeats: int = 3, top_k: int = 250,
        device: str = "cpu", dtype: str = "fp32", peer_compile: bool = False, threads: int | None = None,
        json_out: str | None = None, verbose: bool = True, cuda_graphs: bool = True) -> list[dict]:
    """frames/s of divcfg's decoder and of transformers' generate on the same MusicGen, per batch, ±CFG."""

    if threads:
        torch.set_num_threads(threads)
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    model, tokenizer = load(musicgen)
    model = model.to(device, torch_dtype)
    model.audio_encoder.decode = lambda codes, audio_scales=None, **kw: types.SimpleNamespace(audio_values=codes)
    policy = MusicGenPolicy(model, tokenizer, name=musicgen, decoder="divcfg").eval()
    policy.decoder.cuda_graphs = cuda_graphs
    peers = {"eager": model, **({"static_compile": _static_compile(model)} if peer_compile else {})}
    top_k = min(top_k, policy.cfg.card)
    results = []
    for batch in batches:
        fns = _usable(_batch_fns(policy, peers, _prompts(batch), frames, top_k), verbose)
        timed = interleaved_median_times(fns, repeats, warmup=0)  # _usable made the untimed first call
        for mode, scale in (("nocfg", 1.0), ("cfg", CFG_SCALE)):
            fps = {name: batch * frames / timed[(name, m)][0] for name, m in timed if m == mode}
            peer = fps.get("eager")
            entry = dict(name=f"musicgen/{musicgen.rstrip('/').split('/')[-1]}/b{batch}/{mode}",
                         value=fps["divcfg"], unit="frames/s", baseline_value=peer,
                         ratio=fps["divcfg"] / peer if peer else None, target=SPEEDUP_TARGET,
                         met=None if not peer else fps["divcfg"] / peer >= SPEEDUP_TARGET,
                         peer_static_compile_fps=fps.get("static_compile"), batch=batch, frames=frames,
                         guidance_scale=scale, top_k=top_k, device=device, dtype=dtype,
                         cuda_graphs=cuda_graphs and torch.device(device).type == "cuda",
                         all_s={f"{n}": timed[(n, m)][1] for n, m in timed if m == mode})
            results.append(entry)
            if verbose:
                rest = "  ".join(f"{n} {v:8.1f}" for n, v in fps.items() if n != "divcfg")
                print(f"[musicgen {musicgen} b{batch} {mode}] divcfg {fps['divcfg']:8.1f} frames/s  {rest}  "
                      f"ratio {entry['ratio'] or float('nan'):.2f}", flush=True)
    assert all(math.isfinite(r["value"]) for r in results)
    if json_out:
        import transformers
        machine = {**machine_info(device), "threads": torch.get_num_threads(),
                   "transformers": transformers.__version__}
        write_results(json_out, results, machine)
    return results
