"""The offline codec's decoders from log-mel latents to audio, and the Griffin-Lim phase reconstruction they use.

Where the old decoder lost the music (measured on 32 held-out clips of the procedural small world, multi-resolution
STFT distance, RESULTS.md "Codec"): Griffin-Lim from the clip's *exact* linear magnitude at the codec's 50%-overlap
frames already costs 1.83; log-mel frames turned back to linear magnitude by the filterbank's pseudo-inverse cost
4.59 before any quantisation (harmonics inside a wide mel band come back as a flat smear); quantisation adds 0.3.
So :class:`SpectrogramDecoder` predicts the log-magnitude itself from the quantised latents (a ridge regression
fitted in closed form, so the build stays cheap on CPU) at four sub-frames per codec frame, and runs Griffin-Lim at
75% overlap, where Griffin-Lim from exact magnitudes costs 0.89 instead of 1.83. Codec version 3 adds a learned head
to that regression (vocoder_head.py); version 4 starts Griffin-Lim from the phase PGHI integrates from the predicted
magnitude (phase.py) instead of a flat one.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio.transforms as AT

from divcfg.codec.phase import pghi_phase
from divcfg.codec.vocoder_head import LogMagnitudeHead, context_features


def _iterate(magnitude: torch.Tensor, window: torch.Tensor, hop: int, n_iter: int, momentum: float,
             istft) -> torch.Tensor:
    """Fast Griffin-Lim's iteration with momentum, given an inverse STFT ``istft(spec) -> [B, samples]``; the
    phase starts at 1 (torchaudio's rand_init=False). magnitude · a / (|a| + ε) is computed as
    a · (magnitude / (|a| + ε)): one real division and one complex product per iteration."""
    n_fft = window.shape[0]
    spec = magnitude.to(torch.complex64 if magnitude.dtype == torch.float32 else torch.complex128)
    previous, alpha = None, momentum / (1 + momentum)  # torchaudio's parametrisation of the momentum
    for _ in range(n_iter):
        rebuilt = torch.stft(istft(spec), n_fft, hop, window=window, center=True, pad_mode="reflect",
                             return_complex=True)
        a = rebuilt if previous is None else torch.sub(rebuilt, previous, alpha=alpha)
        spec = a * (magnitude / a.abs().add_(1e-16))
        previous = rebuilt
    return istft(spec)


def griffin_lim_overlap(magnitude: torch.Tensor, window: torch.Tensor, hop: int, n_iter: int,
                        momentum: float = 0.99, phase: torch.Tensor | None = None) -> torch.Tensor:
    """Fast Griffin-Lim for any ``n_fft`` (a multiple of ``hop``; the spectrogram decoder's is 75% overlap), from
    ``phase [B, n_fft/2 + 1, T]`` (None: a fixed all-ones initial phase): ``magnitude [B, n_fft/2 + 1, T]`` ->
    waveform ``[B, (T - 1) · hop]``; ``n_iter=0`` is the inverse STFT of the magnitude with that phase.

    The same iteration as ``torchaudio.functional.griffinlim`` (tested against it), laid out for a CPU, where it is
    bound by memory traffic (decoding is most of a reward worker's and of the evaluation's time): the spectrogram is
    kept frames-major (``[B, T, F]``), so both FFTs run over the contiguous last dimension; frames are cut from the
    signal as strided views (``unfold``); the overlap-add is ``n_fft / hop`` shifted adds, with the window envelope
    computed once; and the phase projection multiplies the complex spectrogram's real view in place by a real ratio,
    where ``complex · real`` would first copy the real factor to complex.
    """
    n_fft = window.shape[0]
    if n_fft % hop:
        raise ValueError(f"griffin_lim_overlap needs n_fft a multiple of hop, got n_fft={n_fft}, hop={hop}")
    b, _, t = magnitude.shape
    k, pad = n_fft // hop, n_fft // 2
    mag = magnitude.transpose(1, 2).contiguous()  # [B, T, F]

    def overlap_add(frames: torch.Tensor) -> torch.Tensor:  # [B, T, n_fft] -> [B, (T + k - 1) · hop]
        chunks = frames.view(frames.shape[0], t, k, hop)
        out = chunks.new_zeros(frames.shape[0], t + k - 1, hop)
        for j in range(k):  # frame i's chunk j lands at output chunk i + j
            out[:, j: j + t] += chunks[:, :, j]
        return out.view(frames.shape[0], -1)

    # torch.istft divides by the overlap-added window² and trims n_fft / 2 at each end (centred frames).
    env = overlap_add(window.pow(2).expand(1, t, n_fft).contiguous())[0]
    keep = slice(pad, pad + (t - 1) * hop)
    inv_env = 1.0 / env[keep].clamp(min=1e-11)

    def istft(spec: torch.Tensor) -> torch.Tensor:  # [B, T, F] complex -> [B, (T - 1) · hop]
        return overlap_add(torch.fft.irfft(spec, n=n_fft, dim=-1).mul_(window))[:, keep].mul_(inv_env)

    def stft(y: torch.Tensor) -> torch.Tensor:  # [B, L] -> [B, T, F], centred frames with reflect padding
        padded = F.pad(y[:, None], (pad, pad), mode="reflect")[:, 0]
        return torch.fft.rfft(padded.unfold(-1, n_fft, hop) * window, dim=-1)

    alpha = momentum / (1 + momentum)  # torchaudio's parametrisation of the momentum
    if phase is None:
        spec = mag.to(torch.complex64 if mag.dtype == torch.float32 else torch.complex128)
    else:
        spec = torch.polar(mag, phase.transpose(1, 2).to(mag.dtype))
    previous = None
    for _ in range(n_iter):
        rebuilt = stft(istft(spec))
        spec = rebuilt.clone() if previous is None else torch.sub(rebuilt, previous, alpha=alpha)
        ratio = spec.abs().add_(1e-16)
        torch.div(mag, ratio, out=ratio)
        torch.view_as_real(spec).mul_(ratio.unsqueeze(-1))  # spec · magnitude / |spec|
        previous = rebuilt
    return istft(spec)


def griffin_lim(magnitude: torch.Tensor, window: torch.Tensor, hop: int, n_iter: int,
                momentum: float = 0.99) -> torch.Tensor:
    """Fast Griffin-Lim for 50%-overlap STFTs (``n_fft = 2 · hop``), from a fixed all-ones initial phase:
    ``magnitude [B, n_fft/2 + 1, T]`` -> waveform ``[B, (T - 1) · hop]``.

    The same iteration as ``torchaudio.functional.griffinlim`` (fast Griffin-Lim with momentum; tested against it),
    but its inverse STFT overlap-adds the two half-frames directly and divides by a window envelope computed once,
    where ``torch.istft`` runs a general overlap-add for the frames and again for the envelope on every iteration,
    and the phase normalisation and the magnitude product are one real division and one complex product. Decoding
    is most of a reward worker's time on CPU.
    """
    n_fft = window.shape[0]
    if n_fft != 2 * hop:
        raise ValueError(f"griffin_lim needs n_fft = 2 * hop, got n_fft={n_fft}, hop={hop}")
    b, _, t = magnitude.shape
    w = window[:, None]
    # torch.istft windows each frame, overlap-adds, and divides by the overlap-added window² (the same in every
    # hop-long chunk at 50% overlap); the centre trim removes one hop at each end. Folded into two weights:
    env = w[:hop] ** 2 + w[hop:] ** 2
    w_first, w_second = w[:hop] / env, w[hop:] / env

    def istft(spec: torch.Tensor) -> torch.Tensor:
        frames = torch.fft.irfft(spec, n=n_fft, dim=1)  # [B, n_fft, T]
        # Output chunk j (after the trim) = second half of frame j + first half of frame j + 1.
        y = (frames[:, hop:, :-1] * w_second).addcmul_(frames[:, :hop, 1:], w_first)  # [B, hop, T - 1]
        return y.transpose(1, 2).reshape(b, (t - 1) * hop)

    return _iterate(magnitude, window, hop, n_iter, momentum, istft)


class MelDecoder(torch.nn.Module):
    """Log-mel latents ``[B, D, T]`` -> waveform ``[B, 1, T * hop]``: pseudo-inverse of the mel filterbank, then
    Griffin-Lim from a fixed (not random) initial phase, so decoding is deterministic. Codec version 1's decoder,
    kept as ``decoder="pinv"`` for the A/B in RESULTS.md."""

    def __init__(self, encoder, n_iter: int = 16):
        super().__init__()
        self.hop = encoder.hop
        self.register_buffer("fb_pinv", torch.linalg.pinv(encoder.fb.T))  # [F, D]
        # torchaudio's Griffin-Lim: its settings and window drive the fast griffin_lim above, and it is the slow
        # reference the tests hold that to.
        self.griffin_lim = AT.GriffinLim(n_fft=encoder.n_fft, hop_length=encoder.hop, power=1.0, n_iter=n_iter,
                                         rand_init=False)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        t = emb.shape[-1]
        power = (self.fb_pinv @ emb.exp()).clamp(min=0.0)
        mag = torch.cat([power, power[:, :, -1:]], dim=2).sqrt()  # T frames -> T + 1 centred STFT frames
        gl = self.griffin_lim
        return griffin_lim(mag, gl.window, self.hop, gl.n_iter, gl.momentum)[:, None, : t * self.hop]


PHASE_INITS = ("zero", "pghi")


class SpectrogramDecoder(torch.nn.Module):
    """Quantised latents ``[B, D, T]`` -> waveform ``[B, 1, T * hop]``.

    Each codec frame's latent, with ``context`` neighbours either side, predicts the log-magnitude of ``subframes``
    STFT frames (hop ``hop / subframes``, ``n_fft = 4 · hop / subframes``: 75% overlap) by a linear map
    ``weight [(2·context + 1)·D + 1, subframes · F]`` fitted by :meth:`fit`; with ``head_hidden`` a learned
    :class:`~divcfg.codec.vocoder_head.LogMagnitudeHead` adds its correction (codec version 3); Griffin-Lim then
    rebuilds the phase, from PGHI's phase with ``phase_init="pghi"`` (codec version 4; phase.py) or from a flat one.
    """

    def __init__(self, dimension: int, hop: int, context: int = 1, subframes: int = 4, n_iter: int = 16,
                 head_hidden: int = 0, head_context: int = 2, phase_init: str = "zero"):
        super().__init__()
        if hop % subframes:
            raise ValueError(f"codec hop {hop} is not a multiple of subframes={subframes}")
        if phase_init not in PHASE_INITS:
            raise ValueError(f"codec phase_init={phase_init!r}: must be one of {PHASE_INITS}")
        self.hop, self.context, self.subframes, self.n_iter = hop, context, subframes, n_iter
        self.phase_init = phase_init
        self.stft_hop, self.n_fft = hop // subframes, 4 * (hop // subframes)
        self.n_bins = self.n_fft // 2 + 1
        self.register_buffer("weight", torch.zeros((2 * context + 1) * dimension + 1, subframes * self.n_bins))
        self.register_buffer("window", torch.hann_window(self.n_fft))
        self.head = (LogMagnitudeHead(dimension, subframes * self.n_bins, head_hidden, head_context)
                     if head_hidden else None)

    def features(self, emb: torch.Tensor) -> torch.Tensor:
        """``[B, D, T]`` -> ``[B, T, (2·context + 1)·D + 1]``: each frame with its neighbours (edges repeated), and 1."""
        cols = context_features(emb, self.context)
        return torch.cat([cols, cols.new_ones(*cols.shape[:2], 1)], dim=-1)

    def log_magnitude(self, emb: torch.Tensor) -> torch.Tensor:
        """``[B, D, T]`` -> ``[B, F, T · subframes]``."""
        b, _, t = emb.shape
        out = self.features(emb) @ self.weight  # [B, T, subframes · F]
        if self.head is not None:
            out = out + self.head(emb)
        return out.view(b, t * self.subframes, self.n_bins).transpose(1, 2)

    def target(self, wav: torch.Tensor, n_frames: int) -> torch.Tensor:
        """What :meth:`log_magnitude` is fitted to: ``[B, F, n_frames · subframes]`` of ``wav [B, N]``."""
        wav = F.pad(wav, (0, max(0, n_frames * self.hop - wav.shape[-1])))  # the codec's last frame is partial
        spec = torch.stft(wav, self.n_fft, self.stft_hop, window=self.window, return_complex=True).abs()
        return torch.log(spec[:, :, : n_frames * self.subframes] + 1e-5)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        mag = self.log_magnitude(emb).exp()
        mag = torch.cat([mag, mag[:, :, -1:]], dim=2)  # T·s frames -> T·s + 1 centred STFT frames
        phase = pghi_phase(mag, self.stft_hop, self.n_fft) if self.phase_init == "pghi" else None
        return griffin_lim_overlap(mag, self.window, self.stft_hop, self.n_iter, phase=phase)[:, None]

    @torch.no_grad()
    def fit(self, batches, ridge: float = 1.0) -> None:
        """Ridge regression on ``batches``: an iterable of (quantised latents ``[B, D, T]``, waveform ``[B, N]``).

        The normal equations are accumulated batch by batch in float64, so a corpus of any size fits in memory.
        """
        d = self.weight.shape[0]
        gram = torch.zeros(d, d, dtype=torch.float64)
        cross = torch.zeros(d, self.weight.shape[1], dtype=torch.float64)
        for emb, wav in batches:
            b, _, t = emb.shape
            x = self.features(emb).reshape(b * t, d).double()
            y = self.target(wav, t).transpose(1, 2).reshape(b, t, self.subframes * self.n_bins).reshape(b * t, -1)
            gram += x.T @ x
            cross += x.T @ y.double()
        if not gram[-1, -1] > 0:
            raise ValueError("the spectrogram decoder's fit got no audio frames")
        self.weight.copy_(torch.linalg.solve(gram + ridge * torch.eye(d, dtype=torch.float64), cross).float())


def spectral_peak_hz(wav: np.ndarray, sample_rate: int) -> float:
    """Frequency (Hz) of the largest Hann-windowed spectrum bin of ``wav [N]``: a pitch check for tests."""
    spec = np.abs(np.fft.rfft(wav * np.hanning(len(wav))))
    return float(np.argmax(spec) * sample_rate / len(wav))
