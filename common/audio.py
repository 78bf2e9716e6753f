"""WAV I/O with the standard library (torchaudio's I/O moved to torchcodec), and resampling."""
from __future__ import annotations

import os
import wave

import numpy as np


def write_wav(path: str | os.PathLike, audio: np.ndarray, sample_rate: int) -> None:
    """Mono ``audio [N]`` float in [-1, 1] -> 16-bit PCM WAV."""
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).round().astype("<i2")
    with wave.open(os.fspath(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(pcm.tobytes())


def read_wav(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """A PCM WAV (8/16/24/32-bit, any channels) -> (mono float32 ``[N]``, sample rate). Channels are averaged."""
    try:
        with wave.open(os.fspath(path), "rb") as w:
            ch, width, sr, n = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            raw = w.readframes(n)
    except (wave.Error, EOFError) as e:
        raise ValueError(f"not a readable PCM WAV file: {path} ({e})") from e
    if width == 1:
        x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        x = np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    elif width == 3:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        x = ((b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)) << 8 >> 8).astype(np.float32) / 8388608.0
    elif width == 4:
        x = np.frombuffer(raw, "<i4").astype(np.float32) / 2147483648.0
    else:
        raise ValueError(f"unsupported WAV sample width {width} bytes in {path}")
    x = x[: (len(x) // ch) * ch].reshape(-1, ch).mean(axis=1)
    return x.astype(np.float32), sr


def resample(audio: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    """Band-limited resampling of ``[..., N]`` (torchaudio.functional, which needs no I/O backend)."""
    if orig_sr == new_sr:
        return audio
    import torch
    import torchaudio.functional as AF
    return AF.resample(torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)), orig_sr, new_sr).numpy()
