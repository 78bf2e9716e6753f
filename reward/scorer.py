"""The world's quality scorer: a small CNN that hears which attribute values a clip has (the MuLan/CLAP role).

It predicts, for each attribute of an attribute table (e.g. ``{"tempo": ("slow", "fast"), ...}``), a distribution
over that attribute's values. Prompt adherence is then the mean predicted probability of the values a prompt asked
for (:func:`adherence`).

Shapes: B clips, N samples, M mel bins, F frames, C channels, V values of one attribute.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchaudio.functional as AF
from tqdm import tqdm

from divcfg.reward.embedder import (
    LogMel,
    config_from_dict,
    load_state,
    read_checkpoint,
    warmup_cosine,
    write_checkpoint,
)
from divcfg.reward.pitch_judge import CONFIG_FILE
from divcfg.reward.views import add_noise, as_clips

Attributes = dict[str, tuple[str, ...]]


@dataclass
class ScorerConfig:
    sample_rate: int = 16000
    """Rate (Hz) the scorer hears; other rates are resampled on entry."""
    n_mels: int = 64
    """Mel bands of the log-mel input; must be divisible by 2 ** len(channels)."""
    n_fft: int = 1024
    """STFT size (64 ms at 16 kHz)."""
    hop_length: int = 256
    """STFT hop in samples."""
    channels: tuple[int, ...] = (16, 32, 64)
    """Output channels of each conv block (two 3x3 convs, then 2x2 average pooling)."""
    crop_s: float | None = None
    """Training crop length in seconds, or None for whole clips. Crops make the scorer robust to where a clip
    starts, but mislabel attributes defined over the whole clip (a crop of a crescendo may sound steady)."""
    tempogram_s: float = 1.0
    """Longest beat period (s) the tempogram feature covers; 0 turns it off."""
    noise_snr_db: tuple[float, float] = (10.0, 40.0)
    """Training augmentation: additive white noise at an SNR (dB) drawn uniformly from this range."""
    seed: int = 0
    """Seeds the initial weights and the training stream."""

    def __post_init__(self) -> None:
        for name in ("sample_rate", "n_mels", "n_fft", "hop_length"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ScorerConfig.{name} must be positive, got {getattr(self, name)}")
        if not self.channels or min(self.channels) <= 0:
            raise ValueError(f"ScorerConfig.channels must be a non-empty tuple of positive sizes, got {self.channels}")
        if self.n_mels % 2 ** len(self.channels):
            raise ValueError(f"ScorerConfig.n_mels={self.n_mels} must be divisible by 2 ** len(channels) = "
                             f"{2 ** len(self.channels)}")
        if self.crop_s is not None and round(self.crop_s * self.sample_rate) < self.min_samples:
            raise ValueError(f"ScorerConfig.crop_s={self.crop_s} is shorter than the {self.min_samples} samples the "
                             f"network needs")
        if self.tempogram_s < 0:
            raise ValueError(f"ScorerConfig.tempogram_s must be >= 0, got {self.tempogram_s}")
        if self.noise_snr_db[0] > self.noise_snr_db[1]:
            raise ValueError(f"ScorerConfig.noise_snr_db {self.noise_snr_db} must be a (low, high) range")

    @property
    def min_samples(self) -> int:
        # Each block halves the frames, so the input needs at least 2 ** blocks frames.
        return (2 ** len(self.channels) - 1) * self.hop_length


_PRESETS: dict[str, dict] = {
    "tiny": dict(n_mels=32, channels=(8, 16)),  # tests: trains in seconds on one CPU thread
    "small": dict(),  # the offline world's default
}


def scorer_config(size: str, **overrides) -> ScorerConfig:
    """The preset ``size`` ("tiny", "small") with ``overrides`` applied to its fields."""
    if size not in _PRESETS:
        raise ValueError(f"unknown scorer preset {size!r}; known presets: {sorted(_PRESETS)}")
    return config_from_dict(ScorerConfig, {**_PRESETS[size], **overrides}, f"scorer preset {size!r}")


def _check_attributes(attributes: Attributes) -> None:
    if not attributes:
        raise ValueError("the attribute table is empty")
    for name, values in attributes.items():
        if len(values) < 2 or len(set(values)) != len(values):
            raise ValueError(f"attribute {name!r} needs at least two distinct values, got {values}")


def tempogram(log_mel: torch.Tensor, max_lag: int) -> torch.Tensor:
    """Log-mel ``[B, M, F]`` -> autocorrelation of its onset strength at lags 1..max_lag frames ``[B, max_lag]``.

    Onset strength is the positive spectral flux averaged over bands; the autocorrelation is normalised by its
    value at lag 0, so a clip's tempo shows as a peak at its beat period whatever its loudness. Lags beyond the clip
    are 0.
    """
    flux = F.relu(log_mel.diff(dim=-1)).mean(dim=1)  # [B, F-1]
    flux = flux - flux.mean(dim=-1, keepdim=True)
    n = flux.shape[-1]
    # [B, n]; padding to 2n makes the FFT autocorrelation linear, not circular.
    acf = torch.fft.irfft(torch.fft.rfft(flux, n=2 * n).abs().pow(2), n=2 * n)[:, :n]
    acf = acf[:, 1:max_lag + 1] / acf[:, :1].clamp_min(1e-8)
    return F.pad(acf, (0, max_lag - acf.shape[-1]))


class AttributeScorer(nn.Module):
    """Audio ``[B, N]`` at ``cfg.sample_rate`` -> ``{attribute: logits [B, V]}`` for every attribute of the table.

    Log-mel without per-clip normalisation, then a learned per-band BatchNorm (so loudness stays audible), conv
    blocks, mean over frequency, max + mean over time, joined by the input's :func:`tempogram` (pooling over time
    cannot see a periodicity), then one linear head split per attribute.
    """

    def __init__(self, cfg: ScorerConfig, attributes: Attributes):
        super().__init__()
        _check_attributes(attributes)
        self.cfg = cfg
        self.attributes = {name: tuple(values) for name, values in attributes.items()}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.logmel = LogMel(cfg.sample_rate, cfg.n_fft, cfg.hop_length, cfg.n_mels, per_clip_norm=False)
            self.band_norm = nn.BatchNorm1d(cfg.n_mels)
            blocks, c_in = [], 1
            for c in cfg.channels:
                blocks += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                           nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(), nn.AvgPool2d(2)]
                c_in = c
            self.convs = nn.Sequential(*blocks)
            self.max_lag = round(cfg.tempogram_s * cfg.sample_rate / cfg.hop_length)
            self.head = nn.Linear(c_in + self.max_lag, sum(len(v) for v in self.attributes.values()))

    def forward(self, wav: torch.Tensor) -> dict[str, torch.Tensor]:
        if wav.dim() != 2 or wav.shape[1] < self.cfg.min_samples:
            raise ValueError(f"AttributeScorer expects a waveform [B, N>={self.cfg.min_samples}], "
                             f"got {tuple(wav.shape)}")
        mel = self.logmel(wav)  # [B, M, F]
        x = self.convs(self.band_norm(mel).unsqueeze(1)).mean(dim=2)  # [B, C, F']
        features = [x.amax(dim=-1) + x.mean(dim=-1)]  # [B, C]
        if self.max_lag:
            features.append(tempogram(mel, self.max_lag))  # [B, max_lag]
        logits = self.head(torch.cat(features, dim=-1))  # [B, sum V]
        return dict(zip(self.attributes, logits.split([len(v) for v in self.attributes.values()], dim=-1)))

    @torch.no_grad()
    def predict_proba(self, wav: torch.Tensor, sample_rate: int) -> dict[str, torch.Tensor]:
        """Waveform ``[B, N]`` float at ``sample_rate`` -> ``{attribute: probabilities [B, V]}``."""
        if wav.dim() != 2 or not wav.is_floating_point():
            raise ValueError(f"predict_proba expects a float waveform [B, N], got {wav.dtype} {tuple(wav.shape)}")
        wav = wav.to(self.head.weight.device, torch.float32)
        if sample_rate != self.cfg.sample_rate:
            wav = AF.resample(wav, sample_rate, self.cfg.sample_rate)
        return {name: logits.softmax(dim=-1) for name, logits in self(wav).items()}


def adherence(probs: dict[str, torch.Tensor], requested: list[dict[str, str]],
              attributes: Attributes) -> torch.Tensor:
    """Prompt adherence ``[B]``: for each sample, the mean over the attributes its prompt requested of the predicted
    probability of the requested value.

    ``probs``: ``{attribute: [B, V]}`` as from :meth:`AttributeScorer.predict_proba`; ``requested``: one dict per
    sample, attribute -> value name; ``attributes``: the table that orders each attribute's values. A sample whose
    prompt requests nothing gets NaN (nothing to adhere to; a 1.0 would pass unconditional prompts off as perfect),
    so average over a batch with ``nanmean``. An attribute or value outside the table is a ValueError.
    """
    for i, r in enumerate(requested):
        unknown = set(r) - set(attributes)
        if unknown:
            raise ValueError(f"sample {i} requests attributes {sorted(unknown)} outside the table {list(attributes)}")
    B = len(requested)
    total = torch.zeros(B, dtype=torch.float64)
    count = torch.zeros(B, dtype=torch.float64)
    for name, values in attributes.items():
        asked = [(i, r[name]) for i, r in enumerate(requested) if name in r]
        if not asked:
            continue
        p = probs[name]
        if p.shape != (B, len(values)):
            raise ValueError(f"probs[{name!r}] has shape {tuple(p.shape)}, expected {(B, len(values))}")
        for i, value in asked:
            if value not in values:
                raise ValueError(f"sample {i} requests {name}={value!r}, not one of {values}")
        rows = torch.tensor([i for i, _ in asked])
        cols = torch.tensor([values.index(v) for _, v in asked])
        total[rows] += p.detach().cpu().double()[rows, cols]
        count[rows] += 1
    return (total / count).float()  # 0 / 0 = NaN where nothing was requested


def _check_labels(labels: np.ndarray | torch.Tensor, n_clips: int, attributes: Attributes) -> torch.Tensor:
    """Labels int ``[N, n_attributes]`` (column order = the table's) -> int64 tensor, range-checked."""
    y = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
    if y.shape != (n_clips, len(attributes)) or y.is_floating_point():
        raise ValueError(f"labels must be integers [{n_clips}, {len(attributes)}], got {y.dtype} {tuple(y.shape)}")
    for j, (name, values) in enumerate(attributes.items()):
        if y[:, j].min() < 0 or y[:, j].max() >= len(values):
            raise ValueError(f"labels for attribute {name!r} (column {j}) must be in [0, {len(values)})")
    return y.long()


def train_scorer(clips: np.ndarray, labels: np.ndarray, attributes: Attributes, sample_rate: int, cfg: ScorerConfig,
                 steps: int, batch_size: int, lr: float, log_fn: Callable[[int, dict], None] | None = None,
                 progress: bool = True) -> AttributeScorer:
    """Train the scorer on ``clips`` float32 ``[N, S]`` with ``labels`` int64 ``[N, n_attributes]`` (value index per
    attribute, in table order); loss is cross-entropy summed over attributes. Returns the model in eval mode.

    Each step draws ``batch_size`` clips (with replacement), a random ``cfg.crop_s`` crop of each (when set) and
    noise at a random SNR. ``log_fn(step, metrics)`` gets ``scorer/*`` metrics each step.
    """
    wav = as_clips(clips)
    y = _check_labels(labels, wav.shape[0], attributes)
    if sample_rate != cfg.sample_rate:
        wav = AF.resample(wav, sample_rate, cfg.sample_rate)
    N, S = wav.shape
    if S < cfg.min_samples:
        raise ValueError(f"clips of {S} samples at {cfg.sample_rate} Hz are shorter than the {cfg.min_samples} "
                         f"the scorer needs")
    crop = S if cfg.crop_s is None else min(S, round(cfg.crop_s * cfg.sample_rate))
    model = AttributeScorer(cfg, attributes).train()
    generator = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps))
    bar = tqdm(range(steps), desc="scorer", disable=not progress)
    for step in bar:
        idx = torch.randint(0, N, (batch_size,), generator=generator)
        starts = torch.randint(0, S - crop + 1, (batch_size,), generator=generator)
        x = wav[idx[:, None], starts[:, None] + torch.arange(crop)]  # [B, crop]
        logits = model(add_noise(x, generator, cfg.noise_snr_db))
        losses = {name: F.cross_entropy(logits[name], y[idx, j]) for j, name in enumerate(attributes)}
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        metrics = {"scorer/loss": loss.item(), "scorer/lr": sched.get_last_lr()[0]}
        metrics.update({f"scorer/loss_{name}": v.item() for name, v in losses.items()})
        if log_fn is not None:
            log_fn(step, metrics)
        bar.set_postfix(loss=f"{metrics['scorer/loss']:.3f}", refresh=False)
    return model.eval()


@torch.no_grad()
def scorer_accuracy(model: AttributeScorer, clips: np.ndarray, labels: np.ndarray, sample_rate: int,
                    batch_size: int = 64) -> dict[str, float]:
    """Per-attribute top-1 accuracy of ``model`` on whole ``clips [N, S]`` with ``labels [N, n_attributes]``."""
    wav = as_clips(clips)
    y = _check_labels(labels, wav.shape[0], model.attributes)
    correct = dict.fromkeys(model.attributes, 0)
    for lo in range(0, wav.shape[0], batch_size):
        probs = model.predict_proba(wav[lo:lo + batch_size], sample_rate)
        for j, name in enumerate(model.attributes):
            correct[name] += (probs[name].argmax(dim=-1).cpu() == y[lo:lo + batch_size, j]).sum().item()
    return {name: c / wav.shape[0] for name, c in correct.items()}


def attributes_above_chance(accuracy: dict[str, float], labels: np.ndarray, attributes: Attributes,
                            z: float = 3.0) -> tuple[list[str], dict[str, dict]]:
    """The attributes a scorer reads well above chance, and each attribute's figures.

    ``accuracy``: per-attribute top-1 accuracy on ``labels [N, n_attributes]`` (held-out clips). Chance is what
    always answering the most common value scores on those clips, ``c``; an attribute is kept when its accuracy is at
    least ``z`` binomial standard errors above it, ``c + z·sqrt(c(1 - c) / N)``. Returns ``(kept, report)`` with
    ``report[name] = {accuracy, chance, bar, kept}``."""
    y = np.asarray(labels)
    if y.ndim != 2 or y.shape[1] != len(attributes) or len(y) == 0:
        raise ValueError(f"labels: expected [N >= 1, {len(attributes)}], got {list(y.shape)}")
    kept, report = [], {}
    for j, name in enumerate(attributes):
        chance = float(np.bincount(y[:, j], minlength=len(attributes[name])).max() / len(y))
        bar = chance + z * float(np.sqrt(chance * (1 - chance) / len(y)))
        ok = bool(accuracy[name] >= bar) and chance < 1.0  # one value only: nothing to read
        report[name] = {"accuracy": round(float(accuracy[name]), 4), "chance": round(chance, 4),
                        "bar": round(bar, 4), "kept": ok}
        if ok:
            kept.append(name)
    return kept, report


def save_scorer(model: AttributeScorer, directory: str | os.PathLike) -> None:
    """Write ``model`` to ``directory`` (``model.safetensors`` + ``config.json`` with the attribute table)."""
    write_checkpoint(directory, model.state_dict(),
                     {"kind": "attribute_scorer", "config": dataclasses.asdict(model.cfg),
                      "attributes": {name: list(values) for name, values in model.attributes.items()}})


def load_scorer(directory: str | os.PathLike) -> AttributeScorer:
    """Read a model written by :func:`save_scorer`; returns it in eval mode on CPU."""
    state, meta, weights_path = read_checkpoint(directory, "attribute_scorer")
    config_path = os.path.join(os.fspath(directory), CONFIG_FILE)
    cfg = config_from_dict(ScorerConfig, meta.get("config", {}), config_path)
    attributes = meta.get("attributes")
    if not isinstance(attributes, dict):
        raise ValueError(f"{config_path} has no attribute table")
    model = AttributeScorer(cfg, {name: tuple(values) for name, values in attributes.items()})
    load_state(model, state, weights_path)
    return model.eval()
