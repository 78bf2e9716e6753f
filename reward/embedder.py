"""The music embedding model E: a compact ViT over log-mel patches, trained contrastively (the diversity reward).

Positive pairs are non-overlapping fixed-length chunks of the same clip, negatives are chunks of other clips in the
batch (symmetric InfoNCE). Training views are augmented with noise, tempo and pitch shifts. ``E.embed`` gives the
unit-norm embeddings behind ``r_i = mean_{j≠i} (1 − cos(E(y_i), E(y_j)))`` and the evaluation diversity metric.

Shapes: B clips, N samples, M mel bins, F frames, D model width, E embedding size.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchaudio.functional as AF
import torchaudio.transforms as AT
from tqdm import tqdm

from divcfg.common.storage.checkpoint import CONFIG as CONFIG_FILE
from divcfg.common.storage.checkpoint import WEIGHTS as WEIGHTS_FILE
from divcfg.common.storage.checkpoint import CheckpointError, load_weights, save_weights, verify_checkpoint

# The training views (reward/views.py), importable from here with the model they train.
from divcfg.reward.views import add_noise, as_clips, pitch_shift, random_chunk_pairs, tempo_shift


@dataclass
class EmbedderConfig:
    sample_rate: int = 16000
    """Rate (Hz) the model hears; other rates are resampled on entry. 16 kHz as in the paper."""
    n_mels: int = 64
    """Mel bands of the log-mel input."""
    n_fft: int = 1024
    """STFT size: 64 ms at 16 kHz, fine enough that the lowest mel bands are not empty."""
    hop_length: int = 256
    """STFT hop in samples (16 ms at 16 kHz)."""
    chunk_s: float = 1.0
    """Chunk length in seconds: the training view, and the window ``embed`` averages over for longer clips."""
    patch: tuple[int, int] = (16, 8)
    """ViT patch size as (mel bins, frames); n_mels must be a multiple of the first. 4 x 8 patches per 1 s."""
    dim: int = 128
    """Transformer width D."""
    depth: int = 4
    """Number of transformer blocks."""
    heads: int = 4
    """Attention heads; must divide dim."""
    mlp_ratio: float = 4.0
    """MLP hidden width as a multiple of dim."""
    embed_dim: int = 64
    """Size E of the projected, unit-norm embedding."""
    temperature: float = 0.1
    """InfoNCE temperature on cosine similarities."""
    noise_snr_db: tuple[float, float] = (10.0, 40.0)
    """Training augmentation: additive white noise at an SNR (dB) drawn uniformly from this range."""
    tempo_max_change: float = 0.1
    """Training augmentation: tempo stretched by a factor drawn uniformly from 1 ± this."""
    pitch_max_bins: int = 2
    """Training augmentation: mel shifted by an integer number of bins drawn uniformly from ± this."""
    seed: int = 0
    """Seeds the initial weights and the training stream; two seeds give two independent models."""

    def __post_init__(self) -> None:
        for name in ("sample_rate", "n_mels", "n_fft", "hop_length", "dim", "depth", "heads", "embed_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"EmbedderConfig.{name} must be positive, got {getattr(self, name)}")
        for name in ("chunk_s", "mlp_ratio", "temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"EmbedderConfig.{name} must be positive, got {getattr(self, name)}")
        if len(self.patch) != 2 or min(self.patch) <= 0 or self.n_mels % self.patch[0]:
            raise ValueError(f"EmbedderConfig.patch {self.patch} must be two positive sizes (mel bins, frames) "
                             f"with n_mels={self.n_mels} a multiple of the first")
        if self.dim % self.heads:
            raise ValueError(f"EmbedderConfig.heads={self.heads} must divide dim={self.dim}")
        if self.chunk_samples < self.n_fft:
            raise ValueError(f"EmbedderConfig.chunk_s={self.chunk_s} is shorter than one STFT window "
                             f"(n_fft={self.n_fft} samples)")
        if not 0 <= self.tempo_max_change < 1:
            raise ValueError(f"EmbedderConfig.tempo_max_change must be in [0, 1), got {self.tempo_max_change}")
        if self.pitch_max_bins < 0 or self.noise_snr_db[0] > self.noise_snr_db[1]:
            raise ValueError(f"EmbedderConfig.pitch_max_bins ({self.pitch_max_bins}) must be >= 0 and "
                             f"noise_snr_db {self.noise_snr_db} a (low, high) range")

    @property
    def chunk_samples(self) -> int:
        return round(self.chunk_s * self.sample_rate)

    @property
    def clip_samples(self) -> int:
        """The clip a training view and recall@1 are drawn from: two non-overlapping chunks (random_chunk_pairs)."""
        return 2 * self.chunk_samples

    @property
    def chunk_frames(self) -> int:
        # MelSpectrogram centres its frames, so N samples give N // hop + 1 frames.
        return self.chunk_samples // self.hop_length + 1


_PRESETS: dict[str, dict] = {
    # Tests: trains in seconds on one CPU thread. One bin of 32 mels spans what two of 64 do.
    "tiny": dict(n_mels=32, chunk_s=0.5, patch=(8, 8), dim=32, depth=2, heads=2, embed_dim=32, pitch_max_bins=1),
    # The offline world's default (the field defaults): a few minutes on 2 CPU cores.
    "small": dict(),
    # The paper's size: 12 layers, 6 heads, about 21M parameters.
    "full": dict(dim=384, depth=12, heads=6, embed_dim=128),
}


def embedder_config(size: str, **overrides) -> EmbedderConfig:
    """The preset ``size`` ("tiny", "small", "full") with ``overrides`` applied to its fields."""
    if size not in _PRESETS:
        raise ValueError(f"unknown embedder preset {size!r}; known presets: {sorted(_PRESETS)}")
    return config_from_dict(EmbedderConfig, {**_PRESETS[size], **overrides}, f"embedder preset {size!r}")


def config_from_dict(cls, values: dict, source: str):
    """Build the dataclass ``cls`` from ``values`` (JSON lists become tuples); unknown keys name ``source``."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{source}: unknown {cls.__name__} fields {unknown}; known fields: {sorted(known)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


class LogMel(nn.Module):
    """Waveform ``[B, N]`` -> log-mel ``[B, n_mels, F]`` with ``F = N // hop_length + 1``.

    ``per_clip_norm`` standardises each clip over all its bins and frames, which makes the output blind to gain: the
    embedder wants that (a policy must not earn diversity by changing loudness); a scorer that must hear loudness
    turns it off and normalises with learned statistics instead.
    """

    def __init__(self, sample_rate: int, n_fft: int, hop_length: int, n_mels: int, per_clip_norm: bool,
                 eps: float = 1e-5):
        super().__init__()
        self.mel = AT.MelSpectrogram(sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels,
                                     power=2.0)
        self.per_clip_norm = per_clip_norm
        self.eps = eps

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        if wav.dim() != 2:
            raise ValueError(f"LogMel expects a waveform [B, N], got shape {tuple(wav.shape)}")
        x = torch.log(self.mel(wav) + self.eps)  # [B, M, F]
        if self.per_clip_norm:
            mean = x.mean(dim=(1, 2), keepdim=True)
            std = x.std(dim=(1, 2), keepdim=True)
            x = (x - mean) / (std + 1e-5)
        return x


class _Block(nn.Module):
    """Pre-LN transformer block: ``[B, T, D] -> [B, T, D]``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v)  # [B, H, T, D/H]
        x = x + self.out(a.transpose(1, 2).reshape(B, T, D))
        return x + self.mlp(self.ln2(x))


class MusicEmbedder(nn.Module):
    """Compact ViT over log-mel patches, mean-pooled and projected to a unit-norm embedding ``[B, E]``.

    Construction is seeded by ``cfg.seed`` (without touching the global RNG), so equal configs give equal weights.
    """

    def __init__(self, cfg: EmbedderConfig):
        super().__init__()
        self.cfg = cfg
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.logmel = LogMel(cfg.sample_rate, cfg.n_fft, cfg.hop_length, cfg.n_mels, per_clip_norm=True)
            pm, pt = cfg.patch
            self.patch_embed = nn.Conv2d(1, cfg.dim, kernel_size=(pm, pt), stride=(pm, pt))
            # Positions for one training chunk as a (mel patches, time patches) grid; other lengths interpolate.
            self.pos = nn.Parameter(torch.zeros(1, cfg.dim, cfg.n_mels // pm, math.ceil(cfg.chunk_frames / pt)))
            nn.init.trunc_normal_(self.pos, std=0.02)
            self.blocks = nn.ModuleList(_Block(cfg.dim, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
            self.norm = nn.LayerNorm(cfg.dim)
            self.proj = nn.Linear(cfg.dim, cfg.embed_dim)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """Log-mel ``[B, n_mels, F]`` (any F >= 2) -> unit-norm embeddings ``[B, E]``."""
        if mel.dim() != 3 or mel.shape[1] != self.cfg.n_mels or mel.shape[2] < 2:
            raise ValueError(f"MusicEmbedder expects a log-mel [B, {self.cfg.n_mels}, F>=2], got {tuple(mel.shape)}")
        pt = self.cfg.patch[1]
        x = F.pad(mel, (0, (-mel.shape[2]) % pt))  # zero = the clip's mean level after per-clip normalisation
        x = self.patch_embed(x.unsqueeze(1))  # [B, D, M/pm, ceil(F/pt)]
        pos = self.pos
        if pos.shape[-1] != x.shape[-1]:
            pos = F.interpolate(pos, size=x.shape[-2:], mode="bilinear", align_corners=False)
        x = (x + pos).flatten(2).transpose(1, 2)  # [B, T, D]
        for block in self.blocks:
            x = block(x)
        return F.normalize(self.proj(self.norm(x).mean(dim=1)), dim=-1)

    @torch.no_grad()
    def embed(self, wav: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """Waveform ``[B, N]`` float at ``sample_rate`` -> unit-norm embeddings ``[B, E]``.

        A clip longer than one chunk is cut into chunks that cover it (the last one aligned to the clip's end);
        the chunk embeddings are averaged and renormalised, so the model only ever sees the length it trained on.
        No gradients: E is a reward and a metric, never differentiated.
        """
        if wav.dim() != 2 or not wav.is_floating_point():
            raise ValueError(f"embed expects a float waveform [B, N], got {wav.dtype} {tuple(wav.shape)}")
        wav = wav.to(self.pos.device, torch.float32)
        if sample_rate != self.cfg.sample_rate:
            wav = AF.resample(wav, sample_rate, self.cfg.sample_rate)
        B, N = wav.shape
        c = self.cfg.chunk_samples
        if N < c:
            raise ValueError(f"embed needs clips of at least one chunk ({self.cfg.chunk_s} s = {c} samples at "
                             f"{self.cfg.sample_rate} Hz), got {N} samples after resampling")
        n = math.ceil(N / c)
        starts = torch.linspace(0, N - c, n, device=wav.device).round().long()
        chunks = wav[:, starts[:, None] + torch.arange(c, device=wav.device)]  # [B, n, c]
        e = self(self.logmel(chunks.reshape(B * n, c)))  # [B*n, E]
        return F.normalize(e.view(B, n, -1).mean(dim=1), dim=-1)


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Symmetric InfoNCE over cosine similarities. Row i of ``a [B, E]`` and ``b [B, E]`` is a positive pair; every
    other row of the other side is a negative.

    ``loss = (CE(a·bᵀ/τ, i) + CE(b·aᵀ/τ, i)) / 2``, averaged over rows. Metrics: ``loss``, ``accuracy`` (a -> b
    top-1), ``pos_cos`` and ``neg_cos`` (mean positive and negative cosine).
    """
    if a.dim() != 2 or a.shape != b.shape or a.shape[0] < 2:
        raise ValueError(f"info_nce expects two [B>=2, E] tensors of one shape, got {tuple(a.shape)}, "
                         f"{tuple(b.shape)}")
    sim = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T  # [B, B] cosines
    target = torch.arange(a.shape[0], device=a.device)
    logits = sim / temperature
    loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    with torch.no_grad():
        B = a.shape[0]
        eye = torch.eye(B, dtype=torch.bool, device=a.device)
        metrics = {
            "loss": loss.item(),
            "accuracy": (sim.argmax(dim=1) == target).float().mean().item(),
            "pos_cos": sim.diagonal().mean().item(),
            "neg_cos": sim[~eye].mean().item(),
        }
    return loss, metrics


def warmup_cosine(steps: int, warmup_frac: float = 0.1) -> Callable[[int], float]:
    """LR multiplier for step s: linear warm-up over ``warmup_frac`` of ``steps``, then cosine decay to 0."""
    warmup = max(1, round(warmup_frac * steps))

    def factor(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, steps - warmup)))
    return factor


def train_embedder(clips: np.ndarray, sample_rate: int, cfg: EmbedderConfig, steps: int, batch_size: int,
                   lr: float, log_fn: Callable[[int, dict], None] | None = None,
                   progress: bool = True) -> MusicEmbedder:
    """Train E contrastively on ``clips`` float32 ``[N, S]`` at ``sample_rate``; returns the model in eval mode.

    Each step draws ``batch_size`` distinct clips, two non-overlapping chunks of each, augments both views
    independently, and minimises symmetric InfoNCE. ``log_fn(step, metrics)`` gets ``embedder/*`` metrics each step.
    """
    wav = as_clips(clips)
    if sample_rate != cfg.sample_rate:
        wav = AF.resample(wav, sample_rate, cfg.sample_rate)
    N = wav.shape[0]
    if not 2 <= batch_size <= N:
        raise ValueError(f"batch_size={batch_size} must be in [2, number of clips = {N}]: "
                         f"the other clips of a batch are the negatives")
    model = MusicEmbedder(cfg).train()
    generator = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps))
    bar = tqdm(range(steps), desc="embedder", disable=not progress)
    for step in bar:
        idx = torch.randperm(N, generator=generator)[:batch_size]
        a, b = random_chunk_pairs(wav[idx], cfg.chunk_samples, generator)
        views = add_noise(torch.cat([a, b]), generator, cfg.noise_snr_db)
        mel = pitch_shift(tempo_shift(model.logmel(views), generator, cfg.tempo_max_change), generator,
                          cfg.pitch_max_bins)
        ea, eb = model(mel).split(batch_size)
        loss, metrics = info_nce(ea, eb, cfg.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        metrics = {f"embedder/{k}": v for k, v in metrics.items()}
        metrics["embedder/grad_norm"] = grad_norm.item()
        metrics["embedder/lr"] = sched.get_last_lr()[0]
        if log_fn is not None:
            log_fn(step, metrics)
        bar.set_postfix(loss=f"{metrics['embedder/loss']:.3f}", acc=f"{metrics['embedder/accuracy']:.2f}",
                        refresh=False)
    return model.eval()


@torch.no_grad()
def recall_at_1(model: MusicEmbedder, clips: np.ndarray | torch.Tensor, sample_rate: int, chunk_samples: int,
                generator: torch.Generator) -> float:
    """Retrieval score on held-out ``clips [N, S]`` at ``sample_rate``: two non-overlapping chunks of
    ``chunk_samples`` per clip; over all 2N chunks, the fraction whose nearest other chunk (cosine) comes from the
    same clip. Chance is ``1 / (2N - 1)``."""
    wav = as_clips(clips)
    if wav.shape[0] < 2:
        raise ValueError(f"recall_at_1 needs at least 2 clips, got {wav.shape[0]}")
    a, b = random_chunk_pairs(wav, chunk_samples, generator)
    e = model.embed(torch.cat([a, b]), sample_rate)  # [2N, E]
    sim = e @ e.T
    sim.fill_diagonal_(-math.inf)
    owner = torch.arange(wav.shape[0], device=e.device).repeat(2)
    return (owner[sim.argmax(dim=1)] == owner).float().mean().item()


def write_checkpoint(directory: str | os.PathLike, state_dict: dict[str, torch.Tensor], meta: dict) -> None:
    """Save ``state_dict`` and ``meta`` (which names its ``kind``) as a checkpoint directory, atomically."""
    save_weights(directory, meta["kind"], state_dict, meta)


def read_checkpoint(directory: str | os.PathLike, kind: str) -> tuple[dict[str, torch.Tensor], dict, str]:
    """Read a checkpoint of ``kind`` -> ``(state_dict, meta, weights_path)``; every failure names the path."""
    state, meta, _ = load_weights(directory, kind)
    return state, meta, os.path.join(os.fspath(directory), WEIGHTS_FILE)


def load_state(model: nn.Module, state: dict[str, torch.Tensor], weights_path: str) -> None:
    """``model.load_state_dict(state)`` with a mismatch reported as a ValueError naming ``weights_path``."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"weights file {weights_path} does not match its config: {e}") from e


# The checkpoint kind save_embedder writes in config.json, and the one load_embedder and check_embedder_dir accept.
EMBEDDER_KIND = "music_embedder"


def save_embedder(model: MusicEmbedder, directory: str | os.PathLike) -> None:
    """Write ``model`` to ``directory`` (``model.safetensors`` + ``config.json``)."""
    write_checkpoint(directory, model.state_dict(),
                     {"kind": EMBEDDER_KIND, "config": dataclasses.asdict(model.cfg)})


def check_embedder_dir(directory: str | os.PathLike) -> None:
    """Raise a ValueError naming ``directory`` and saying what it is, unless it holds an embedder written by
    :func:`save_embedder`: a complete checkpoint of kind ``music_embedder``. Reads the config, not the weights."""
    path = Path(directory)
    if (path / "embedder_reward").is_dir() or (path / "embedder_eval").is_dir():
        raise CheckpointError(f"{path} is a divcfg world directory, not an embedder: its embedders are "
                              f"{path / 'embedder_reward'} and {path / 'embedder_eval'}")
    verify_checkpoint(path, hashes=False)  # missing, a file, not a checkpoint (and what it is instead), incomplete
    try:
        kind = json.loads((path / CONFIG_FILE).read_text()).get("kind")
    except (OSError, ValueError, AttributeError) as e:
        raise CheckpointError(f"checkpoint {path}: {CONFIG_FILE} is not a readable JSON object ({e})") from None
    if kind != EMBEDDER_KIND:
        raise CheckpointError(f"{path} holds a {kind!r} checkpoint, not a music embedder (kind {EMBEDDER_KIND!r}, "
                              f"what divcfg embedder train --out DIR writes)")


def load_embedder(directory: str | os.PathLike) -> MusicEmbedder:
    """Read a model written by :func:`save_embedder`; returns it in eval mode on CPU."""
    state, meta, weights_path = read_checkpoint(directory, EMBEDDER_KIND)
    cfg = config_from_dict(EmbedderConfig, meta.get("config", {}), os.path.join(os.fspath(directory), CONFIG_FILE))
    model = MusicEmbedder(cfg)
    load_state(model, state, weights_path)
    return model.eval()
