"""What the offline codec keeps, in the figures world.json reports, and spectrograms people can look at."""
from __future__ import annotations

import os
import time
from typing import Callable

import numpy as np
import torch

from divcfg.codec.offline import Codec, reconstruction_metrics


def round_trip(codec: Codec, wavs: np.ndarray, batch: int = 64) -> np.ndarray:
    """``decode(encode(x))`` of ``wavs [N, samples]``, cut to the input's length, in batches."""
    out = [codec.decode(codec.encode(wavs[i: i + batch]))[:, : wavs.shape[1]].numpy()
           for i in range(0, len(wavs), batch)]
    return np.concatenate(out).astype(np.float32)


def codec_figures(codec: Codec, wavs: np.ndarray, accuracy: Callable[[np.ndarray], dict] | None = None,
                  round_tripped: np.ndarray | None = None, timing_clips: int = 32) -> dict:
    """Round-trip figures of ``codec`` on held-out clips ``wavs [N, samples]``.

    Returns ``snr_db`` and ``stft_distance`` (:func:`reconstruction_metrics`) and ``encode_x_realtime`` and
    ``decode_x_realtime`` (seconds of audio per second, this process's threads) on the first ``timing_clips``, and
    with ``accuracy`` (clips -> per-attribute accuracy, e.g. the world's scorer) ``accuracy: {"original",
    "round_trip", "ratio"}`` on all of them, where ``ratio`` is round-trip over original per attribute.
    ``round_tripped``: ``round_trip(codec, wavs)`` when the caller has it already (decoding is the slow part).
    """
    x = torch.as_tensor(wavs[:timing_clips], dtype=torch.float32)
    audio_s = x.numel() / codec.sample_rate
    t0 = time.perf_counter()
    codes = codec.encode(x)
    t_enc = time.perf_counter() - t0
    t0 = time.perf_counter()
    codec.decode(codes)
    t_dec = time.perf_counter() - t0
    out = {**reconstruction_metrics(codec, wavs[:timing_clips]), "encode_x_realtime": audio_s / t_enc,
           "decode_x_realtime": audio_s / t_dec, "clips": len(x)}
    if accuracy is not None:
        rt = round_tripped if round_tripped is not None else round_trip(codec, wavs)
        original, after = accuracy(np.asarray(wavs, dtype=np.float32)), accuracy(np.asarray(rt, dtype=np.float32))
        out["accuracy"] = {"original": original, "round_trip": after, "clips": len(wavs),
                           "ratio": {a: (after[a] / original[a] if original[a] else None) for a in original}}
    return out


def spectrogram_figure(rows: dict[str, np.ndarray], sample_rate: int, n_fft: int = 512):
    """A matplotlib figure: one column per clip, one row per entry of ``rows`` (name -> ``[clips, samples]``), each
    a log-magnitude spectrogram on one colour scale. TensorBoard takes it through ``SummaryWriter.add_figure`` (or
    :func:`figure_to_image` and ``add_image``)."""
    import matplotlib  # start-up: matplotlib takes ~1.8 s to import, for plots only
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # start-up: matplotlib takes ~1.8 s to import, for plots only

    names = list(rows)
    n_clips = min(len(v) for v in rows.values())
    fig, axes = plt.subplots(len(names), n_clips, figsize=(3 * n_clips, 2.2 * len(names)), squeeze=False)
    window = torch.hann_window(n_fft)
    for r, name in enumerate(names):
        for c in range(n_clips):
            wav = torch.as_tensor(np.asarray(rows[name][c]), dtype=torch.float32)
            spec = torch.stft(wav, n_fft, n_fft // 4, window=window, return_complex=True).abs()
            db = 20 * torch.log10(spec + 1e-5)
            ax = axes[r][c]
            ax.imshow(db.numpy(), origin="lower", aspect="auto", vmin=-80, vmax=20, cmap="magma",
                      extent=(0, wav.shape[0] / sample_rate, 0, sample_rate / 2000))
            ax.set_title(f"{name} · clip {c}", fontsize=8)
            ax.set_xlabel("s", fontsize=7)
            ax.set_ylabel("kHz", fontsize=7)
            ax.tick_params(labelsize=6)
    fig.tight_layout()
    return fig


def figure_to_image(fig) -> np.ndarray:
    """A matplotlib figure -> ``[3, H, W]`` uint8, what ``SummaryWriter.add_image`` takes (dataformats CHW)."""
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    return np.ascontiguousarray(rgba[:, :, :3].transpose(2, 0, 1))


def save_spectrograms(path: str | os.PathLike, rows: dict[str, np.ndarray], sample_rate: int) -> None:
    """:func:`spectrogram_figure` written as a PNG."""
    import matplotlib.pyplot as plt  # start-up: matplotlib takes ~1.8 s to import, for plots only
    fig = spectrogram_figure(rows, sample_rate)
    fig.savefig(path, dpi=100)
    plt.close(fig)
