"""Hugging Face MusicGen behind the policy interface the roles use, and its own EnCodec behind the codec interface.

:class:`MusicGenPolicy` wraps the parts of ``transformers``' ``MusicgenForConditionalGeneration`` that make codes
(the frozen T5 text encoder, the optional text-to-decoder projection, the decoder with its K output heads) and exposes
what :class:`divcfg.common.policy.AudioTokenPolicy` exposes: ``encode_condition``, ``null_condition``,
``drop_condition``, ``with_null``, ``logits``, ``guided_logits`` and a KV-cached ``generate``. Codes go in and come out
un-delayed, ``[B, K, T]``; the delay pattern is MusicGen's, applied by :func:`divcfg.common.delay.delay` (a test
checks it against transformers' ``build_delay_pattern_mask``, which leaves sequences of fewer than 2K - 1 columns
undelayed, so it can't serve short clips). :class:`MusicGenCodec` wraps the same model's EnCodec as a
:class:`divcfg.common.codec.Codec`. So rollout actors, reward workers and the learner need not know which model they
hold.

The unconditional branch is MusicGen's own: all-zero encoder states with an all-False attention mask, which is what
transformers' ``generate(guidance_scale=...)`` and ``get_unconditional_inputs`` build.

transformers is an optional extra (``pip install divcfg[musicgen]``); this module imports it only inside functions.

Shapes: B batch, K codebooks, T frames, S = T + K - 1 delayed columns, V codes per codebook (``card``), D decoder
width, L text tokens.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn as nn

from divcfg.common.cfg import cfg_mix, sample_tokens
from divcfg.common.delay import delay, delay_valid_mask, delayed_length, undelay
from divcfg.common.policy import CachedSampler, Condition, GenerationOutput, PromptTooLongError

if TYPE_CHECKING:
    from transformers import MusicgenConfig, MusicgenForConditionalGeneration

TINY = "tiny-random"
"""The ``model.musicgen`` value that builds :func:`tiny_musicgen` in code (random weights, no download)."""


class MusicGenLoadError(OSError):
    """A MusicGen checkpoint that can't be loaded (offline, missing files); the message says how to get it."""


class UnsupportedMusicGenError(ValueError):
    """A MusicGen variant the adapter does not support (stereo, melody, an unexpected token layout)."""


class CodecMismatchError(ValueError):
    """A codec whose sample rate, frame rate or code grid differs from what the model was trained on."""


# ---- configs and loading --------------------------------------------------------------------------------------------
@dataclass
class MusicGenPolicyConfig:
    """What the roles read from ``policy.cfg``; everything except ``train_layers`` and ``text_max_len`` comes from the
    checkpoint's ``MusicgenConfig``."""

    name: str
    """Hub id, local directory, or :data:`TINY`."""
    n_codebooks: int
    """K: codebooks per frame (``decoder.num_codebooks``)."""
    card: int
    """V: codes per codebook (``decoder.vocab_size``). Index V is MusicGen's BOS / delay padding token."""
    dim: int
    """D: decoder width, also the width of the encoded condition."""
    n_layers: int
    """Decoder layers."""
    n_heads: int
    """Decoder attention heads."""
    max_frames: int
    """Longest audio in frames: the delayed sequence must fit ``decoder.max_position_embeddings``."""
    text_max_len: int
    """Longest prompt in text-encoder tokens, EOS included."""
    train_layers: int
    """Train only the last N decoder layers (plus the final norm and the output heads); 0 trains the whole decoder."""


def check_supported(config, name: str = "the model") -> None:
    """Refuse MusicGen variants the adapter can't run faithfully; ``config`` is the checkpoint's top-level config."""
    model_type = getattr(config, "model_type", None)
    if model_type == "musicgen_melody":
        raise UnsupportedMusicGenError(
            f"{name} is a MusicGen-Melody checkpoint (model_type 'musicgen_melody'): its chroma (melody) conditioning "
            f"is not supported. Use a text-only checkpoint: facebook/musicgen-small, -medium or -large")
    if model_type != "musicgen":
        raise UnsupportedMusicGenError(f"{name} has model_type {model_type!r}; the MusicGen adapter needs 'musicgen'")
    if config.decoder.audio_channels != 1:
        raise UnsupportedMusicGenError(
            f"{name} is a stereo MusicGen (decoder.audio_channels={config.decoder.audio_channels}: left and right "
            f"codebooks interleaved): divcfg's codecs, rewards and delay pattern are mono. Use a mono checkpoint "
            f"such as facebook/musicgen-small")
    d = config.decoder
    if not d.pad_token_id == d.bos_token_id == d.vocab_size:
        raise UnsupportedMusicGenError(
            f"{name}: expected MusicGen's token layout pad_token_id == bos_token_id == vocab_size, got "
            f"{d.pad_token_id}, {d.bos_token_id}, {d.vocab_size}")


def load_musicgen(name_or_path: str, *, local_files_only: bool = False):
    """``(MusicgenForConditionalGeneration, T5 tokenizer)`` through transformers' ``from_pretrained``.

    ``name_or_path`` is a Hub id (downloaded once into the Hugging Face cache) or a local directory holding what
    ``hf download`` or ``save_pretrained`` writes. With ``local_files_only`` (or ``HF_HUB_OFFLINE=1``)
    nothing is fetched. The decoder's dropout is set to 0: the learner's importance weights compare its train-mode
    log-probs with the actors' eval-mode ones, and dropout would make them disagree.
    """
    from transformers import AutoConfig, AutoTokenizer, MusicgenForConditionalGeneration

    # transformers reads an existing directory as local and anything else as a Hub id ("org/name"); a name that can
    # only be a path gets a plain "no such directory" rather than the Hub's repo-id syntax error.
    if Path(name_or_path).expanduser().is_dir():
        name_or_path = str(Path(name_or_path).expanduser())
    elif name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise MusicGenLoadError(f"model.musicgen={name_or_path}: no such directory. Point it at a directory written by "
                                f"`hf download facebook/musicgen-small --local-dir DIR`, or at a Hub id")
    try:
        config = AutoConfig.from_pretrained(name_or_path, local_files_only=local_files_only)
        check_supported(config, name_or_path)
        config.decoder.dropout = 0.0
        config.decoder.attention_dropout = 0.0
        config.decoder.activation_dropout = 0.0
        config.decoder.layerdrop = 0.0
        model = MusicgenForConditionalGeneration.from_pretrained(name_or_path, config=config,
                                                                 local_files_only=local_files_only)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, local_files_only=local_files_only)
    except OSError as e:  # transformers reports missing files, bad ids and no network all as OSError
        raise MusicGenLoadError(
            f"could not load MusicGen {name_or_path!r} ({type(e).__name__}: {e}). On a machine with internet, run "
            f"`hf download {name_or_path}` (it fills the Hugging Face cache, HF_HOME) or "
            f"`hf download {name_or_path} --local-dir DIR` and set model.musicgen=DIR; then "
            f"HF_HUB_OFFLINE=1 or model.local_files_only=true runs without network") from None
    return model, tokenizer


def tiny_musicgen_config(n_codebooks: int = 4, card: int = 64, dim: int = 32, n_layers: int = 2,
                         sample_rate: int = 8000, init_std: float = 0.4) -> "MusicgenConfig":
    """A tiny MusicGen built in code, for tests: decoder ``dim`` × ``n_layers``, a one-layer T5 of width 16 (so the
    text-to-decoder projection is exercised) whose vocabulary is the :class:`ByteTokenizer` layout, and a small EnCodec
    (hop 160: MusicGen's 50 frames/s at 8 kHz, so a clip has as many frames as it would with the real model; ``card``
    codes, exactly ``n_codebooks`` quantizers at its one bandwidth). The decoder's weights are drawn with std
    ``init_std``: at transformers' 0.02 the text barely reaches the logits, so the CFG teacher equals the student to
    within a KL of 1e-7 and a training run would have nothing to distill."""
    from transformers import EncodecConfig, MusicgenConfig, MusicgenDecoderConfig, T5Config

    text = T5Config(vocab_size=ByteTokenizer.vocab_size, d_model=16, d_kv=8, d_ff=32, num_layers=1,
                    num_decoder_layers=0, num_heads=2, dropout_rate=0.0)
    ratios = [8, 5, 4]
    frame_rate = math.ceil(sample_rate / math.prod(ratios))
    # EnCodec picks its quantizer count from the bandwidth: K codebooks of log2(card) bits at frame_rate.
    bandwidth = n_codebooks * math.log2(card) * frame_rate / 1000
    audio = EncodecConfig(sampling_rate=sample_rate, hidden_size=8, num_filters=4, num_lstm_layers=1,
                          num_residual_layers=1, upsampling_ratios=ratios, codebook_size=card, codebook_dim=8,
                          target_bandwidths=[bandwidth])
    decoder = MusicgenDecoderConfig(vocab_size=card, hidden_size=dim, num_hidden_layers=n_layers, num_attention_heads=2,
                                    ffn_dim=2 * dim, num_codebooks=n_codebooks, max_position_embeddings=256,
                                    dropout=0.0, pad_token_id=card, bos_token_id=card, decoder_start_token_id=card,
                                    initializer_factor=init_std)
    return MusicgenConfig(text_encoder=text, audio_encoder=audio, decoder=decoder)


def tiny_musicgen(seed: int = 0, **config) -> "MusicgenForConditionalGeneration":
    """A ``MusicgenForConditionalGeneration`` with random weights from :func:`tiny_musicgen_config` (~0.1 s on CPU)."""
    from transformers import MusicgenForConditionalGeneration

    with torch.random.fork_rng(devices=[]):  # seeded, without resetting the caller's random stream
        torch.manual_seed(seed)
        model = MusicgenForConditionalGeneration(tiny_musicgen_config(**config)).eval()
        # transformers initialises EnCodec codebooks to zeros (they come from a checkpoint); random ones make the
        # tiny codec's codes depend on the audio.
        for layer in model.audio_encoder.quantizer.layers:
            layer.codebook.embed.normal_()
    return model


class ByteTokenizer:
    """The tokenizer-free path for models built in code: UTF-8 bytes in ByT5's id layout (byte b -> id b + 3; 0 pad,
    1 EOS, 2 unknown), EOS appended as T5 does. Only meaningful for a T5 trained on these ids, such as the random one
    of :func:`tiny_musicgen_config`; a real MusicGen checkpoint needs its own T5 tokenizer, which
    :func:`load_musicgen` always loads."""

    vocab_size = 259
    pad_token_id = 0
    eos_token_id = 1

    def __call__(self, prompts: list[str]) -> dict[str, list[list[int]]]:
        return {"input_ids": [[b + 3 for b in p.encode("utf-8")] + [self.eos_token_id] for p in prompts]}


def trainable_modules(decoder: nn.Module, enc_to_dec_proj: nn.Module | None, train_layers: int) -> list[nn.Module]:
    """The modules the learner updates. 0: the whole decoder and the text-to-decoder projection. N > 0: the last N
    decoder layers and everything above them (final layer norm, output heads); embeddings, earlier layers and the
    projection stay frozen. The T5 text encoder is never trained."""
    layers = decoder.model.decoder.layers
    if not 0 <= train_layers <= len(layers):
        raise ValueError(f"model.train_layers={train_layers} must be in [0, {len(layers)}] (0 = the whole decoder)")
    if train_layers == 0:
        return [decoder] + ([enc_to_dec_proj] if enc_to_dec_proj is not None else [])
    return [*layers[len(layers) - train_layers:], decoder.model.decoder.layer_norm, decoder.lm_heads]


# ---- the policy -----------------------------------------------------------------------------------------------------
class MusicGenPolicy(CachedSampler, nn.Module):
    """MusicGen's text encoder and decoder behind :class:`~divcfg.common.policy.AudioTokenPolicy`'s interface.

    The T5 encoder is frozen (``requires_grad`` off, always in eval mode); the decoder is trained, or only its last
    ``train_layers`` layers. ``tokenizer`` is the checkpoint's T5 tokenizer, or None for the :class:`ByteTokenizer`.
    ``name`` defaults to where the model was loaded from. The module holds no EnCodec: the audio side is
    :class:`MusicGenCodec`, so weight snapshots carry no codec.
    """

    def __init__(self, model: "MusicgenForConditionalGeneration", tokenizer=None, *, name: str | None = None,
                 train_layers: int = 0, text_max_len: int = 256):
        super().__init__()
        name = name or model.config.name_or_path or "an in-code MusicGen"
        check_supported(model.config, name)
        d = model.config.decoder
        self.text_encoder = model.text_encoder
        self.enc_to_dec_proj = getattr(model, "enc_to_dec_proj", None)
        self.decoder = model.decoder  # MusicgenForCausalLM: code embeddings, layers, K heads
        self.tokenizer = tokenizer if tokenizer is not None else ByteTokenizer()
        if tokenizer is None and model.config.text_encoder.vocab_size < ByteTokenizer.vocab_size:
            raise ValueError(f"the byte tokenizer needs a T5 vocabulary of >= {ByteTokenizer.vocab_size} ids, "
                             f"{name} has {model.config.text_encoder.vocab_size}; pass the checkpoint's tokenizer")
        if text_max_len < 1:
            raise ValueError(f"model.text_max_len must be >= 1, got {text_max_len}")
        self.cfg = MusicGenPolicyConfig(
            name=name, n_codebooks=d.num_codebooks, card=d.vocab_size, dim=d.hidden_size, n_layers=d.num_hidden_layers,
            n_heads=d.num_attention_heads, max_frames=d.max_position_embeddings - d.num_codebooks + 1,
            text_max_len=text_max_len, train_layers=train_layers)
        self.special = d.vocab_size
        self.model_config = model.config  # the codec check (check_codec_matches) compares a codec against it
        self.spec: MusicGenSpec | None = None  # set by MusicGenSpec.build: what a checkpoint records to rebuild this
        self.requires_grad_(False)
        for module in trainable_modules(self.decoder, self.enc_to_dec_proj, train_layers):
            module.requires_grad_(True)
        self.eval()  # as from_pretrained leaves it; the roles set the mode they need

    def train(self, mode: bool = True) -> "MusicGenPolicy":
        super().train(mode)
        self.text_encoder.eval()  # frozen: its dropout would only add noise to the condition
        return self

    @property
    def device(self) -> torch.device:
        return next(self.decoder.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.decoder.parameters()).dtype

    # ---- conditioning -------------------------------------------------------------------------------------------
    def _tokenize(self, prompts: list[str], truncate: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids [B, L] long, mask [B, L] bool)``, right-padded, EOS kept when truncating."""
        ids = self.tokenizer(prompts)["input_ids"]
        max_len = self.cfg.text_max_len
        for i, row in enumerate(ids):
            if len(row) > max_len and not truncate:
                raise PromptTooLongError(
                    f"prompt {i} is {len(row)} tokens, over the text encoder's limit of {max_len} "
                    f"(model.text_max_len); shorten it or allow truncation: {prompts[i][:60]!r}...")
        ids = [row if len(row) <= max_len else row[: max_len - 1] + row[-1:] for row in ids]
        length = max(len(row) for row in ids)
        out = torch.full((len(ids), length), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(ids), length), dtype=torch.bool)
        for i, row in enumerate(ids):
            out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = True
        return out.to(self.device), mask.to(self.device)

    def encode_condition(self, prompts: list[str], truncate: bool = False) -> Condition:
        """Text prompts -> :class:`Condition` ``(states [B, L, D], mask [B, L] bool)``, as the decoder receives them."""
        ids, mask = self._tokenize(prompts, truncate)
        with torch.no_grad():  # frozen encoder: no graph through it
            states = self.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        if self.enc_to_dec_proj is not None:
            states = self.enc_to_dec_proj(states)
        # transformers zeroes padded positions after the projection (MusicgenForConditionalGeneration.forward).
        return Condition(states * mask[..., None].to(states.dtype), mask)

    def null_condition(self, batch: int, length: int = 1) -> Condition:
        """MusicGen's unconditional input for ``batch`` rows: zero states, all-False mask, ``length`` positions."""
        length = max(length, 1)
        states = torch.zeros(batch, length, self.cfg.dim, device=self.device, dtype=self.dtype)
        return Condition(states, torch.zeros(batch, length, dtype=torch.bool, device=self.device))

    def drop_condition(self, cond: Condition, drop: torch.Tensor) -> Condition:
        """Condition dropout: rows where ``drop [B]`` is True get the null condition."""
        null = self.null_condition(cond.states.shape[0], cond.states.shape[1])
        return Condition(torch.where(drop[:, None, None], null.states, cond.states),
                         torch.where(drop[:, None], null.mask, cond.mask))

    def with_null(self, cond: Condition) -> Condition:
        """``[cond; null]`` along the batch: the 2B condition of one batched CFG forward (transformers' order)."""
        null = self.null_condition(cond.states.shape[0], cond.states.shape[1])
        return Condition(torch.cat([cond.states, null.states]), torch.cat([cond.mask, null.mask]))

    # ---- whole-sequence scoring ---------------------------------------------------------------------------------
    def forward_delayed(self, columns: torch.Tensor, cond: Condition, cache=None) -> torch.Tensor:
        """Delayed input columns ``[B, K, N]`` -> per-column logits ``[B, K, N, V]``; ``cache`` is a transformers
        ``EncoderDecoderCache`` holding the columns before these (generation) or None (teacher forcing)."""
        b, k, n = columns.shape
        out = self.decoder(input_ids=columns.reshape(b * k, n), encoder_hidden_states=cond.states,
                           encoder_attention_mask=cond.mask, cache=cache, use_cache=cache is not None)
        return out.logits.view(b, k, n, self.cfg.card)

    def logits(self, codes: torch.Tensor, cond: Condition) -> torch.Tensor:
        """Logits of every code given the codes before it: ``codes [B, K, T]`` -> ``[B, K, T, V]``, where
        ``out[b, k, t]`` predicts ``codes[b, k, t]``."""
        b, k, t = codes.shape
        assert k == self.cfg.n_codebooks, f"codes have {k} codebooks, model has {self.cfg.n_codebooks}"
        assert t <= self.cfg.max_frames, f"{t} frames > model max_frames={self.cfg.max_frames}"
        assert cond.states.shape[0] == b, f"condition batch {cond.states.shape[0]} != codes batch {b}"
        seq = delay(codes, self.special)  # [B, K, S]
        bos = torch.full_like(seq[:, :, :1], self.special)
        columns = torch.cat([bos, seq[:, :, :-1]], dim=2)  # input at column s is the target at column s-1
        return undelay(self.forward_delayed(columns, cond), t)

    def guided_logits(self, codes: torch.Tensor, cond: Condition, guidance_scale: float) -> torch.Tensor:
        """CFG logits ``[B, K, T, V]``: cond and null rows in one forward of size 2B, mixed per token."""
        if guidance_scale == 1.0:
            return self.logits(codes, cond)
        cond_logits, uncond_logits = self.logits(torch.cat([codes, codes]), self.with_null(cond)).chunk(2)
        return cfg_mix(cond_logits, uncond_logits, guidance_scale)

    # ---- KV-cached sampling -------------------------------------------------------------------------------------
    # generate() comes from CachedSampler: same contract as AudioTokenPolicy, transformers' KV cache inside.
    def _generate(self, cond, n_frames, guidance_scale, temperature, top_k, top_p, generator, return_logits):
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        k, v = self.cfg.n_codebooks, self.cfg.card
        b = cond.states.shape[0]
        use_cfg = guidance_scale != 1.0
        if use_cfg:
            cond = self.with_null(cond)
        s_len = delayed_length(n_frames, k)
        valid = delay_valid_mask(k, n_frames, self.device)  # [K, S]
        cache = EncoderDecoderCache(DynamicCache(config=self.decoder.config), DynamicCache(config=self.decoder.config))
        seq = torch.full((b, k, s_len), self.special, dtype=torch.long, device=self.device)
        seq_logprobs = torch.zeros(b, k, s_len, dtype=torch.float32, device=self.device)
        step_logits = torch.empty(b, k, s_len, v, device=self.device) if return_logits else None
        column = torch.full((cond.states.shape[0], k, 1), self.special, dtype=torch.long, device=self.device)
        for s in range(s_len):
            logits = self.forward_delayed(column, cond, cache)[:, :, 0]  # [rows, K, V]
            if use_cfg:
                logits = cfg_mix(logits[:b], logits[b:], guidance_scale)
            if return_logits:
                step_logits[:, :, s] = logits
            tokens, logprobs = sample_tokens(logits, temperature, top_k, top_p, generator)
            tokens = torch.where(valid[:, s], tokens, self.special)  # delay padding is forced, never sampled
            seq[:, :, s] = tokens
            seq_logprobs[:, :, s] = torch.where(valid[:, s], logprobs, 0.0)
            column = (torch.cat([tokens, tokens]) if use_cfg else tokens)[:, :, None]
        return GenerationOutput(undelay(seq, n_frames), undelay(seq_logprobs, n_frames), step_logits)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ---- weight snapshots ---------------------------------------------------------------------------------------
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors the learner updates, by state-dict name: all a weight snapshot or a checkpoint carries. The
        frozen rest (the T5 encoder; with ``train_layers > 0`` also the embeddings and earlier decoder layers) is
        rebuilt from the same source in every process, so it never crosses the wire."""
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        return {k: v for k, v in self.state_dict().items() if k in names}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load a :meth:`trainable_state_dict` snapshot (a whole state dict is accepted too). A snapshot that lacks
        a trainable tensor or names one this model doesn't have was made for another model or ``train_layers``."""
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        missing, unexpected = sorted(trainable - state.keys()), sorted(state.keys() - self.state_dict().keys())
        if missing or unexpected:
            raise ValueError(f"weights do not fit {self.cfg.name} with train_layers={self.cfg.train_layers}: missing "
                             f"{missing[:5]}, unexpected {unexpected[:5]}")
        self.load_state_dict(state, strict=False)

    def checkpoint_config(self) -> dict:
        """What a policy checkpoint records instead of an architecture: the source to rebuild the model from."""
        if self.spec is None:
            raise ValueError(f"{self.cfg.name}: only a MusicGenPolicy built by MusicGenSpec.build records where its "
                             f"frozen weights come from, so only such a policy can be saved")
        return self.spec.checkpoint_config()


# ---- the codec ------------------------------------------------------------------------------------------------------
class MusicGenCodec:
    """MusicGen's EnCodec behind :class:`divcfg.common.codec.Codec`'s interface: ``encode(wav [B, N]) -> codes
    [B, K, T]`` and ``decode(codes) -> wav [B, T * hop]``, mono, at the bandwidth that gives exactly K codebooks."""

    def __init__(self, audio_encoder, n_codebooks: int, name: str):
        cfg = audio_encoder.config
        if cfg.audio_channels != 1:
            raise UnsupportedMusicGenError(f"{name}: the EnCodec has audio_channels={cfg.audio_channels}; only mono")
        # Chunked or normalised EnCodec (the 48 kHz model) returns several frames and per-chunk scales that a plain
        # [B, K, T] code grid can't carry; MusicGen's 32 kHz EnCodec uses neither.
        if cfg.chunk_length_s is not None or cfg.normalize:
            raise UnsupportedMusicGenError(f"{name}: chunked or normalised EnCodec is not supported "
                                           f"(chunk_length_s={cfg.chunk_length_s}, normalize={cfg.normalize})")
        quantizer = audio_encoder.quantizer
        matching = [bw for bw in cfg.target_bandwidths if quantizer.get_num_quantizers_for_bandwidth(bw) == n_codebooks]
        if not matching:
            raise CodecMismatchError(f"{name}: no EnCodec bandwidth in {list(cfg.target_bandwidths)} gives the "
                                     f"decoder's {n_codebooks} codebooks")
        self.model = audio_encoder.eval().requires_grad_(False)
        self.bandwidth = matching[0]
        self.n_codebooks = n_codebooks
        self.name = name
        self.sample_rate: int = cfg.sampling_rate
        self.card: int = cfg.codebook_size
        self.hop_length: int = cfg.hop_length
        self.frame_rate: float = self.sample_rate / self.hop_length

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device) -> "MusicGenCodec":
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
        codes = self.model.encode(wav[:, None], bandwidth=self.bandwidth, return_dict=True).audio_codes
        return codes[0]  # [1 chunk, B, K, T] -> [B, K, T]

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Codes ``[B, K, T]`` -> mono ``wav [B, T * hop]`` float."""
        codes = torch.as_tensor(np.asarray(codes) if not torch.is_tensor(codes) else codes, device=self.device).long()
        if codes.dim() != 3 or codes.shape[1] != self.n_codebooks:
            raise ValueError(f"codec.decode expects codes [B, K={self.n_codebooks}, T], got {tuple(codes.shape)}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.card):
            raise ValueError(f"codes outside [0, {self.card}) cannot be decoded: [{codes.min()}, {codes.max()}]")
        return self.model.decode(codes[None], [None], return_dict=True).audio_values[:, 0]


def check_codec_matches(codec, config: "MusicgenConfig", name: str = "the model") -> None:
    """The codec must make the codes the model was trained on: same sample rate, frame rate, K and V. A codec from
    another model (the offline world's 16 kHz EnCodec, say) gives codes that mean nothing to MusicGen."""
    audio, d = config.audio_encoder, config.decoder
    expected = {"sample_rate": audio.sampling_rate, "frame_rate": audio.sampling_rate / audio.hop_length,
                "n_codebooks": d.num_codebooks, "card": d.vocab_size}
    for field, want in expected.items():
        got = getattr(codec, field)
        if got != want:
            raise CodecMismatchError(
                f"codec {getattr(codec, 'name', type(codec).__name__)} has {field}={got}, but {name} was trained on "
                f"{field}={want}: decode and encode with the model's own EnCodec (MusicGenCodec)")


def build_musicgen(name_or_path: str, *, train_layers: int = 0, text_max_len: int = 256,
                   local_files_only: bool = False, seed: int = 0) -> tuple[MusicGenPolicy, MusicGenCodec]:
    """The policy and its codec from one checkpoint (:data:`TINY` builds the tiny random one with ``seed``)."""
    return MusicGenSpec(name_or_path, train_layers, text_max_len, local_files_only, seed).build()


@dataclass(frozen=True)
class MusicGenSpec:
    """Where a MusicGen policy comes from: enough to build the same model in any process. Picklable, so it is the
    policy factory that Ray actors receive (calling it builds the policy), and :meth:`checkpoint_config` is what a
    policy checkpoint records beside the trained tensors."""

    musicgen: str
    """Hub id, local directory, or :data:`TINY`."""
    train_layers: int = 0
    """See :class:`MusicGenPolicyConfig`."""
    text_max_len: int = 256
    """See :class:`MusicGenPolicyConfig`."""
    local_files_only: bool = False
    """Never reach the Hub (a deployment setting: checkpoints don't record it)."""
    seed: int = 0
    """Initialisation of :data:`TINY`, so that every process builds the same random model; unused otherwise."""

    @classmethod
    def from_model_config(cls, m, seed: int = 0) -> "MusicGenSpec":
        """From a :class:`divcfg.common.config.ModelConfig` with ``family=musicgen``. A local directory is made
        absolute: Ray workers need not share the driver's working directory."""
        name = m.musicgen
        if name != TINY and Path(name).expanduser().is_dir():
            name = str(Path(name).expanduser().resolve())
        return cls(name, int(m.train_layers), int(m.text_max_len), bool(m.local_files_only), int(seed))

    @classmethod
    def from_checkpoint_config(cls, config: dict, local_files_only: bool = False) -> "MusicGenSpec":
        return cls(config["musicgen"], int(config["train_layers"]), int(config["text_max_len"]), local_files_only,
                   int(config.get("seed", 0)))

    def checkpoint_config(self) -> dict:
        """``family`` marks a MusicGen checkpoint; the seed only matters (and is only recorded) for :data:`TINY`, so
        that real runs with different seeds stay mergeable."""
        out = {"family": "musicgen", "musicgen": self.musicgen, "train_layers": self.train_layers,
               "text_max_len": self.text_max_len}
        return {**out, "seed": self.seed} if self.musicgen == TINY else out

    def build(self) -> tuple[MusicGenPolicy, MusicGenCodec]:
        """The policy and its codec, checked against each other."""
        try:
            import transformers  # noqa: F401
        except ImportError:
            raise ImportError("MusicGen needs transformers, an optional extra: pip install 'divcfg[musicgen]'") from None
        if self.musicgen == TINY:
            model, tokenizer = tiny_musicgen(self.seed), None
        else:
            model, tokenizer = load_musicgen(self.musicgen, local_files_only=self.local_files_only)
        policy = MusicGenPolicy(model, tokenizer, name=self.musicgen, train_layers=self.train_layers,
                                text_max_len=self.text_max_len)
        policy.spec = self
        codec = MusicGenCodec(model.audio_encoder, model.config.decoder.num_codebooks, self.musicgen)
        check_codec_matches(codec, model.config, self.musicgen)
        return policy, codec

    def __call__(self) -> MusicGenPolicy:
        """The policy factory of rollout actors (their weights then arrive through the weights loop)."""
        return self.build()[0]

    def codec(self) -> MusicGenCodec:
        """The codec factory of reward workers: the model's own EnCodec (the rest of the model is dropped)."""
        return self.build()[1]


# ---- memory ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MemoryEstimate:
    """Memory per role from the config: bytes, except the ``*_params`` counts. Activations are not included, except
    the learner's float32 logits, given per learner batch row because they dominate at V = 2048."""

    policy_params: int
    """Parameters of the policy: T5 encoder, projection, decoder (what a weight snapshot carries)."""
    trainable_params: int
    """Parameters the learner updates (see :func:`trainable_modules`)."""
    codec_params: int
    """Parameters of the EnCodec (reward workers decode with it)."""
    actor_weights: int
    """One policy copy in the actor's dtype."""
    actor_kv_cache: int
    """Self-attention (S columns) and cross-attention (L text tokens) keys and values of one generate call."""
    learner_weights: int
    """Student and frozen teacher, float32 (the learner autocasts; it keeps float32 weights). The teacher shares the
    parameters the student never trains (the T5, and frozen decoder layers), so it adds only the trainable ones."""
    learner_grads: int
    """float32 gradients of the trainable parameters."""
    learner_adam: int
    """Adam's two float32 moments per trainable parameter."""
    learner_logits_per_row: int
    """float32 logits ``[K, T, V]`` of one row for the student and the CFG teacher's cond and uncond branches."""
    codec_weights: int
    """The EnCodec in the actor's dtype."""

    @property
    def actor_total(self) -> int:
        return self.actor_weights + self.actor_kv_cache

    @property
    def learner_total(self) -> int:
        """Without activations; add ``learner_logits_per_row`` × rows per learner step."""
        return self.learner_weights + self.learner_grads + self.learner_adam


def memory_estimate(config: "MusicgenConfig", batch: int, n_frames: int, dtype: torch.dtype = torch.float32, *,
                    train_layers: int = 0, text_len: int = 64, guidance_scale: float = 1.0) -> MemoryEstimate:
    """Memory of an actor generating ``batch`` rows of ``n_frames`` frames (with CFG when ``guidance_scale != 1``,
    which doubles the rows) for prompts of up to ``text_len`` T5 tokens, and of the learner, in bytes.

    ``config`` is a ``MusicgenConfig``, e.g. ``AutoConfig.from_pretrained("facebook/musicgen-small")`` (a few kB, no
    weights). Parameter counts come from building the model on the meta device: exact, and nothing is allocated.
    """
    from transformers import MusicgenForConditionalGeneration

    with torch.device("meta"):
        model = MusicgenForConditionalGeneration(copy.deepcopy(config))  # the constructor writes into its config
    proj = getattr(model, "enc_to_dec_proj", None)

    def count(modules) -> int:
        return sum(p.numel() for m in modules if m is not None for p in m.parameters())

    policy_params = count([model.text_encoder, proj, model.decoder])
    trainable = count(trainable_modules(model.decoder, proj, train_layers))
    d = config.decoder
    size = torch.empty((), dtype=dtype).element_size()
    rows = batch * (2 if guidance_scale != 1.0 else 1)
    kv_positions = delayed_length(n_frames, d.num_codebooks) + text_len
    fp32 = 4
    return MemoryEstimate(
        policy_params=policy_params, trainable_params=trainable, codec_params=count([model.audio_encoder]),
        actor_weights=policy_params * size,
        actor_kv_cache=2 * d.num_hidden_layers * rows * kv_positions * d.hidden_size * size,
        learner_weights=(policy_params + trainable) * fp32, learner_grads=trainable * fp32, learner_adam=2 * trainable * fp32,
        learner_logits_per_row=3 * d.num_codebooks * n_frames * d.vocab_size * fp32,
        codec_weights=count([model.audio_encoder]) * size)
