"""How much of the codec's STFT distance no codec at its bit rate can remove (RESULTS.md "Codec version 3").

    python -m divcfg.experiments.codec_floor      # 32 held-out clips of the procedural small world

Every procedural clip is music plus white noise (world/procedural.py: ``synthesize``). The noise's STFT bins are
random; a codec of 100 tokens/s can carry its level, not its bins. This measures, on the same held-out clips the
codec A/B uses (9400..), the distance of decoders that know more than any codec could:
- ``exact_magnitude``: Griffin-Lim from the clip's exact magnitude at the decoder's STFT (hop 160, n_fft 640);
- ``music_exact_fresh_noise``: the clip's exact music waveform plus new white noise of the clip's own level;
- ``music_magnitude_noise_level``: Griffin-Lim from the music's exact magnitude plus the noise's expected power.
The last two are the floor for a codec that gets the music perfectly and the noise only by its level.
``music_alone`` (the music without any noise) shows why a codec must rebuild the noise floor at all.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from divcfg.codec.offline import mel_loss
from divcfg.codec.vocoder import griffin_lim_overlap
from divcfg.world import procedural


class _RecordingRng:
    """A numpy Generator that remembers its draws, to recover the noise ``synthesize`` added last."""

    def __init__(self, rng: np.random.Generator):
        self.rng, self.draws = rng, []

    def __getattr__(self, name):
        return getattr(self.rng, name)

    def random(self, *args, **kwargs):
        self.draws.append(out := self.rng.random(*args, **kwargs))
        return out

    def uniform(self, *args, **kwargs):
        self.draws.append(out := self.rng.uniform(*args, **kwargs))
        return out


def clips_and_noise(start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The procedural small world's clips ``start..start+count`` and the white noise each one holds."""
    noises, synthesize = [], procedural.synthesize

    def recording(rng, attributes, cfg):
        rec = _RecordingRng(rng)
        out = synthesize(rec, attributes, cfg)
        noises.append(rec.draws[-2] * (rec.draws[-1] - 0.5))  # amplitude · (uniform - 0.5), the last two draws
        return out

    procedural.synthesize = recording
    try:
        clips = procedural.generate_corpus(procedural.WorldConfig(seed=0, n_clips=9600, duration_s=3.0), start=start,
                                           count=count)
    finally:
        procedural.synthesize = synthesize
    return np.stack([c.audio for c in clips]).astype(np.float32), np.stack(noises).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="codec_floor", description=__doc__.split("\n")[0])
    ap.add_argument("--heldout", type=int, default=32)
    ap.add_argument("--iters", type=int, default=32, help="Griffin-Lim iterations")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    audio, noise = (torch.as_tensor(a) for a in clips_and_noise(9400, args.heldout))
    music = audio - noise  # the clip before its noise (exact: the clip is clipped to [-1, 1] but never reaches it)
    hop, n_fft = 160, 640
    window = torch.hann_window(n_fft)

    def magnitude(w):
        return torch.stft(w, n_fft, hop, window=window, return_complex=True).abs()

    def griffin_lim(mag):
        return griffin_lim_overlap(mag, window, hop, args.iters)[:, : audio.shape[1]]

    def distance(y):
        return round(float(mel_loss(y, audio, 16000)), 3)

    noise_power = noise.pow(2).mean(1)[:, None, None] * window.pow(2).sum()  # E|STFT bin|² of white noise
    fresh = (torch.rand(audio.shape, generator=torch.Generator().manual_seed(1)) - 0.5) * 2 * noise.abs().amax(1, True)
    out = {"clips": args.heldout, "griffin_lim_iters": args.iters,
           "exact_magnitude": distance(griffin_lim(magnitude(audio))),
           "music_exact_fresh_noise": distance(music + fresh),
           "music_magnitude_noise_level": distance(griffin_lim((magnitude(music).pow(2) + noise_power).sqrt())),
           "music_alone": distance(music)}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
