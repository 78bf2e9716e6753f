"""``divcfg embedder train``: train a contrastive music embedder on audio (a folder of WAV/FLAC/OGG/MP3 files,
or codes decoded by a codec)."""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def _load_audio(args) -> tuple[np.ndarray, int]:
    from divcfg.common.audio import read_audio_folder, resample
    if args.audio:
        # Undecodable files are named and skipped (a count on stderr); an empty folder is an AudioError (ValueError).
        folder = read_audio_folder(args.audio)
        for name in folder.skipped:
            print(f"divcfg embedder: skipped {folder.reasons[name]}", file=sys.stderr)
        if folder.skipped:
            print(f"divcfg embedder: skipped {len(folder.skipped)} undecodable file(s) in {args.audio}",
                  file=sys.stderr)
        rate = folder.clips[0][2]
        clips = [resample(x, sr, rate) for _, x, sr in folder.clips]
        n = min(len(c) for c in clips)
        return np.stack([c[:n] for c in clips]).astype(np.float32), rate
    from divcfg.common.codec import load_codec
    from divcfg.common.tokens import read_tokens
    codec = load_codec(args.codec)
    data = read_tokens(args.tokens)
    codes = data.codes
    if "clip_id" in data.columns:
        # A clip with several captions has several rows; as two "different" clips it would be its own negative.
        _, first = np.unique(np.asarray(data.columns["clip_id"]), return_index=True)
        codes = codes[np.sort(first)]
    wav = np.concatenate([codec.decode(codes[i: i + 64]).numpy() for i in range(0, len(codes), 64)])
    return wav.astype(np.float32), codec.sample_rate


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="divcfg embedder", description=__doc__.split(":", 1)[1].strip())
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train one embedder; run twice with different --seed for reward and eval")
    src = t.add_mutually_exclusive_group(required=True)
    src.add_argument("--audio", help="folder of WAV/FLAC/OGG/MP3 files; undecodable ones are named and skipped")
    src.add_argument("--tokens", help="token dataset (.parquet); decoded with --codec")
    t.add_argument("--codec", help="codec directory, with --tokens")
    t.add_argument("--out", required=True, help="output directory (safetensors + config.json)")
    t.add_argument("--size", default="small", help="preset: tiny, small or full (~25M parameters)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--steps", type=int, default=400)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--heldout", type=float, default=0.1, help="fraction of clips held out for recall@1")
    args = ap.parse_args(argv)
    import torch

    from divcfg.reward.embedder import embedder_config, recall_at_1, save_embedder, train_embedder
    try:
        if args.tokens and not args.codec:
            raise ValueError("--tokens needs --codec to decode the codes to audio")
        audio, sr = _load_audio(args)
        n_held = max(2, int(len(audio) * args.heldout))
        cfg = embedder_config(args.size, seed=args.seed, sample_rate=sr)
        model = train_embedder(audio[:-n_held], sr, cfg, steps=args.steps, batch_size=args.batch_size, lr=args.lr)
        save_embedder(model, args.out)
        recall = recall_at_1(model, audio[-n_held:], sr, cfg.chunk_samples, torch.Generator().manual_seed(args.seed))
    except (ValueError, FileNotFoundError) as e:
        print(f"divcfg embedder: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"out": args.out, "recall_at_1": recall, "clips": len(audio)}))
    return 0
