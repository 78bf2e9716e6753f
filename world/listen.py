"""``divcfg world listen``: spectrograms a person can look at, of the same held-out prompts through every stage.

Rows: the original held-out clips (procedural worlds regenerate them from the seed; the music world keeps them as
rendered, ``heldout_rendered.npy``), their round trip through the world's codec (the tokens the
base model was trained on, decoded), the base model's samples without CFG (γ = 1) and with it (γ = 3), and a sample of
each student given. One sampling seed for every model row, so the rows differ only by the model. Writes
``spectrograms.png``, the clips as WAV files, and both to TensorBoard (``tb/``: ``listen/spectrograms`` and the
audio tab's ``listen/<row>/clip<i>``).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch.utils.tensorboard import SummaryWriter

from divcfg.codec.evaluation import figure_to_image, spectrogram_figure
from divcfg.common.data.tokens import read_tokens
from divcfg.common.data.world_dir import World, WorldError, size_params
from divcfg.model.loaders import load_policy
from divcfg.reward.judges import Judges
from divcfg.world.procedural import WorldConfig, corpus_audio


def spectrogram_rows(world_dir: str | os.PathLike, students: dict[str, str], clips: int = 3,
                     seed: int = 0) -> tuple[dict[str, np.ndarray], list[str], int]:
    """``(rows name -> audio [clips, samples], the prompts, sample rate)``."""

    world = World(world_dir)
    if not world.is_built():
        raise FileNotFoundError(f"no complete world in {world_dir}; run `divcfg world build` first")
    identity = world.state()["identity"]
    heldout = read_tokens(world.path("heldout.parquet"))
    if not 1 <= clips <= len(heldout.prompts):
        raise ValueError(f"--clips {clips}: the world {world_dir} has {len(heldout.prompts)} held-out clips")
    judges, prompts = Judges.load(world_dir), list(heldout.prompts[:clips])
    codes = torch.as_tensor(np.asarray(heldout.codes[:clips]), dtype=torch.long)
    rows = {}
    if identity.get("kind", "procedural") == "procedural":
        p = size_params(identity["size"])
        wcfg = WorldConfig(seed=identity["seed"], n_clips=p["n_clips"], duration_s=p["duration_s"])
        rows["original"] = corpus_audio(wcfg, p["n_clips"] - p["n_heldout"], clips)[0]  # held-out clips come last
    else:  # the music world's clips as rendered, in held-out order (as the judge's ceiling reads them)
        from divcfg.world.music_clips import HELDOUT_AUDIO
        rows["original"] = np.load(world.path(HELDOUT_AUDIO), mmap_mode="r")[:clips].astype(np.float32)
    rows["codec round trip"] = judges.decode(codes).numpy()
    models = {"base γ=1": (world.path("base"), 1.0), "base γ=3": (world.path("base"), 3.0),
              **{name: (path, 1.0) for name, path in students.items()}}
    for name, (path, gamma) in models.items():
        policy = load_policy(path).eval()
        with torch.inference_mode():
            out = policy.generate(policy.encode_condition(prompts), codes.shape[2], guidance_scale=gamma,
                                  generator=torch.Generator().manual_seed(seed))
        rows[name] = judges.decode(out.codes).numpy()
    return rows, prompts, judges.codec.sample_rate


def listen(world_dir: str | os.PathLike, students: dict[str, str], out: str | os.PathLike, clips: int = 3,
           seed: int = 0) -> Path:
    """Write ``out/spectrograms.png``, every row's clips as WAV files (``<row>_clip<i>.wav``) and both to
    TensorBoard (``listen/spectrograms``, ``listen/<row>/clip<i>``); returns the PNG's path."""
    import matplotlib.pyplot as plt  # start-up: matplotlib takes ~1.8 s to import, for plots only


    rows, prompts, rate = spectrogram_rows(world_dir, students, clips, seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fig = spectrogram_figure(rows, rate)
    fig.suptitle(" | ".join(f"clip {i}: {p}" for i, p in enumerate(prompts)), fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "spectrograms.png", dpi=100)
    writer = SummaryWriter(str(out / "tb"))
    writer.add_image("listen/spectrograms", figure_to_image(fig), 0)
    # Each row's clips as audio too (TensorBoard's audio tab, and WAV files beside the PNG): what the image shows
    for name, audio in rows.items():
        tag = name.replace(" ", "_").replace("=", "")
        for i, clip in enumerate(np.asarray(audio, dtype=np.float32)):
            clip = np.clip(clip, -1.0, 1.0)
            writer.add_audio(f"listen/{tag}/clip{i}", torch.from_numpy(clip)[None], 0, sample_rate=rate)
            sf.write(out / f"{tag}_clip{i}.wav", clip, rate)
    writer.add_text("listen/prompts", "\n\n".join(f"clip {i}: {p}" for i, p in enumerate(prompts)), 0)
    writer.close()
    plt.close(fig)
    return out / "spectrograms.png"


def listen_cli(args) -> int:
    """``divcfg world listen``'s command (its parser is in world/build.py's ``main``)."""
    try:
        students = dict(_named(s) for s in args.student)
        print(f"wrote {listen(args.world, students, args.out, args.clips, args.seed)}")
    except (WorldError, ValueError, FileNotFoundError) as e:
        print(f"divcfg world listen: error: {e}", file=sys.stderr)
        return 2
    return 0


def _named(spec: str) -> tuple[str, str]:
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise ValueError(f"--student {spec!r}: expected NAME=CKPT")
    return name, path
