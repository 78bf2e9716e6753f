"""``divcfg world build --kind folder``: a world from a user's own folder of audio and captions, tokenized with the
codec of the user's own model (world/folder_model.py): a MusicGen's own EnCodec, or a divcfg policy's offline codec,
so that finetuning that model on the world's codes needs no other codec.

Stages, each recorded in ``state.json`` as the other kinds' are, and skipped on a re-run with the same identity
(kind, model directory, clip length, folder, split):

  corpus     the folder cut into clips (world/user_folder.py), split by track -> corpus.parquet, prompts_heldout.txt
  codec      (a divcfg policy) its offline codec, copied in                    -> codec/
  tokens     every clip encoded by the model's codec                           -> tokens.parquet, heldout.parquet
  base       (a divcfg policy) the policy itself, copied in as the base model  -> base/
  embedders  the reward and eval embedders on the training clips after the codec round trip, as reward workers hear
             them; recall@1 on the held-out clips                               -> embedder_reward/, embedder_eval/
  measure    the CLAP ceiling: the held-out clips against their captions (with --clap) -> world.json

A MusicGen stays in its directory (it is the base); no attribute scorer is trained (free captions have no attribute
table to classify): adherence is judged by CLAP when the world has one, and ``world.json`` says which judges it has.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from divcfg.codec.evaluation import codec_figures, round_trip
from divcfg.common.data.folder import split_by_track
from divcfg.common.data.tokens import write_tokens
from divcfg.common.data.world_dir import STAGE_OUTPUTS, WORLD_VERSION, World, WorldError
from divcfg.reward.clap_judge import ClapLoadError, check_clap_dir, load_clap_judge
from divcfg.reward.embedder import embedder_config, recall_at_1, save_embedder, train_embedder
from divcfg.world.folder_model import (
    DEFAULT_CLIP_S,
    MUSICGEN,
    ModelClip,
    copy_checkpoint,
    model_clip,
    model_codec,
    model_family,
)
from divcfg.world.user_folder import first_skipped, read_captions, read_folder, read_heldout_prompts

KIND = "folder"
FOLDER_STAGES = ("corpus", "tokens", "embedders", "measure")
"""A MusicGen's folder world; a divcfg policy's also copies the policy and its codec (:func:`folder_stages`)."""
# The options only this kind reads, so another kind given one is refused rather than silently ignoring it.
FOLDER_FLAGS = ("--audio", "--captions", "--model", "--clip-s", "--heldout-prompts", "--heldout-fraction", "--clap",
                "--embedder-steps")
ENCODE_BATCH = 16  # clips per EnCodec call: 16 x 10 s at 32 kHz keeps the encoder's activations near 1 GB


def check_inputs(audio: Path, captions: Path, model: Path, clap: Path | None, heldout_prompts: Path | None,
                 heldout_fraction: float, embedder_steps: int) -> None:
    """Refuse, naming the value, what would fail later: before a stage runs, so nothing in --out is touched."""
    model_family(model)  # a MusicGen directory or a divcfg world's policy and codec, else says what it is
    if not audio.is_dir():
        raise WorldError(f"--audio {audio}: no such folder")
    if not captions.exists():
        raise WorldError(f"--captions {captions}: no such file or folder")
    if heldout_prompts is not None and not heldout_prompts.is_file():
        raise WorldError(f"--heldout-prompts {heldout_prompts}: no such file")
    if clap is not None:
        try:
            check_clap_dir(clap)
        except ClapLoadError as e:
            raise WorldError(f"--clap {clap}: {e}") from None
    if not 0.0 < heldout_fraction < 1.0:
        raise WorldError(f"--heldout-fraction {heldout_fraction:g}: must be in (0, 1)")
    if embedder_steps < 1:
        raise WorldError(f"--embedder-steps {embedder_steps}: must be at least 1")


def folder_stages(family: str) -> tuple[str, ...]:
    """The stages of a folder world for a model of ``family``: a divcfg policy and its codec are copied in (the
    ``codec`` and ``base`` stages, whose outputs every divcfg world has) before its codes are made."""
    return FOLDER_STAGES if family == MUSICGEN else ("corpus", "codec", "tokens", "base", "embedders", "measure")


def build_folder_world(out: str | os.PathLike, audio: str | os.PathLike, captions: str | os.PathLike,
                       model: str | os.PathLike, clip_s: float | None = None,
                       heldout_prompts: str | os.PathLike | None = None, heldout_fraction: float = 0.1,
                       clap: str | os.PathLike | None = None, embedder_steps: int = 250, embedder: str = "small",
                       embedder_clips: int = 1200, seed: int = 0, progress: bool = True) -> dict:
    """Build (or finish building) the folder world in ``out``; returns the contents of ``world.json``.

    ``embedder``: the embedders' preset (reward/embedder.py), trained ``embedder_steps`` steps on at most
    ``embedder_clips`` training clips. A re-run with another model, clip length, folder or split is refused.
    """
    paths = [Path(p).expanduser().absolute() if p is not None else None
             for p in (out, audio, captions, model, heldout_prompts, clap)]
    root, audio, captions, model, heldout_prompts, clap = paths
    check_inputs(audio, captions, model, clap, heldout_prompts, heldout_fraction, embedder_steps)
    clip = model_clip(model, clip_s)
    if clip.frames < round(clip.requested_s * clip.frame_rate):
        asked = f"--clip-s {clip.requested_s:g}" if clip_s is not None else f"the default clip, {clip.requested_s:g} s,"
        print(f"divcfg world: {asked} capped to {clip.clip_s:g} s, the {clip.max_frames} frames {model} takes",
              file=sys.stderr)
    identity = {"version": WORLD_VERSION, "kind": KIND, "model": str(model), "clip_s": clip.clip_s, "seed": seed,
                "audio": str(audio), "captions": str(captions), "heldout_fraction": heldout_fraction,
                "heldout_prompts": str(heldout_prompts) if heldout_prompts else None}
    if root.exists() and not root.is_dir():
        raise WorldError(f"--out {root} is a file, not a directory")
    world = World(root)
    state = world.state()
    if state and state.get("identity") != identity:
        old = state.get("identity", {})
        diffs = "; ".join(f"{k}: built with {old.get(k)!r}, asked for {identity.get(k)!r}"
                          for k in sorted(set(old) | set(identity)) if old.get(k) != identity.get(k))
        raise WorldError(f"{root} holds a {old.get('kind', 'procedural')} world that differs from this build "
                         f"({diffs}); use another --out or delete it")
    state = state or {"identity": identity, "done": {}}
    stages = folder_stages(clip.family)
    _forget_stale(world, state, clap, stages)
    root.mkdir(parents=True, exist_ok=True)
    builder = _FolderBuilder(world, clip, identity, clap, embedder, embedder_steps, embedder_clips, progress)
    for stage in tqdm(stages, desc="world folder", disable=not progress):
        if stage in state["done"]:
            continue
        t0 = time.perf_counter()
        figures = getattr(builder, stage)()  # the stage's outputs are on disk before it is recorded as done
        state["done"][stage] = {"seconds": round(time.perf_counter() - t0, 2), **figures}
        world.write_state(state)
    report = folder_report(state, stages)
    tmp = world.path("world.json.tmp")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, world.path("world.json"))
    return report


def _forget_stale(world: World, state: dict, clap: Path | None, stages: tuple[str, ...]) -> None:
    """Redo a done stage whose files have gone (and every stage after it), and the measure when --clap names a CLAP
    it was not measured with: the CLAP is not part of the identity, so adding one later only re-measures."""
    done = state["done"]
    for i, stage in enumerate(stages):
        outputs = [world.path(n.rstrip("/")) / "COMPLETE" if n.endswith("/") else world.path(n)
                   for n in STAGE_OUTPUTS[stage]]
        if stage in done and not all(f.is_file() for f in outputs):
            for later in stages[i:]:
                done.pop(later, None)
    if clap is not None and "measure" in done and done["measure"].get("clap", {}).get("dir") != str(clap):
        done.pop("measure")


class _FolderBuilder:
    """One build of a folder world: the clips, codec and round trips the stages share (each read once, when a stage
    first needs it), and one method per stage of ``FOLDER_STAGES`` returning the figures recorded with it."""

    def __init__(self, world: World, clip: ModelClip, identity: dict, clap: Path | None, embedder: str,
                 embedder_steps: int, embedder_clips: int, progress: bool):
        self.world, self.clip, self.identity, self.clap, self.progress = world, clip, identity, clap, progress
        self.seed = identity["seed"]
        self.embedder_steps, self.embedder_clips = embedder_steps, embedder_clips
        # Two chunks of a clip are the embedder's two views, so a chunk is at most half a clip; the config checks
        # it still spans an STFT window. Built here so a clip too short fails before any stage runs.
        self.ecfg = embedder_config(embedder, sample_rate=clip.sample_rate,
                                    chunk_s=min(embedder_config(embedder).chunk_s, clip.clip_s / 2))
        self.embedder = embedder
        self._folder = self._codec = self._heldout_rt = None

    def folder(self):
        """The folder's clips (FolderClips), read again on a resumed build and checked against the corpus record."""
        if self._folder is None:
            ident = self.identity
            self._folder = read_folder(ident["audio"], ident["captions"], self.clip.sample_rate, self.clip.clip_s)
            corpus = self.world.path("corpus.parquet")
            if corpus.is_file() and pq.read_table(corpus).column("track").to_pylist() != self._folder.track:
                raise WorldError(f"the audio folder {ident['audio']} has changed since {self.world.root} was built "
                                 f"from it; delete {self.world.root} to rebuild")
        return self._folder

    def model_codec(self):
        """The codec that makes the world's codes (folder_model.model_codec), loaded once."""
        if self._codec is None:
            self._codec = model_codec(self.identity["model"], self.clip.family)
        return self._codec

    def split(self) -> tuple[np.ndarray, np.ndarray]:
        """``(train_idx, heldout_idx)`` clip indices, as the corpus stage recorded them."""
        heldout = np.array(pq.read_table(self.world.path("corpus.parquet")).column("heldout").to_pylist(), dtype=bool)
        return np.flatnonzero(~heldout), np.flatnonzero(heldout)

    def heldout_round_trip(self) -> np.ndarray:
        if self._heldout_rt is None:
            self._heldout_rt = round_trip(self.model_codec(), self.folder().clips[self.split()[1]], ENCODE_BATCH)
        return self._heldout_rt

    def corpus(self) -> dict:
        folder, ident = self.folder(), self.identity
        train_idx, heldout_idx = split_by_track(folder.track, ident["heldout_fraction"], self.seed)
        if len(train_idx) < 4:  # each embedder trains on half of them, and a batch needs two clips
            raise WorldError(f"audio folder {ident['audio']}: {len(train_idx)} training clip(s) of "
                             f"{self.clip.clip_s:g} s; the embedders need at least 4")
        train_prompts = list(dict.fromkeys(c for i in train_idx for c in folder.captions[i]))
        if ident["heldout_prompts"]:
            prompts, dropped = read_heldout_prompts(ident["heldout_prompts"], train_prompts), 0
        else:  # the held-out tracks' captions, but not one a training track also has: that measures memory
            firsts = list(dict.fromkeys(folder.captions[i][0] for i in heldout_idx))
            prompts = [p for p in firsts if p not in set(train_prompts)]
            dropped = len(firsts) - len(prompts)
            if not prompts:
                raise WorldError(f"every held-out track's caption is also a training caption ({firsts[:3]}); "
                                 f"give --heldout-prompts FILE with prompts no training clip has")
        heldout = np.zeros(len(folder.track), dtype=bool)
        heldout[heldout_idx] = True
        table = pa.table({"clip_id": np.arange(len(heldout)), "track": folder.track, "captions": folder.captions,
                          "heldout": heldout})
        tmp = self.world.path("corpus.parquet.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, self.world.path("corpus.parquet"))
        self.world.path("prompts_heldout.txt.tmp").write_text("\n".join(prompts) + "\n")
        os.replace(self.world.path("prompts_heldout.txt.tmp"), self.world.path("prompts_heldout.txt"))
        tracks = [sorted({folder.track[i] for i in idx}) for idx in (train_idx, heldout_idx)]
        summary = folder.summary()
        summary["audio_seconds"] = summary.pop("seconds")  # "seconds" of a stage is how long it took
        return {**summary, "captions_format": read_captions(ident["audio"], ident["captions"]).format,
                "train": {"clips": len(train_idx), "tracks": len(tracks[0])},
                "heldout": {"clips": len(heldout_idx), "tracks": len(tracks[1]), "track_names": tracks[1]},
                "heldout_prompts": {"count": len(prompts), "from": ident["heldout_prompts"] or "heldout tracks",
                                    "dropped_as_training_captions": dropped},
                "model_family": self.clip.family, "clip_s_requested": self.clip.requested_s, "frames": self.clip.frames,
                "max_frames": self.clip.max_frames}

    def tokens(self) -> dict:
        folder, codec, clip = self.folder(), self.model_codec(), self.clip
        train_idx, heldout_idx = self.split()
        codes = np.concatenate([codec.encode(folder.clips[i: i + ENCODE_BATCH]).numpy()
                                for i in range(0, len(folder.clips), ENCODE_BATCH)])
        if codes.shape[1:] != (clip.n_codebooks, clip.frames):
            raise WorldError(f"{self.identity['model']}'s EnCodec made codes {codes.shape[1:]} of a clip, expected "
                             f"({clip.n_codebooks}, {clip.frames})")
        # The codec the codes decode with: the MusicGen's own EnCodec, or the world's codec/ (copied from the model)
        source = {"codec": "musicgen", "model": self.identity["model"]} if clip.family == MUSICGEN else \
            {"codec": "codec"}
        meta = {**source, "card": codec.card, "sample_rate": codec.sample_rate, "frame_rate": codec.frame_rate,
                "world_seed": self.seed}
        # Training clips get one row per caption (rows share codes); held-out clips keep their first caption.
        rows = [(int(i), c) for i in train_idx for c in folder.captions[i]]
        ids = [i for i, _ in rows]
        write_tokens(self.world.path("tokens.parquet"), [c for _, c in rows], codes[ids], meta,
                     {"clip_id": ids, "track": [folder.track[i] for i in ids]})
        write_tokens(self.world.path("heldout.parquet"), [folder.captions[i][0] for i in heldout_idx],
                     codes[heldout_idx], meta, {"clip_id": [int(i) for i in heldout_idx],
                                                "track": [folder.track[i] for i in heldout_idx]})
        return {"rows": len(rows), "heldout_rows": len(heldout_idx),
                "distinct_codes": [int(len(np.unique(codes[:, k]))) for k in range(codes.shape[1])],
                "round_trip": codec_figures(codec, folder.clips[heldout_idx])}

    def codec(self) -> dict:
        """A divcfg policy's offline codec, copied in as the world's codec/ (the stage of that name in other worlds)."""
        copy_checkpoint(Path(self.identity["model"]) / "codec", self.world.path("codec"))
        return {"from": str(Path(self.identity["model"]) / "codec")}

    def base(self) -> dict:
        """The divcfg policy itself, copied in as the world's base/: the base model training and evaluation start
        from, used as it is (its checkpoint names its codec as ../codec, the world's)."""
        copy_checkpoint(Path(self.identity["model"]) / "base", self.world.path("base"))
        return {"from": str(Path(self.identity["model"]) / "base")}

    def embedders(self) -> dict:
        folder, codec, seed = self.folder(), self.model_codec(), self.seed
        train_idx, _ = self.split()
        pick = np.sort(np.random.default_rng(seed + 3).permutation(train_idx)[: self.embedder_clips])
        train_rt = round_trip(codec, folder.clips[pick], ENCODE_BATCH)  # what reward workers decode and hear
        heldout_rt = self.heldout_round_trip()
        recalls = {}
        # Two independent models: different seeds and different halves of the training clips.
        for which, s, half in (("reward", seed + 1, slice(0, None, 2)), ("eval", seed + 2, slice(1, None, 2))):
            ecfg = replace(self.ecfg, seed=s)
            clips = train_rt[half]
            model = train_embedder(clips, codec.sample_rate, ecfg, steps=self.embedder_steps,
                                   batch_size=min(32, len(clips)), lr=1e-3, progress=self.progress)
            save_embedder(model, self.world.path(f"embedder_{which}"))
            recalls[which] = (recall_at_1(model, heldout_rt, codec.sample_rate, ecfg.chunk_samples,
                                          torch.Generator().manual_seed(seed)) if len(heldout_rt) >= 2 else None)
        n = len(heldout_rt)
        # recall_at_1 retrieves among both chunks of every clip: 2N - 1 candidates for each.
        return {"recall_at_1": recalls, "chance": 1 / (2 * n - 1) if n >= 2 else None, "heldout_clips": n,
                "train_clips": len(pick), "steps": self.embedder_steps, "preset": self.embedder,
                "chunk_s": self.ecfg.chunk_s}

    def measure(self) -> dict:
        if self.clap is None:
            return {"clap": {"measured": False, "why": "no --clap given"}}
        folder, (_, heldout_idx) = self.folder(), self.split()
        judge = load_clap_judge(self.clap)
        prompts = [folder.captions[i][0] for i in heldout_idx]
        real = judge.score(folder.clips[heldout_idx], self.clip.sample_rate, prompts)
        after = judge.score(self.heldout_round_trip(), self.clip.sample_rate, prompts)
        return {"clap": {"measured": True, "dir": str(self.clap), "real": float(real.mean()),
                         "round_trip": float(after.mean()), "clips": len(prompts)}}


def folder_report(state: dict, stages: tuple[str, ...] = FOLDER_STAGES) -> dict:
    """world.json of a folder world, from the figures its stages recorded."""
    done, ident = state["done"], state["identity"]
    corpus, tokens, emb, clap = done["corpus"], done["tokens"], done["embedders"], done["measure"]["clap"]
    return {
        "identity": ident, "kind": KIND, "model": ident["model"], "model_family": corpus.get("model_family", MUSICGEN),
        "clip_s": ident["clip_s"], "clip_s_requested": corpus["clip_s_requested"], "frames": corpus["frames"],
        "clips": {"total": corpus["clips"], "train": corpus["train"]["clips"], "heldout": corpus["heldout"]["clips"]},
        "tracks": {"total": corpus["tracks"], "train": corpus["train"]["tracks"],
                   "heldout": corpus["heldout"]["tracks"], "heldout_names": corpus["heldout"]["track_names"]},
        "seconds": corpus["audio_seconds"], "training_rows": tokens["rows"],
        "skipped": corpus["skipped_reasons"], "captions_format": corpus["captions_format"],
        "heldout_prompts": corpus["heldout_prompts"],
        "embedder_recall_at_1": {**emb["recall_at_1"], "chance": emb["chance"], "clips": emb["heldout_clips"]},
        "codec_round_trip": tokens["round_trip"], "codec_distinct_codes": tokens["distinct_codes"],
        "clap_ceiling": clap,
        # No scorer: free captions have no attribute table to classify.
        "judges": {"adherence": "clap" if clap.get("measured") else "none", "clap": clap.get("dir"), "scorer": None},
        "stage_seconds": {s: done[s]["seconds"] for s in stages},
    }


# ---- the command line (wired into `divcfg world build` by world/build.py's main) --------------------------------

def add_folder_arguments(b: argparse.ArgumentParser) -> None:
    b.add_argument("--audio", default=None, help="folder: the audio folder (searched recursively)")
    b.add_argument("--captions", default=None,
                   help="folder: caption file or folder (audiocraft data.jsonl, HF audiofolder metadata, path,caption)")
    b.add_argument("--model", default=None, help="folder: a local MusicGen directory (its EnCodec makes the codes), "
                   "or a divcfg world whose base model and codec to use (e.g. worlds/music_small)")
    b.add_argument("--clip-s", type=float, default=None,
                   help=f"folder: clip length in seconds (default: {DEFAULT_CLIP_S:g} for a MusicGen, the clip a divcfg "
                        f"policy was pretrained on; capped to what the model takes)")
    b.add_argument("--heldout-prompts", default=None,
                   help="folder: held-out prompt file, one per line (default: the held-out tracks' captions)")
    b.add_argument("--heldout-fraction", type=float, default=None, help="folder: tracks held out (default 0.1)")
    b.add_argument("--clap", default=None, help="folder: local CLAP directory, the held-out clips' ceiling")
    b.add_argument("--embedder-steps", type=int, default=None, help="folder: embedder training steps (default 250)")


def folder_options_given(args: argparse.Namespace) -> list[str]:
    return [flag for flag in FOLDER_FLAGS if getattr(args, flag[2:].replace("-", "_"), None) is not None]


def folder_cli(args: argparse.Namespace) -> int:
    """``divcfg world build --kind folder ...``; also refuses the folder options given with another kind."""
    try:
        if args.kind != KIND:
            raise WorldError(f"{', '.join(folder_options_given(args))} apply to --kind folder only, "
                             f"not --kind {args.kind}")
        missing = [flag for flag in ("--out", "--audio", "--captions", "--model") if getattr(args, flag[2:]) is None]
        if missing:
            raise WorldError(f"--kind folder needs {', '.join(missing)}")
        other = [flag for flag in ("--codec", "--soundfont", "--collections") if getattr(args, flag[2:]) is not None]
        if other:
            raise WorldError(f"--kind folder does not take {', '.join(other)} (the model's own codec is the codec)")
        if args.threads:
            torch.set_num_threads(args.threads)
        report = build_folder_world(
            args.out, args.audio, args.captions, args.model, clip_s=args.clip_s, heldout_prompts=args.heldout_prompts,
            heldout_fraction=0.1 if args.heldout_fraction is None else args.heldout_fraction, clap=args.clap,
            embedder_steps=250 if args.embedder_steps is None else args.embedder_steps, seed=args.seed,
            progress=not args.no_progress)
    except (WorldError, ValueError, FileNotFoundError, ImportError, OSError) as e:
        print(f"divcfg world: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: report[k] for k in ("clips", "tracks", "embedder_recall_at_1", "clap_ceiling")}))
    if report.get("skipped"):  # their reasons are in world.json; a count here so that none goes unnoticed
        print(f"divcfg world: {len(report['skipped'])} file(s) skipped (world.json \"skipped\" has each reason), "
              f"first: {first_skipped(report['skipped'])}", file=sys.stderr)
    return 0
