"""Audio I/O and resampling.

Reading goes through ``soundfile`` (libsndfile, which its wheels ship): WAV, FLAC, OGG/Vorbis and MP3, the formats
users bring their music in. torchaudio's own I/O moved to torchcodec, which needs FFmpeg on the system. Writing stays
16-bit PCM WAV with the standard library, which every player reads.
"""
from __future__ import annotations

import math
import os
import wave
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

# File name suffixes read_audio accepts (lower case). libsndfile knows more containers, but these are the ones users
# bring music in and the ones the tests cover.
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")


class AudioError(ValueError):
    """An audio file that cannot be used; the message names it and says why."""


def write_wav(path: str | os.PathLike, audio: np.ndarray, sample_rate: int) -> None:
    """Mono ``audio [N]`` float in [-1, 1] -> 16-bit PCM WAV."""
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).round().astype("<i2")
    with wave.open(os.fspath(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(pcm.tobytes())


def read_audio(path: str | os.PathLike, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """A WAV, FLAC, OGG or MP3 file -> (mono float32 ``[N]`` in [-1, 1], sample rate). Channels are averaged.

    ``max_seconds`` decodes only the file's start: a reader that keeps a track's first clip need not decode (and
    hold) a whole track, which for a folder of full-length music is most of the time and of the memory.
    Raises :class:`AudioError` naming the file when it is missing, of an unsupported format, undecodable or empty.
    """

    path = Path(path)
    if path.suffix.lower() not in AUDIO_SUFFIXES:
        raise AudioError(f"unsupported audio format {path.suffix or '(no suffix)'!r}: {path}; "
                         f"divcfg reads {', '.join(AUDIO_SUFFIXES)}")
    if not path.is_file():
        raise AudioError(f"audio file not found: {path}")
    try:
        with sf.SoundFile(os.fspath(path)) as f:
            sr = f.samplerate
            frames = -1 if max_seconds is None else math.ceil(max_seconds * sr)
            x = f.read(frames, dtype="float32", always_2d=True)  # fewer frames at the end of a shorter file
            integer_pcm = f.subtype.startswith("PCM")
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        # libsndfile reports a truncated or corrupt file as "Format not recognised" or "unspecified internal error".
        raise AudioError(f"cannot decode audio file {path} ({e})") from None
    if x.shape[0] == 0:
        raise AudioError(f"audio file {path} is empty (0 samples)")
    # Integer PCM decodes to finite samples by construction: only float and lossy data need the check.
    if not integer_pcm and not np.isfinite(x).all():
        raise AudioError(f"audio file {path} decodes to NaN or infinite samples")
    return (x[:, 0] if x.shape[1] == 1 else x.mean(axis=1, dtype=np.float32)), int(sr)


# The WAV-only name of earlier releases; every reader now takes all of AUDIO_SUFFIXES.
read_wav = read_audio


@dataclass
class AudioFolder:
    """The decodable audio files of a folder, and the files skipped, each with its reason."""

    clips: list[tuple[str, np.ndarray, int]] = field(default_factory=list)
    """(file name, mono float32 ``[N]``, sample rate) per decoded file, sorted by name."""
    skipped: list[str] = field(default_factory=list)
    """Names of the files that could not be used (unsupported format, undecodable, empty), sorted."""
    reasons: dict[str, str] = field(default_factory=dict)
    """Skipped file name -> the error that names it and says why."""


def read_audio_folder(folder: str | os.PathLike, max_seconds: float | None = None) -> AudioFolder:
    """Every non-hidden file of ``folder`` (not recursive): decoded when it can be (its first ``max_seconds`` when
    given, see :func:`read_audio`), otherwise named in ``skipped``.

    Raises :class:`AudioError` when the folder is missing or holds no decodable file (the first skips are named).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise AudioError(f"audio folder not found: {folder}")
    out = AudioFolder()
    for f in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        try:
            x, sr = read_audio(f, max_seconds)
        except AudioError as e:
            out.skipped.append(f.name)
            out.reasons[f.name] = str(e)
            continue
        out.clips.append((f.name, x, sr))
    if not out.clips:
        raise AudioError(f"audio folder {folder} holds no readable {'/'.join(AUDIO_SUFFIXES)} file"
                         + (f"; skipped {len(out.skipped)}: {list(out.reasons.values())[:3]}" if out.skipped else ""))
    return out


def resample(audio: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    """Band-limited resampling of ``[..., N]`` (torchaudio.functional, which needs no I/O backend)."""
    if orig_sr == new_sr:
        return audio
    return AF.resample(torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)), orig_sr, new_sr).numpy()
