"""The audio codec: EnCodec (the ``encodec`` package), mono, in batches.

Two sources of weights:
- pretrained EnCodec 24 kHz at a chosen bandwidth, through the package's download or a local checkpoint directory;
- an *offline* codec: EnCodec's model and residual vector quantizer, whose codebooks are fitted by residual
  k-means on encoder latents of a corpus. By default the encoder is a log-mel analysis (``encoder="mel"``) and the
  decoder inverts it (pseudo-inverse filterbank, Griffin-Lim): a random SEANet encoder's codes were measured to
  carry little of the clip (log-magnitude predicted from them correlated 0.40 with the clip's own and 0.35 with
  other clips'), which left the world's judges deaf; the mel codes give 0.80 against 0.01. ``encoder="seanet"``
  keeps EnCodec's SEANet encoder. A random-init EnCodec has all-zero codebooks (every code would be 0), and
  the package's own k-means init builds an n×C×D tensor that runs out of memory on real corpora, so the fit below
  works on a subsample with ``torch.cdist``.
  With the SEANet encoder, the decoder: a random SEANet decoder maps every code grid to the same waveform, and training one takes far longer
  than a CPU build allows. So by default the offline codec decodes with a :class:`SpectralDecoder` fitted in closed
  form (codes -> log-magnitude spectrum by ridge regression, inverse STFT with a fixed phase): the decoded audio keeps
  the spectral content the codes carry, which is what the embedders and the scorer listen to. ``decoder="seanet"``
  keeps EnCodec's decoder and trains it (``decoder_steps``), for machines that can afford it.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from divcfg.common.checkpoint import load_weights, save_weights

# Bandwidth (kbps) -> number of codebooks K for EnCodec 24 kHz (75 frames/s, 1024 codes per codebook).
ENCODEC_24KHZ_BANDWIDTHS = {1.5: 2, 3.0: 4, 6.0: 8, 12.0: 16, 24.0: 32}
ENCODEC_24KHZ_FILE = "encodec_24khz-d7cc33bc.th"

# encodec 0.1.1 uses the old weight_norm API; the warning is the package's, not ours.
warnings.filterwarnings("ignore", message=".*weight_norm.*is deprecated", category=FutureWarning)


@dataclass
class OfflineCodecConfig:
    """Architecture of an offline (fitted) EnCodec codec."""

    sample_rate: int = 16000
    """Audio sample rate in Hz."""
    ratios: list[int] = field(default_factory=lambda: [8, 5, 4, 4])
    """SEANet downsampling ratios; their product is the hop length (640 samples = 25 frames/s at 16 kHz)."""
    n_filters: int = 8
    """SEANet base channel count (EnCodec uses 32; smaller makes offline encoding fast on CPU)."""
    dimension: int = 64
    """Latent dimension D of each frame."""
    lstm: int = 0
    """LSTM layers in SEANet (EnCodec uses 2)."""
    n_codebooks: int = 4
    """K residual codebooks."""
    card: int = 256
    """Codes per codebook."""
    encoder: str = "mel"
    """mel: the latent of a frame is its log-mel spectrum (a faithful analysis that needs no training); seanet:
    EnCodec's random-init SEANet encoder (its codes carry little of the clip: see the module docstring)."""
    decoder: str = "spectral"
    """With the seanet encoder: spectral (closed-form fit) or seanet (EnCodec's decoder, trained by gradient
    descent). The mel encoder always decodes by inverse mel and Griffin-Lim."""
    seed: int = 0
    """Seed of the random encoder weights and the k-means fit."""


class SpectralDecoder(torch.nn.Module):
    """Codes ``[B, K, T]`` -> waveform ``[B, 1, T * hop]``: per-codebook log-magnitude tables, summed, inverse STFT.

    ``tables [K, card, F]`` and ``bias [F]`` are fitted by :func:`fit_spectral_decoder`; the phase is a fixed random
    field, so decoding is deterministic.
    """

    def __init__(self, n_codebooks: int, card: int, hop: int, max_frames: int = 4096, seed: int = 0):
        super().__init__()
        self.hop, self.n_fft = hop, 2 * hop
        n_bins = self.n_fft // 2 + 1
        self.register_buffer("tables", torch.zeros(n_codebooks, card, n_bins))
        self.register_buffer("bias", torch.full((n_bins,), -8.0))
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("phase", torch.rand(n_bins, max_frames + 1, generator=g) * 2 * math.pi)
        self.register_buffer("window", torch.hann_window(self.n_fft))

    def log_magnitude(self, codes: torch.Tensor) -> torch.Tensor:
        """``[B, K, T]`` -> ``[B, F, T]``."""
        k = torch.arange(codes.shape[1], device=codes.device)[None, :, None]
        return (self.tables[k, codes].sum(1) + self.bias).transpose(1, 2)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        t = codes.shape[2]
        if t + 1 > self.phase.shape[1]:
            raise ValueError(f"cannot decode {t} frames; the spectral decoder covers {self.phase.shape[1] - 1}")
        mag = self.log_magnitude(codes).exp()
        mag = torch.cat([mag, mag[:, :, -1:]], dim=2)  # T codes -> T + 1 centred STFT frames
        spec = torch.polar(mag, self.phase[:, : t + 1].expand_as(mag))
        return torch.istft(spec, self.n_fft, self.hop, window=self.window, length=t * self.hop)[:, None]


class MelEncoder(torch.nn.Module):
    """Waveform ``[B, 1, N]`` -> log-mel latents ``[B, D, ceil(N / hop)]`` (D = n_mels), one per codec frame."""

    def __init__(self, sample_rate: int, hop: int, n_mels: int):
        super().__init__()
        import torchaudio.functional as AF
        self.ratios, self.dimension, self.hop, self.n_fft = [hop], n_mels, hop, 2 * hop
        self.register_buffer("window", torch.hann_window(self.n_fft))
        fb = AF.melscale_fbanks(self.n_fft // 2 + 1, 0.0, sample_rate / 2, n_mels, sample_rate)  # [F, D]
        self.register_buffer("fb", fb)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = math.ceil(x.shape[-1] / self.hop)
        spec = torch.stft(x[:, 0], self.n_fft, self.hop, window=self.window, return_complex=True).abs().pow(2)
        return torch.log(self.fb.T @ spec[:, :, :t] + 1e-6)


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

    # Phase starts at 1 (torchaudio's rand_init=False). magnitude · a / (|a| + ε) is computed as
    # a · (magnitude / (|a| + ε)): one real division and one complex product per iteration.
    spec = magnitude.to(torch.complex64 if magnitude.dtype == torch.float32 else torch.complex128)
    previous, alpha = None, momentum / (1 + momentum)  # torchaudio's parametrisation of the momentum
    for _ in range(n_iter):
        rebuilt = torch.stft(istft(spec), n_fft, hop, window=window, center=True, pad_mode="reflect",
                             return_complex=True)
        a = rebuilt if previous is None else torch.sub(rebuilt, previous, alpha=alpha)
        spec = a * (magnitude / a.abs().add_(1e-16))
        previous = rebuilt
    return istft(spec)


class MelDecoder(torch.nn.Module):
    """Log-mel latents ``[B, D, T]`` -> waveform ``[B, 1, T * hop]``: pseudo-inverse of the mel filterbank, then
    Griffin-Lim from a fixed (not random) initial phase, so decoding is deterministic."""

    def __init__(self, encoder: MelEncoder, n_iter: int = 16):
        super().__init__()
        import torchaudio.transforms as AT
        self.hop = encoder.hop
        self.register_buffer("fb_pinv", torch.linalg.pinv(encoder.fb.T))  # [F, D]
        # torchaudio's Griffin-Lim: its settings and window (a buffer saved in every codec checkpoint, so the name
        # stays) drive the fast griffin_lim below, and it is the slow reference the tests hold that to.
        self.griffin_lim = AT.GriffinLim(n_fft=encoder.n_fft, hop_length=encoder.hop, power=1.0, n_iter=n_iter,
                                         rand_init=False)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        t = emb.shape[-1]
        power = (self.fb_pinv @ emb.exp()).clamp(min=0.0)
        mag = torch.cat([power, power[:, :, -1:]], dim=2).sqrt()  # T frames -> T + 1 centred STFT frames
        gl = self.griffin_lim
        return griffin_lim(mag, gl.window, self.hop, gl.n_iter, gl.momentum)[:, None, : t * self.hop]


class Codec:
    """``encode(wav [B, N]) -> codes [B, K, T]`` and ``decode(codes) -> wav [B, N']``, mono, batched."""

    def __init__(self, model, n_codebooks: int, name: str, config: dict | None = None):
        self.model = model.eval()
        self.n_codebooks = n_codebooks
        self.name = name
        self.config = config or {}
        self.sample_rate: int = model.sample_rate
        self.card: int = model.quantizer.bins
        self.hop_length: int = int(np.prod(model.encoder.ratios))
        self.frame_rate: float = self.sample_rate / self.hop_length

    @property
    def device(self) -> torch.device:
        return next(self.model.buffers()).device  # every codec has buffers (codebooks); the mel one has no parameters

    def to(self, device) -> "Codec":
        self.model.to(device)
        return self

    def n_frames(self, n_samples: int) -> int:
        return math.ceil(n_samples / self.hop_length)

    @torch.inference_mode()
    def encode(self, wav: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Mono ``wav [B, N]`` float at ``self.sample_rate`` -> codes ``[B, K, T]`` long, ``T = ceil(N / hop)``."""
        wav = torch.as_tensor(wav, dtype=torch.float32, device=self.device)
        if wav.dim() != 2:
            raise ValueError(f"codec.encode expects mono audio [B, N], got shape {tuple(wav.shape)}")
        emb = self.model.encoder(wav[:, None])
        return self.model.quantizer.encode(emb, self.frame_rate, None)[: self.n_codebooks].transpose(0, 1)

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Codes ``[B, K, T]`` -> mono ``wav [B, T * hop]`` float."""
        codes = torch.as_tensor(np.asarray(codes) if not torch.is_tensor(codes) else codes, device=self.device).long()
        if codes.dim() != 3 or codes.shape[1] != self.n_codebooks:
            raise ValueError(f"codec.decode expects codes [B, K={self.n_codebooks}, T], got {tuple(codes.shape)}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.card):
            raise ValueError(f"codes outside [0, {self.card}) cannot be decoded: [{codes.min()}, {codes.max()}]")
        if isinstance(self.model.decoder, SpectralDecoder):
            return self.model.decoder(codes)[:, 0]
        emb = self.model.quantizer.decode(codes.transpose(0, 1))
        return self.model.decoder(emb)[:, 0]

    def save(self, dirpath: str | os.PathLike) -> Path:
        return save_weights(dirpath, "codec", self.model.state_dict(),
                            {"name": self.name, "n_codebooks": self.n_codebooks, **self.config})


# ---- pretrained EnCodec ---------------------------------------------------------------------------------------------
def pretrained_encodec(bandwidth: float = 6.0, repository: str | os.PathLike | None = None) -> Codec:
    """EnCodec 24 kHz at ``bandwidth`` kbps (K = 2, 4, 8, 16 or 32 codebooks).

    With ``repository`` (a local directory, for clusters without internet) the weights come from
    ``repository/encodec_24khz-d7cc33bc.th`` (checksum verified by the package), or from the single
    ``encodec_24khz*.th`` file there (loaded with ``weights_only=True``; no checksum can be verified).
    """
    from encodec import EncodecModel

    if bandwidth not in ENCODEC_24KHZ_BANDWIDTHS:
        raise ValueError(f"codec.bandwidth={bandwidth} is not one of EnCodec 24 kHz's {sorted(ENCODEC_24KHZ_BANDWIDTHS)}")
    if repository is None:
        try:
            model = EncodecModel.encodec_model_24khz(pretrained=True)
        except Exception as e:  # urllib/HTTP/SSL errors all mean the same thing to the user
            raise RuntimeError(
                f"could not download pretrained EnCodec 24 kHz ({type(e).__name__}: {e}). On a machine without "
                f"internet, download https://dl.fbaipublicfiles.com/encodec/v0/{ENCODEC_24KHZ_FILE} elsewhere, copy "
                f"it into a directory, and pass that directory as codec.repository=DIR") from None
    else:
        repo = Path(repository)
        if not repo.is_dir():
            raise FileNotFoundError(f"codec.repository={repo} is not a directory; it must hold {ENCODEC_24KHZ_FILE}")
        if (repo / ENCODEC_24KHZ_FILE).is_file():
            model = EncodecModel.encodec_model_24khz(pretrained=True, repository=repo)
        else:
            found = sorted(repo.glob("encodec_24khz*.th"))
            if len(found) != 1:
                raise FileNotFoundError(f"codec.repository={repo} holds {len(found)} encodec_24khz*.th files "
                                        f"({[f.name for f in found]}); put exactly one there, ideally {ENCODEC_24KHZ_FILE}")
            model = EncodecModel.encodec_model_24khz(pretrained=False)
            try:
                state = torch.load(found[0], map_location="cpu", weights_only=True)
                model.load_state_dict(state)
            except Exception as e:
                raise ValueError(f"EnCodec checkpoint {found[0]} is corrupt or not an EnCodec 24 kHz state dict: {e}") from None
    model.set_target_bandwidth(bandwidth)
    return Codec(model, ENCODEC_24KHZ_BANDWIDTHS[bandwidth], f"encodec_24khz@{bandwidth}kbps",
                 {"bandwidth": bandwidth, "pretrained": True})


# ---- offline codec --------------------------------------------------------------------------------------------------
def build_offline_model(cfg: OfflineCodecConfig):
    """An EnCodec-architecture model with random weights (codebooks still to be fitted)."""
    from encodec import EncodecModel
    from encodec.modules import SEANetDecoder, SEANetEncoder
    from encodec.quantization import ResidualVectorQuantizer

    torch.manual_seed(cfg.seed)
    kw = dict(channels=1, dimension=cfg.dimension, n_filters=cfg.n_filters, ratios=list(cfg.ratios), lstm=cfg.lstm,
              causal=False, norm="weight_norm")
    if cfg.decoder not in ("spectral", "seanet"):
        raise ValueError(f"codec decoder must be spectral or seanet, got {cfg.decoder!r}")
    if cfg.encoder not in ("mel", "seanet"):
        raise ValueError(f"codec encoder must be mel or seanet, got {cfg.encoder!r}")
    hop = int(np.prod(cfg.ratios))
    if cfg.encoder == "mel":
        encoder = MelEncoder(cfg.sample_rate, hop, cfg.dimension)
        decoder = MelDecoder(encoder)
    else:
        encoder = SEANetEncoder(**kw)
        decoder = (SpectralDecoder(cfg.n_codebooks, cfg.card, hop, seed=cfg.seed) if cfg.decoder == "spectral"
                   else SEANetDecoder(**kw))
    quantizer = ResidualVectorQuantizer(dimension=cfg.dimension, n_q=cfg.n_codebooks, bins=cfg.card, kmeans_init=True)
    frame_rate = cfg.sample_rate / np.prod(cfg.ratios)
    bandwidth = cfg.n_codebooks * math.log2(cfg.card) * frame_rate / 1000
    return EncodecModel(encoder, decoder, quantizer, [bandwidth], cfg.sample_rate, 1, name="divcfg_offline")


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


def mel_loss(pred: torch.Tensor, target: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """Multi-resolution log-magnitude STFT distance, the usual codec reconstruction loss."""
    loss = pred.new_zeros(())
    for n_fft in (256, 512, 1024):
        window = torch.hann_window(n_fft, device=pred.device)
        sp = torch.stft(pred, n_fft, n_fft // 4, window=window, return_complex=True).abs()
        st = torch.stft(target, n_fft, n_fft // 4, window=window, return_complex=True).abs()
        loss = loss + F.l1_loss(torch.log(sp + 1e-5), torch.log(st + 1e-5)) + F.l1_loss(sp, st)
    return loss


def train_decoder(model, wavs: np.ndarray, steps: int, batch: int = 16, lr: float = 3e-3, seed: int = 0,
                  progress: bool = False) -> list[float]:
    """Train the decoder (encoder and codebooks frozen) to invert the quantized latents; returns the loss curve."""
    from tqdm import tqdm

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


def fit_offline_codec(wavs: np.ndarray, cfg: OfflineCodecConfig, n_vectors: int = 20000, kmeans_iters: int = 20,
                      decoder_steps: int = 0, progress: bool = False) -> Codec:
    """Build an offline codec: random SEANet encoder, k-means codebooks on ``wavs [N, samples]``, trained decoder."""
    model = build_offline_model(cfg)
    model.eval()
    fit_codebooks(model, wavs, n_vectors=n_vectors, iters=kmeans_iters, seed=cfg.seed)
    if cfg.encoder == "mel":
        pass  # the mel decoder is fixed: nothing to fit
    elif cfg.decoder == "spectral":
        fit_spectral_decoder(model, wavs, seed=cfg.seed)
    elif decoder_steps:
        train_decoder(model, wavs, decoder_steps, seed=cfg.seed, progress=progress)
    return Codec(model, cfg.n_codebooks, "offline", {"offline": asdict(cfg)})


def load_codec(dirpath: str | os.PathLike) -> Codec:
    """A codec saved by :meth:`Codec.save` (offline) or a pointer to pretrained EnCodec."""
    state, config, _ = load_weights(dirpath, "codec")
    if "offline" in config:
        cfg = OfflineCodecConfig(**config["offline"])
        model = build_offline_model(cfg)
        model.load_state_dict(state)
        return Codec(model, cfg.n_codebooks, "offline", {"offline": asdict(cfg)})
    from encodec import EncodecModel
    model = EncodecModel.encodec_model_24khz(pretrained=False)
    model.load_state_dict(state)
    model.set_target_bandwidth(config["bandwidth"])
    return Codec(model, config["n_codebooks"], config["name"], {"bandwidth": config["bandwidth"], "pretrained": True})


def reconstruction_metrics(codec: Codec, wavs: np.ndarray) -> dict[str, float]:
    """SNR (dB) and multi-resolution STFT distance of ``decode(encode(x))`` against ``x [N, samples]``."""
    x = torch.as_tensor(wavs, dtype=torch.float32)
    y = codec.decode(codec.encode(x))[:, : x.shape[1]]
    noise = (y - x).pow(2).sum(1)
    snr = 10 * torch.log10(x.pow(2).sum(1) / noise.clamp(min=1e-12))
    with torch.no_grad():
        stft = mel_loss(y, x, codec.sample_rate)
    return {"snr_db": float(snr.mean()), "stft_distance": float(stft)}
