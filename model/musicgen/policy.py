"""Hugging Face MusicGen behind the policy interface the roles use, and its own EnCodec behind the codec interface.

:class:`MusicGenPolicy` wraps the parts of ``transformers``' ``MusicgenForConditionalGeneration`` that make codes
(the frozen T5 text encoder, the optional text-to-decoder projection, the decoder with its K output heads) and exposes
what :class:`divcfg.model.policy.AudioTokenPolicy` exposes: ``encode_condition``, ``null_condition``,
``drop_condition``, ``with_null``, ``logits``, ``guided_logits`` and a KV-cached ``generate``. Codes go in and come out
un-delayed, ``[B, K, T]``; the delay pattern is MusicGen's, applied by :func:`divcfg.model.delay.delay` (a test
checks it against transformers' ``build_delay_pattern_mask``, which leaves sequences of fewer than 2K - 1 columns
undelayed, so it can't serve short clips). :class:`MusicGenCodec` wraps the same model's EnCodec as a
:class:`divcfg.codec.offline.Codec`. So rollout actors, reward workers and the learner need not know which model they
hold.

The unconditional branch is MusicGen's own: all-zero encoder states with an all-False attention mask, which is what
transformers' ``generate(guidance_scale=...)`` and ``get_unconditional_inputs`` build.

transformers is an optional extra (``pip install divcfg[musicgen]``); this module imports it only inside functions.

Shapes: B batch, K codebooks, T frames, S = T + K - 1 delayed columns, V codes per codebook (``card``), D decoder
width, L text tokens.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from divcfg.codec.musicgen import MusicGenCodec, check_codec_matches
from divcfg.model.delay import teacher_forced_columns, undelay
from divcfg.model.guidance import cfg_mix
from divcfg.model.musicgen import convert
from divcfg.model.musicgen.loading import (
    TINY,
    ByteTokenizer,
    check_supported,
    load_musicgen,
    tiny_musicgen,
    trainable_modules,
)
from divcfg.model.policy import AudioTokenPolicy
from divcfg.model.sampling import CachedSampler
from divcfg.model.text_condition import Condition, PromptTooLongError

if TYPE_CHECKING:
    from transformers import MusicgenForConditionalGeneration


# ---- config ----------------------------------------------------------------------------------------------------------
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
    decoder: str = "divcfg"
    """divcfg: the weights in divcfg's KV-cached decoder (model/musicgen/convert.py: CFG as one batched forward, CUDA
    graphs, the CPU GEMM layout); transformers: transformers' own decoder (the reference)."""


# ---- the policy -----------------------------------------------------------------------------------------------------
class MusicGenPolicy(CachedSampler, nn.Module):
    """MusicGen's text encoder and decoder behind :class:`~divcfg.model.policy.AudioTokenPolicy`'s interface.

    The T5 encoder is frozen (``requires_grad`` off, always in eval mode); the decoder is trained, or only its last
    ``train_layers`` layers. ``tokenizer`` is the checkpoint's T5 tokenizer, or None for the :class:`ByteTokenizer`.
    ``name`` defaults to where the model was loaded from. The module holds no EnCodec: the audio side is
    :class:`MusicGenCodec`, so weight snapshots carry no codec. ``decoder`` picks who runs the decoder
    (:class:`MusicGenPolicyConfig`); snapshots and checkpoints name tensors as ``MusicgenForConditionalGeneration``
    does either way, so the two interoperate.
    """

    def __init__(self, model: "MusicgenForConditionalGeneration", tokenizer=None, *, name: str | None = None,
                 train_layers: int = 0, text_max_len: int = 256, decoder: str = "divcfg"):
        super().__init__()
        name = name or model.config.name_or_path or "an in-code MusicGen"
        check_supported(model.config, name)
        d = model.config.decoder
        self.text_encoder = model.text_encoder
        self.enc_to_dec_proj = getattr(model, "enc_to_dec_proj", None)
        if decoder not in convert.DECODERS:
            raise ValueError(f"model.decoder={decoder!r} must be one of {', '.join(convert.DECODERS)}")
        # MusicgenForCausalLM (code embeddings, layers, K heads), or divcfg's decoder with its weights.
        self.decoder = (model.decoder if decoder == "transformers" else
                        convert.convert_decoder(model.decoder, model.config, text_max_len, name))
        self.tokenizer = tokenizer if tokenizer is not None else ByteTokenizer()
        if tokenizer is None and model.config.text_encoder.vocab_size < ByteTokenizer.vocab_size:
            raise ValueError(f"the byte tokenizer needs a T5 vocabulary of >= {ByteTokenizer.vocab_size} ids, "
                             f"{name} has {model.config.text_encoder.vocab_size}; pass the checkpoint's tokenizer")
        if text_max_len < 1:
            raise ValueError(f"model.text_max_len must be >= 1, got {text_max_len}")
        self.cfg = MusicGenPolicyConfig(
            name=name, n_codebooks=d.num_codebooks, card=d.vocab_size, dim=d.hidden_size, n_layers=d.num_hidden_layers,
            n_heads=d.num_attention_heads, max_frames=d.max_position_embeddings - d.num_codebooks + 1,
            text_max_len=text_max_len, train_layers=train_layers, decoder=decoder)
        self.special = d.vocab_size
        self.model_config = model.config  # the codec check (check_codec_matches) compares a codec against it
        self.spec: MusicGenSpec | None = None  # set by MusicGenSpec.build: what a checkpoint records to rebuild this
        self.requires_grad_(False)
        trainable = trainable_modules if decoder == "transformers" else convert.trainable_modules
        for module in trainable(self.decoder, self.enc_to_dec_proj, train_layers):
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

    # ---- whole-sequence scoring: divcfg's decoder, or transformers' through the adapter code below --------------
    @property
    def fast(self) -> AudioTokenPolicy | None:
        """The converted decoder (``decoder=divcfg``), which then does all the decoding; None for the adapter."""
        return self.decoder if self.cfg.decoder == "divcfg" else None

    def forward_delayed(self, columns: torch.Tensor, cond: Condition, cache=None) -> torch.Tensor:
        """Delayed input columns ``[B, K, N]`` -> per-column logits ``[B, K, N, V]``; ``cache`` (adapter only) is a
        transformers ``EncoderDecoderCache`` holding the columns before these (generation) or None."""
        if self.fast is not None:
            return self.fast.forward_delayed(columns, cond)
        b, k, n = columns.shape
        out = self.decoder(input_ids=columns.reshape(b * k, n), encoder_hidden_states=cond.states,
                           encoder_attention_mask=cond.mask, cache=cache, use_cache=cache is not None)
        return out.logits.view(b, k, n, self.cfg.card)

    def logits(self, codes: torch.Tensor, cond: Condition) -> torch.Tensor:
        """Logits of every code given the codes before it: ``codes [B, K, T]`` -> ``[B, K, T, V]``, where
        ``out[b, k, t]`` predicts ``codes[b, k, t]``."""
        if self.fast is not None:
            return self.fast.logits(codes, cond)
        assert cond.states.shape[0] == codes.shape[0], f"condition batch {cond.states.shape[0]} != codes batch"
        columns = teacher_forced_columns(codes, self.special, self.cfg.n_codebooks, self.cfg.max_frames)
        return undelay(self.forward_delayed(columns, cond), codes.shape[2])

    def guided_logits(self, codes: torch.Tensor, cond: Condition, guidance_scale: float) -> torch.Tensor:
        """CFG logits ``[B, K, T, V]``: cond and null rows in one forward of size 2B, mixed per token."""
        if self.fast is not None:
            return self.fast.guided_logits(codes, cond, guidance_scale)
        if guidance_scale == 1.0:
            return self.logits(codes, cond)
        cond_logits, uncond_logits = self.logits(torch.cat([codes, codes]), self.with_null(cond)).chunk(2)
        return cfg_mix(cond_logits, uncond_logits, guidance_scale)

    # ---- KV-cached sampling: generate() and its loop come from CachedSampler (model/sampling.py) ---------------
    def _decode_step(self, cond: Condition, rows: int, s_len: int, guidance_scale: float):
        """``step(column [rows, K, 1], s) -> logits [B, K, V]`` for one ``generate`` call: divcfg's step (a CUDA
        graph on the GPU), or the adapter's over transformers' KV cache."""
        if self.fast is not None:
            return self.fast._decode_step(cond, rows, s_len, guidance_scale)
        return _transformers_step(self, cond, rows, guidance_scale)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ---- weight snapshots, by MusicgenForConditionalGeneration's tensor names ---------------------------------
    def musicgen_state_dict(self, trainable_only: bool = False) -> dict[str, torch.Tensor]:
        """The state dict under ``MusicgenForConditionalGeneration``'s names (whichever decoder runs), so that it
        loads into that model as it is; ``trainable_only``: just the tensors the learner updates."""
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        state = {k: v for k, v in self.state_dict().items() if not trainable_only or k in names}
        if self.fast is None:
            return state
        ours = {k.removeprefix("decoder."): v for k, v in state.items() if k.startswith("decoder.")}
        mapped = convert.to_musicgen_state(ours, self.cfg.n_layers, self.cfg.n_codebooks)
        return {**{k: v for k, v in state.items() if not k.startswith("decoder.")},
                **{"decoder." + k: v for k, v in mapped.items()}}

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors the learner updates, by MusicGen's names: all a weight snapshot or a checkpoint carries. The
        frozen rest (the T5 encoder; with ``train_layers > 0`` also the embeddings and earlier decoder layers) is
        rebuilt from the same source in every process, so it never crosses the wire."""
        return self.musicgen_state_dict(trainable_only=True)

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load a :meth:`trainable_state_dict` snapshot (a whole state dict is accepted too). A snapshot that lacks
        a trainable tensor or names one this model doesn't have was made for another model or ``train_layers``."""
        if self.fast is not None:
            theirs = {k.removeprefix("decoder."): v for k, v in state.items() if k.startswith("decoder.")}
            ours = convert.to_divcfg_state(theirs, self.cfg.n_layers, self.cfg.n_codebooks, partial=True)
            state = {**{k: v for k, v in state.items() if not k.startswith("decoder.")},
                     **{"decoder." + k: v for k, v in ours.items()}}
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        missing, unexpected = sorted(trainable - state.keys()), sorted(state.keys() - self.state_dict().keys())
        if missing or unexpected:
            raise ValueError(f"weights do not fit {self.cfg.name} with train_layers={self.cfg.train_layers}: missing "
                             f"{missing[:5]}, unexpected {unexpected[:5]}")
        self.load_state_dict(state, strict=False)

    def checkpoint_config(self) -> dict:
        """What a policy checkpoint records instead of an architecture: the source to rebuild the model from, and
        the decoder config fields its tensors assume (a later transformers must agree: ``check_decoder_fields``)."""
        if self.spec is None:
            raise ValueError(f"{self.cfg.name}: only a MusicGenPolicy built by MusicGenSpec.build records where its "
                             f"frozen weights come from, so only such a policy can be saved")
        return {**self.spec.checkpoint_config(),
                "decoder_config": convert.decoder_fields(self.model_config.decoder, self.cfg.name)}


def _transformers_step(policy: MusicGenPolicy, cond: Condition, rows: int, guidance_scale: float):
    """The adapter's decoding step over transformers' KV cache; with CFG the cond and null rows run as one forward
    and are mixed by :func:`cfg_mix`."""
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache  # optional extra (divcfg[musicgen])

    config = policy.decoder.config
    cache = EncoderDecoderCache(DynamicCache(config=config), DynamicCache(config=config))
    b = rows // 2 if guidance_scale != 1.0 else rows

    def step(column: torch.Tensor, s: int) -> torch.Tensor:
        logits = policy.forward_delayed(column, cond, cache)[:, :, 0]  # [rows, K, V]
        return cfg_mix(logits[:b], logits[b:], guidance_scale) if guidance_scale != 1.0 else logits
    return step


def build_musicgen(name_or_path: str, *, train_layers: int = 0, text_max_len: int = 256, local_files_only: bool = False,
                   seed: int = 0, decoder: str = "divcfg") -> tuple[MusicGenPolicy, MusicGenCodec]:
    """The policy and its codec from one checkpoint (:data:`TINY` builds the tiny random one with ``seed``)."""
    return MusicGenSpec(name_or_path, train_layers, text_max_len, local_files_only, seed, decoder).build()


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
    decoder: str = "divcfg"
    """See :class:`MusicGenPolicyConfig` (a deployment setting: checkpoints' tensors are the same either way)."""

    @classmethod
    def from_model_config(cls, m, seed: int = 0) -> "MusicGenSpec":
        """From a :class:`divcfg.common.config.schema.ModelConfig` with ``family=musicgen``. A local directory is made
        absolute: Ray workers need not share the driver's working directory."""
        name = m.musicgen
        if name != TINY and Path(name).expanduser().is_dir():
            name = str(Path(name).expanduser().resolve())
        return cls(name, int(m.train_layers), int(m.text_max_len), bool(m.local_files_only), int(seed),
                   str(getattr(m, "decoder", "divcfg")))

    @classmethod
    def from_checkpoint_config(cls, config: dict, local_files_only: bool = False,
                               decoder: str = "divcfg") -> "MusicGenSpec":
        return cls(config["musicgen"], int(config["train_layers"]), int(config["text_max_len"]), local_files_only,
                   int(config.get("seed", 0)), decoder)

    def checkpoint_config(self) -> dict:
        """``family`` marks a MusicGen checkpoint; the seed only matters (and is only recorded) for :data:`TINY`, so
        that real runs with different seeds stay mergeable."""
        out = {"family": "musicgen", "musicgen": self.musicgen, "train_layers": self.train_layers,
               "text_max_len": self.text_max_len}
        return {**out, "seed": self.seed} if self.musicgen == TINY else out

    def build(self) -> tuple[MusicGenPolicy, MusicGenCodec]:
        """The policy and its codec, checked against each other."""
        if importlib.util.find_spec("transformers") is None:
            raise ImportError("MusicGen needs transformers, an optional extra: pip install 'divcfg[musicgen]'") from None
        if self.musicgen == TINY:
            model, tokenizer = tiny_musicgen(self.seed), None
        else:
            model, tokenizer = load_musicgen(self.musicgen, local_files_only=self.local_files_only)
        policy = MusicGenPolicy(model, tokenizer, name=self.musicgen, train_layers=self.train_layers,
                                text_max_len=self.text_max_len, decoder=self.decoder)
        policy.spec = self
        codec = MusicGenCodec(model.audio_encoder, model.config.decoder.num_codebooks, self.musicgen)
        check_codec_matches(codec, model.config, self.musicgen)
        return policy, codec

    def __call__(self) -> MusicGenPolicy:
        """The policy factory of rollout actors (their weights then arrive through the weights loop)."""
        return self.build()[0]

    def codec(self) -> MusicGenCodec:
        """The codec factory of reward workers: the model's own EnCodec (the rest of the model is dropped)."""
        return replace(self, decoder="transformers").build()[1]  # no decoder conversion for a codec
