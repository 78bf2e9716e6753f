"""``divcfg sample``: sample audio from a policy checkpoint to WAV files plus a JSON manifest."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from divcfg.codec.fit import fit_offline_codec
from divcfg.codec.offline import OfflineCodecConfig, load_codec
from divcfg.common.data.audio import write_wav
from divcfg.common.data.prompts import load_prompts
from divcfg.common.storage.checkpoint import load_weights
from divcfg.model.loaders import (
    is_musicgen_directory,
    load_musicgen_directory,
    load_musicgen_policy,
    load_policy,
    policy_family,
)
from divcfg.model.policy import build_policy
from divcfg.model.policy_config import policy_config


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="divcfg sample", description=__doc__.split(":", 1)[1].strip())
    p.add_argument("checkpoint", nargs="?", help="policy checkpoint directory (omit with --demo)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prompt", action="append",
                     help="a prompt (repeatable); without --prompt or --prompts: 'a calm melody'")
    src.add_argument("--prompts", help="prompt file: .txt (one per line), .jsonl or .parquet")
    p.add_argument("--n", type=int, default=4, help="samples per prompt (default 4)")
    p.add_argument("--guidance-scale", type=float, default=1.0, help="CFG scale γ; 1 = no CFG (default 1)")
    p.add_argument("--frames", type=int, default=None, help="audio frames per sample (default: the model's max)")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="sampling temperature; the logits are divided by it (default 1)")
    p.add_argument("--top-k", type=int, default=0,
                   help="sample among the k most likely codes of each codebook; 0 = all (default 0)")
    p.add_argument("--top-p", type=float, default=1.0,
                   help="nucleus sampling: the smallest set of codes whose probability reaches p, in (0, 1]; "
                        "1 = all (default 1)")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed; prompt i draws with seed + i, so each prompt's samples are reproducible "
                        "alone (default 0)")
    p.add_argument("--codec", help="codec directory (default: the one recorded in the checkpoint)")
    p.add_argument("--out", required=True, help="output directory for WAV files and manifest.json")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: the cores this process may run on, one thread each)")
    p.add_argument("--decoder", default="divcfg", choices=("divcfg", "transformers"),
                   help="MusicGen checkpoints: divcfg's fast decoder (default) or transformers' own (the reference)")
    p.add_argument("--demo", action="store_true", help="no checkpoint: a tiny random policy and a quickly fitted "
                                                       "offline codec, to see the sampler run end to end")
    return p


def _demo_models():

    sr, n = 16000, 32000
    t = np.arange(n) / sr
    rng = np.random.default_rng(0)
    tones = np.stack([0.4 * np.sin(2 * np.pi * rng.uniform(110, 880) * t) for _ in range(64)]).astype(np.float32)
    codec = fit_offline_codec(tones, OfflineCodecConfig(card=64), n_vectors=2000, kmeans_iters=5)
    policy = build_policy(policy_config("tiny", card=codec.card, n_codebooks=codec.n_codebooks, max_frames=50), seed=0)
    return policy, codec, "demo-tiny-random"


def run(args) -> dict:

    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    if args.guidance_scale < 0:
        raise ValueError(f"--guidance-scale must be >= 0, got {args.guidance_scale}")
    if not 0 < args.top_p <= 1:
        raise ValueError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.demo:
        policy, codec, model_name = _demo_models()
    else:
        if not args.checkpoint:
            raise ValueError("give a policy checkpoint directory, or --demo")
        model_name = os.path.abspath(args.checkpoint)
        hf_directory = is_musicgen_directory(args.checkpoint)  # the user's own MusicGen, as save_pretrained wrote it
        if hf_directory or policy_family(args.checkpoint) == "musicgen":
            # MusicGen decodes with its own EnCodec: the directory's, or rebuilt from the source a checkpoint names.
            from divcfg.codec.musicgen import check_codec_matches
            from divcfg.model.musicgen.loading import MusicGenLoadError
            try:
                load = load_musicgen_directory if hf_directory else load_musicgen_policy
                policy, codec = load(args.checkpoint, decoder=args.decoder)
            except (MusicGenLoadError, ImportError) as e:  # not installed, or the weights can't be fetched
                raise ValueError(str(e)) from None
            if args.codec:
                codec = load_codec(args.codec)
                check_codec_matches(codec, policy.model_config, policy.cfg.name)
        else:
            policy = load_policy(args.checkpoint)
            codec_dir = args.codec or _codec_from_checkpoint(args.checkpoint)
            codec = load_codec(codec_dir)
    policy.eval()
    max_len = policy.cfg.text_max_len
    prompts = load_prompts(args.prompts, max_len) if args.prompts else (args.prompt or ["a calm melody"])
    frames = args.frames or policy.cfg.max_frames
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for pi, prompt in enumerate(prompts):
        seed = args.seed + pi
        gen = torch.Generator().manual_seed(seed)
        start = time.perf_counter()
        cond = policy.encode_condition([prompt] * args.n)
        result = policy.generate(cond, frames, guidance_scale=args.guidance_scale, temperature=args.temperature,
                                 top_k=args.top_k, top_p=args.top_p, generator=gen)
        gen_s = time.perf_counter() - start
        audio = codec.decode(result.codes).numpy()
        for i in range(args.n):
            name = f"p{pi:03d}_s{i:02d}.wav"
            write_wav(out / name, audio[i], codec.sample_rate)
            rows.append({"file": name, "prompt": prompt, "prompt_index": pi, "sample_index": i, "seed": seed,
                         "model": model_name, "guidance_scale": args.guidance_scale, "frames": frames,
                         "generate_s": gen_s, "frames_per_s": frames * args.n / gen_s})
    manifest = {"model": model_name, "codec": codec.name, "sample_rate": codec.sample_rate, "samples": rows}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def _codec_from_checkpoint(checkpoint: str) -> str:
    _, _, meta = load_weights(checkpoint, "policy")
    codec = meta.get("codec")
    if not codec:
        raise ValueError(f"checkpoint {checkpoint} does not record its codec; pass --codec DIR")
    return codec if os.path.isabs(codec) else os.path.join(checkpoint, codec)


def default_threads() -> int:
    """The cores this process may run on (its affinity mask, which a container or ``taskset`` narrows; not the
    machine's count), one torch thread each: more would oversubscribe them."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.threads is not None and args.threads < 1:
        print(f"divcfg sample: error: --threads must be >= 1, got {args.threads}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads or default_threads())  # once, before any work
    try:
        manifest = run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"divcfg sample: error: {e}", file=sys.stderr)
        return 2
    n = len(manifest["samples"])
    rate = np.mean([r["frames_per_s"] for r in manifest["samples"]])
    print(f"wrote {n} WAV files and manifest.json to {args.out} ({rate:.0f} frames/s)")
    return 0
