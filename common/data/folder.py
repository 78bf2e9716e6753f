"""Audio clips from a folder of files, for every room that reads a user's audio (the folder world, ``divcfg
tokenize``, ``divcfg embedder train``): finding the audio files, cutting them into equal clips without the silent ones,
and holding out whole tracks. Reading a folder's captions into a world is the world's (world/user_folder.py).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from divcfg.common.data.audio import AUDIO_SUFFIXES, resample

# RMS of a clip below which it counts as silence: -60 dBFS. Mastered music rarely sits below about -40 dBFS RMS for
# seconds, and 16-bit quantisation noise is near -100 dBFS, so this drops gaps, fade-outs and digital silence only;
# a silent clip paired with a caption would teach the model that the caption sounds like nothing.
SILENCE_RMS = 1e-3



# ---- finding audio --------------------------------------------------------------------------------------------------

def find_audio(root: str | os.PathLike) -> list[Path]:
    """Every non-hidden file under ``root`` (recursively) with a suffix in AUDIO_SUFFIXES, sorted, relative to root.

    A file inside a hidden folder (``.git/``, ``.cache/``) counts as hidden.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"audio folder not found: {root}")
    found = []
    for p in root.rglob("*"):
        rel = p.relative_to(root)
        if p.suffix.lower() in AUDIO_SUFFIXES and not any(part.startswith(".") for part in rel.parts) and p.is_file():
            found.append(rel)
    return sorted(found, key=lambda r: r.as_posix())


# ---- clips ----------------------------------------------------------------------------------------------------------

def cut_clips(audio: np.ndarray, sr: int, target_sr: int, clip_s: float,
              min_rms: float = SILENCE_RMS) -> list[np.ndarray]:
    """Mono ``audio [N]`` at ``sr`` -> consecutive non-overlapping clips of ``round(clip_s * target_sr)`` samples.

    The audio is resampled to ``target_sr`` first; a trailing remainder shorter than a clip is dropped, and so is a
    clip whose RMS is below ``min_rms``. A file shorter than one clip, silent or empty gives ``[]``.
    """
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"cut_clips expects mono audio [N], got shape {audio.shape}")
    size = round(clip_s * target_sr)
    if sr <= 0 or target_sr <= 0 or size <= 0:
        raise ValueError(f"cut_clips needs positive rates and clip length, got sr={sr}, target_sr={target_sr}, "
                         f"clip_s={clip_s}")
    if len(audio) == 0:
        return []
    x = resample(audio, sr, target_sr)
    n = len(x) // size
    clips = x[: n * size].reshape(n, size)
    rms = np.sqrt(np.mean(np.square(clips, dtype=np.float64), axis=1))
    return [c.astype(np.float32, copy=True) for c, r in zip(clips, rms) if r >= min_rms]


# ---- splits ---------------------------------------------------------------------------------------------------------

def split_by_track(tracks: list[str], heldout_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Clip indices ``(train_idx, heldout_idx)``, each sorted, so that every track's clips fall on one side.

    ``tracks [N]`` is each clip's source track. About ``heldout_fraction`` of the tracks (at least two where there
    are three or more, since an evaluation resamples held-out prompts and needs two; and at least one fewer than all)
    are held out, chosen by ``seed`` alone: the same tracks and seed give the same split.
    """
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    unique = sorted(set(tracks))  # sorted: the split must not depend on the order clips were read in
    if len(unique) < 2:
        raise ValueError(f"split_by_track needs at least 2 tracks to hold some out, got {len(unique)}"
                         + (f" ({unique[0]})" if unique else ""))
    n_heldout = min(max(round(heldout_fraction * len(unique)), 2), len(unique) - 1)
    order = np.random.default_rng(seed).permutation(len(unique))
    heldout = {unique[i] for i in order[:n_heldout]}
    is_heldout = np.array([t in heldout for t in tracks], dtype=bool)
    return np.flatnonzero(~is_heldout), np.flatnonzero(is_heldout)
