"""Fitting the offline codec on this machine's CPU: k-means codebooks on encoder latents, then the decoder's fit
(a closed-form spectrogram regression, the spectral head, or a briefly trained SEANet decoder)."""
from __future__ import annotations

from dataclasses import asdict

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from divcfg.codec.offline import (
    CODEC_VERSION,
    Codec,
    OfflineCodecConfig,
    SpectralDecoder,
    build_offline_model,
    mel_loss,
)
from divcfg.codec.vocoder_head import fit_head


def kmeans(x: torch.Tensor, n_clusters: int, iters: int, generator: torch.Generator) -> torch.Tensor:
    """Plain k-means on ``x [M, D]`` -> centroids ``[n_clusters, D]``; empty clusters are re-seeded from the data."""
    m = x.shape[0]
    if m < n_clusters:
        raise ValueError(f"k-means needs at least {n_clusters} latent vectors, got {m}; give the fit more audio")
    centroids = x[torch.randperm(m, generator=generator)[:n_clusters]].clone()
    for _ in range(iters):
        assign = torch.cdist(x, centroids).argmin(1)
        counts = torch.bincount(assign, minlength=n_clusters).float()
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        empty = counts == 0
        centroids = torch.where(empty[:, None], centroids, sums / counts.clamp(min=1)[:, None])
        if empty.any():
            centroids[empty] = x[torch.randint(0, m, (int(empty.sum()),), generator=generator)]
    return centroids


@torch.no_grad()
def fit_codebooks(model, wavs: np.ndarray, n_vectors: int = 20000, iters: int = 20, seed: int = 0,
                  batch: int = 64) -> None:
    """Residual k-means of the RVQ codebooks on a subsample of encoder latents of ``wavs [N, samples]``."""
    g = torch.Generator().manual_seed(seed)
    latents = []
    for i in range(0, len(wavs), batch):
        emb = model.encoder(torch.as_tensor(wavs[i: i + batch], dtype=torch.float32)[:, None])  # [B, D, T]
        latents.append(emb.transpose(1, 2).reshape(-1, emb.shape[1]))
    x = torch.cat(latents)
    x = x[torch.randperm(len(x), generator=g)[:n_vectors]]
    residual = x
    for layer in model.quantizer.vq.layers:
        book = layer._codebook
        centroids = kmeans(residual, book.codebook_size, iters, g)
        book.embed.copy_(centroids)
        book.embed_avg.copy_(centroids)
        book.inited.fill_(1.0)
        residual = residual - centroids[torch.cdist(residual, centroids).argmin(1)]


def train_decoder(model, wavs: np.ndarray, steps: int, batch: int = 16, lr: float = 3e-3, seed: int = 0,
                  progress: bool = False) -> list[float]:
    """Train the decoder (encoder and codebooks frozen) to invert the quantized latents; returns the loss curve."""

    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.decoder.parameters(), lr=lr)
    model.decoder.train()
    losses = []
    for _ in tqdm(range(steps), desc="codec decoder", disable=not progress, leave=False):
        idx = torch.randint(0, len(wavs), (batch,), generator=g)
        x = torch.as_tensor(wavs[idx.numpy()], dtype=torch.float32)
        with torch.no_grad():
            q = model.quantizer.decode(model.quantizer.encode(model.encoder(x[:, None]), 1, None))
        y = model.decoder(q)[:, 0, : x.shape[1]]
        loss = mel_loss(y, x, model.sample_rate) + F.l1_loss(y, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.decoder.eval()
    return losses


@torch.no_grad()
def fit_spectral_decoder(model, wavs: np.ndarray, n_frames: int = 40000, ridge: float = 1.0, seed: int = 0,
                         batch: int = 64) -> None:
    """Least-squares fit of the :class:`SpectralDecoder` tables: one-hot codes -> log-magnitude of the source frame."""
    dec: SpectralDecoder = model.decoder
    k, card, n_bins = dec.tables.shape
    feats, targets = [], []
    for i in range(0, len(wavs), batch):
        x = torch.as_tensor(wavs[i: i + batch], dtype=torch.float32)
        codes = model.quantizer.encode(model.encoder(x[:, None]), 1, None).transpose(0, 1)  # [B, K, T]
        t = codes.shape[2]
        spec = torch.stft(x, dec.n_fft, dec.hop, window=dec.window, return_complex=True).abs()[:, :, :t]
        onehot = F.one_hot(codes + torch.arange(k)[None, :, None] * card, k * card).sum(1)  # [B, T, K*card]
        feats.append(onehot.reshape(-1, k * card).float())
        targets.append(torch.log(spec + 1e-5).transpose(1, 2).reshape(-1, n_bins))
    x, y = torch.cat(feats), torch.cat(targets)
    keep = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n_frames]
    x, y = x[keep], y[keep]
    mean = y.mean(0)
    gram = x.T @ x + ridge * torch.eye(k * card)
    w = torch.linalg.solve(gram, x.T @ (y - mean))
    dec.tables.copy_(w.view(k, card, n_bins))
    dec.bias.copy_(mean)


def fit_spectrogram_decoder(model, wavs: np.ndarray, head_steps: int = 0, seed: int = 0, batch: int = 64) -> None:
    """Fit the :class:`SpectrogramDecoder` on ``wavs [N, samples]``: from the latents the codes decode to (what it
    sees at decode time), to each clip's own log-magnitude; the ridge in closed form, then (with ``head_steps``) its
    learned head (:func:`~divcfg.codec.vocoder_head.fit_head`)."""
    with torch.no_grad():
        emb = torch.cat([model.quantizer.decode(model.quantizer.encode(
            model.encoder(torch.as_tensor(wavs[i: i + batch], dtype=torch.float32)[:, None]), 1, None))
            for i in range(0, len(wavs), batch)])
        model.decoder.fit((emb[i: i + batch], torch.as_tensor(wavs[i: i + batch], dtype=torch.float32))
                          for i in range(0, len(wavs), batch))
    if head_steps:
        fit_head(model.decoder, emb, wavs, head_steps, seed=seed)


def fit_offline_codec(wavs: np.ndarray, cfg: OfflineCodecConfig, n_vectors: int = 20000, kmeans_iters: int = 20,
                      decoder_steps: int = 0, progress: bool = False) -> Codec:
    """Build an offline codec: random SEANet encoder, k-means codebooks on ``wavs [N, samples]``, trained decoder."""
    model = build_offline_model(cfg)
    model.eval()
    fit_codebooks(model, wavs, n_vectors=n_vectors, iters=kmeans_iters, seed=cfg.seed)
    if cfg.encoder == "mel" and cfg.mel_decoder == "spectrogram":
        fit_spectrogram_decoder(model, wavs, cfg.head_steps, seed=cfg.seed)
    elif cfg.encoder == "mel":
        pass  # the pseudo-inverse mel decoder is fixed: nothing to fit
    elif cfg.decoder == "spectral":
        fit_spectral_decoder(model, wavs, seed=cfg.seed)
    elif decoder_steps:
        train_decoder(model, wavs, decoder_steps, seed=cfg.seed, progress=progress)
    return Codec(model, cfg.n_codebooks, "offline", {"offline": asdict(cfg), "codec_version": CODEC_VERSION})
