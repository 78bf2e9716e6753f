"""PGHI (codec/phase.py): the compiled heap walk against its plain source, and what the phase it gives must do on
signals whose phase is known: a tone's phase advance, a click's time, a chord with attacks."""
import numpy as np
import pytest
import torch

from divcfg.codec.phase import _heap_integrate, heap_integrate, pghi_phase, phase_gradients
from divcfg.codec.vocoder import griffin_lim_overlap

SR, HOP, N_FFT = 16000, 160, 640  # the codec's decoder STFT: 75% overlap at 16 kHz
WINDOW = torch.hann_window(N_FFT)


def stft(x: torch.Tensor) -> torch.Tensor:
    return torch.stft(x, N_FFT, HOP, window=WINDOW, center=True, pad_mode="reflect", return_complex=True)


def inconsistency(y: torch.Tensor, mag: torch.Tensor) -> float:
    """Spectral convergence: how far the magnitude of what was rebuilt is from the magnitude asked for."""
    got = stft(y).abs()
    t = min(got.shape[-1], mag.shape[-1])
    return float((got[..., :t] - mag[..., :t]).norm() / mag[..., :t].norm())


def test_the_compiled_heap_walk_equals_its_plain_source():
    rng = np.random.default_rng(0)
    log_mag = rng.normal(size=(33, 24)) + np.linspace(0, 3, 24)
    per_frame, per_bin = phase_gradients(log_mag, 8, 64)
    floor = log_mag.max() - 4.0  # some bins below it: they keep phase 0 in both
    ref = _heap_integrate(log_mag, per_frame, per_bin, floor, np.argsort(-log_mag.ravel()))
    assert (log_mag < floor).any() and np.array_equal(ref[log_mag < floor], np.zeros((log_mag < floor).sum()))
    np.testing.assert_allclose(heap_integrate(log_mag, per_frame, per_bin, floor), ref, rtol=0, atol=1e-12)


def tone(bin_: int) -> torch.Tensor:
    t = torch.arange(SR) / SR
    return 0.5 * torch.sin(2 * np.pi * bin_ * SR / N_FFT * t)[None]


def test_a_tones_phase_advances_by_its_frequency_and_rebuilds_it_without_iterating():
    """Bin 41 advances by 2π · 41 · 160 / 640 = π/2 (mod 2π) per frame, as the tone's own STFT does."""
    x = tone(41)
    spec = stft(x)
    phase = pghi_phase(spec.abs(), HOP, N_FFT)
    step = torch.remainder(phase[0, 41, 11:90] - phase[0, 41, 10:89] + np.pi / 2, 2 * np.pi) - np.pi
    true = torch.angle(spec[0, 41, 11:90] * spec[0, 41, 10:89].conj())
    assert torch.allclose(true, torch.full_like(true, np.pi / 2), atol=1e-4)
    assert step.abs().max() < 1e-3
    # No Griffin-Lim at all: PGHI's phase is already nearly consistent; a flat phase is far from it.
    mag = spec.abs()
    assert inconsistency(griffin_lim_overlap(mag, WINDOW, HOP, 0, phase=phase), mag) < 0.15
    assert inconsistency(griffin_lim_overlap(mag, WINDOW, HOP, 0), mag) > 0.5


def test_a_click_comes_back_at_its_time():
    """A flat phase puts each frame's energy at the frame's centre; PGHI's frequency-direction steps put it back
    on the click."""
    x = torch.zeros(1, SR)
    x[0, 8123] = 1.0
    mag = stft(x).abs()
    for phase, near in ((pghi_phase(mag, HOP, N_FFT), True), (None, False)):
        y = griffin_lim_overlap(mag, WINDOW, HOP, 0, phase=phase)[0]
        share = float(y[8083:8163].pow(2).sum() / y.pow(2).sum())  # energy within 40 samples of the click
        assert (abs(int(y.abs().argmax()) - 8123) <= 5 and share > 0.95) if near else share < 0.5, share


def test_griffin_lim_from_pghi_converges_faster_on_a_chord_with_attacks():
    t = torch.arange(SR) / SR
    chord = sum(0.2 * torch.sin(2 * np.pi * f * t) for f in (261.6, 329.6, 392.0))
    env = torch.zeros(SR)
    for onset in (2000, 6000, 10000):
        env[onset: onset + 3000] = torch.exp(-torch.arange(3000) / 600.0)
    mag = stft((chord * env)[None]).abs()
    pghi = inconsistency(griffin_lim_overlap(mag, WINDOW, HOP, 8, phase=pghi_phase(mag, HOP, N_FFT)), mag)
    flat = inconsistency(griffin_lim_overlap(mag, WINDOW, HOP, 8), mag)
    assert pghi < 0.5 * flat, (pghi, flat)


def test_no_iterations_from_a_given_phase_is_the_inverse_stft():
    """griffin_lim_overlap's own overlap-add (the fast path) against torch.istft, the slow reference."""
    g = torch.Generator().manual_seed(0)
    mag = torch.rand(2, N_FFT // 2 + 1, 30, generator=g)
    phase = torch.rand(2, N_FFT // 2 + 1, 30, generator=g) * 2 * np.pi
    ref = torch.istft(torch.polar(mag, phase), N_FFT, HOP, window=WINDOW, center=True)
    fast = griffin_lim_overlap(mag, WINDOW, HOP, 0, phase=phase)
    assert fast.shape == ref.shape and (fast - ref).norm() / ref.norm() < 1e-5


def test_a_magnitude_of_the_wrong_size_is_refused():
    with pytest.raises(ValueError, match="pghi_phase: 100 bins do not match n_fft=640"):
        pghi_phase(torch.ones(1, 100, 10), HOP, N_FFT)
