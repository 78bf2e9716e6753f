"""A phase for a magnitude spectrogram that has none: phase gradient heap integration (PGHI; Průša, Balazs and
Søndergaard, "A noniterative method for reconstruction of phase from STFT magnitude", IEEE/ACM TASLP 2017).

Why the codec's decoder starts Griffin-Lim here rather than from a flat phase: a flat phase puts every frame's
energy at the frame's centre, and a few Griffin-Lim iterations do not move it back onto the notes' attacks. On the
real-music world's 200 held-out clips the independent judge (Basic Pitch) read density right in 0.48 of the codec's
round trips from a flat phase and 8 iterations, against 0.80 of the rendered clips; from PGHI's phase and the same
8 iterations it reads 0.65 (0.705 with none; RESULTS.md "Codec version 4"). For a Gaussian window the STFT's phase
derivatives are its log-magnitude's derivatives, turned and scaled: along time (a bin's frequency) from the
magnitude's slope across bins, along frequency (an attack's time) from its slope across frames. A Hann window is
close to the Gaussian with λ = 0.25645 · n_fft². PGHI integrates those derivatives outwards from the loudest bin,
always stepping next from the loudest bin already reached, so the phase is carried along ridges of energy where the
derivatives are reliable.

The phase convention is ``torch.stft``'s: each frame's phase is measured from the frame's first sample, so a
stationary bin-centre tone advances by ``2π · bin · hop / n_fft`` per frame, and the window's centre sits
``n_fft / 2`` samples in, a factor ``(-1)^bin``.
"""
from __future__ import annotations

import functools
import heapq

import numba
import numpy as np
import torch

HANN_LAMBDA = 0.25645
"""λ / n_fft² of the Gaussian window closest to a Hann window (Průša et al., table I)."""


def phase_gradients(log_mag: np.ndarray, hop: int, n_fft: int) -> tuple[np.ndarray, np.ndarray]:
    """``log_mag [F, T]`` (natural log of a Hann-window STFT magnitude, hop ``hop``) -> the phase's step per frame
    ``[F, T]`` (radians from frame t to t + 1 at each bin) and per bin ``[F, T]`` (from bin f to f + 1)."""
    gamma = HANN_LAMBDA * n_fft ** 2
    bins = np.arange(log_mag.shape[0], dtype=np.float64)[:, None]
    per_frame = (hop * n_fft / gamma) * np.gradient(log_mag, axis=0) + 2 * np.pi * hop * bins / n_fft
    per_bin = -(gamma / (hop * n_fft)) * np.gradient(log_mag, axis=1)
    return per_frame, per_bin


def _heap_integrate(log_mag: np.ndarray, per_frame: np.ndarray, per_bin: np.ndarray, floor: float,
                    order: np.ndarray) -> np.ndarray:
    """The phase ``[F, T]`` integrated from the loudest bin outwards (trapezoidal steps); bins quieter than ``floor``
    (log) keep phase 0; ``order``: the flat bin indices, loudest first, where each new island of energy starts.
    Written for numba (:func:`heap_integrate`); this plain function is its slow reference."""
    n_bins, n_frames = log_mag.shape
    phase = np.zeros((n_bins, n_frames))
    done = log_mag < floor
    heap = [(0.0, 0, 0)]
    heap.pop()  # an empty heap of (−log magnitude, bin, frame), typed for numba
    for start in order:
        f0, t0 = start // n_frames, start % n_frames
        if done[f0, t0]:
            continue
        done[f0, t0] = True  # a new island of energy: its loudest bin keeps phase 0
        heapq.heappush(heap, (-log_mag[f0, t0], f0, t0))
        while len(heap) > 0:
            _, f, t = heapq.heappop(heap)
            for df, dt in ((0, 1), (0, -1), (1, 0), (-1, 0)):
                g, u = f + df, t + dt
                if g < 0 or g >= n_bins or u < 0 or u >= n_frames or done[g, u]:
                    continue
                if dt != 0:
                    phase[g, u] = phase[f, t] + dt * 0.5 * (per_frame[f, t] + per_frame[g, u])
                else:
                    phase[g, u] = phase[f, t] + df * 0.5 * (per_bin[f, t] + per_bin[g, u])
                done[g, u] = True
                heapq.heappush(heap, (-log_mag[g, u], g, u))
    return phase


@functools.cache
def _compiled():
    """:func:`_heap_integrate` compiled, on first use (numba's import and the compile stay off every other import of
    the codec); cache=True keeps the compiled code beside this file for the next process. The heap walk visits each
    of a 3 s clip's 96,000 bins; the interpreter took 1.4 s for one clip where the compiled walk took 27 ms."""
    return numba.njit(cache=True)(_heap_integrate)


def heap_integrate(log_mag: np.ndarray, per_frame: np.ndarray, per_bin: np.ndarray, floor: float) -> np.ndarray:
    """:func:`_heap_integrate`, compiled; the loudness order comes from numpy's sort, twice as fast as numba's."""
    return _compiled()(log_mag, per_frame, per_bin, floor, np.argsort(-log_mag.ravel()))


def pghi_phase(magnitude: torch.Tensor, hop: int, n_fft: int, tol: float = 1e-3) -> torch.Tensor:
    """``magnitude [B, F, T]`` of a Hann-window ``torch.stft`` (``F = n_fft / 2 + 1``) -> its phase ``[B, F, T]``
    by PGHI; bins below ``tol`` × each clip's loudest keep phase 0 (their derivatives are noise).

    ``tol`` 1e-3 rather than the paper's 1e-5: on the real-music codec's decoded magnitudes 42% of the bins are
    above 1e-3 and 96% above 1e-5, the walk takes less than half the time, and the rebuilt clips' spectral
    convergence is the same to four digits, before and after 8 Griffin-Lim iterations (RESULTS.md "Codec
    version 4")."""
    if magnitude.shape[1] != n_fft // 2 + 1:
        raise ValueError(f"pghi_phase: {magnitude.shape[1]} bins do not match n_fft={n_fft}")
    out = np.empty(magnitude.shape, dtype=np.float32)
    signs = np.pi * np.arange(magnitude.shape[1])[:, None]  # the window's centre, n_fft / 2 samples into the frame
    for i, mag in enumerate(magnitude.detach().cpu().double().numpy()):
        log_mag = np.log(np.maximum(mag, 1e-30))
        per_frame, per_bin = phase_gradients(log_mag, hop, n_fft)
        out[i] = heap_integrate(log_mag, per_frame, per_bin, log_mag.max() + np.log(tol)) + signs
    return torch.from_numpy(out).to(magnitude.device)
