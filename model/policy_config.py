"""The in-repo policy's architecture (:class:`PolicyConfig`) and its size presets.

Its own module so that the policy's parts (layers, text condition) read the config without importing the policy.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PolicyConfig:
    """Architecture of the policy. Presets in :data:`PRESETS` fill the size fields; the codec fixes K and V."""

    preset: str = "tiny"
    """Name of the size preset this config came from (informational once resolved)."""
    n_codebooks: int = 4
    """K: RVQ codebooks per frame, from the codec."""
    card: int = 256
    """V: codes per codebook, from the codec. Index V is the special (BOS / delay padding) token."""
    dim: int = 64
    """D: model width."""
    n_layers: int = 2
    """Decoder layers (self-attention, cross-attention to the text, feed-forward)."""
    n_heads: int = 2
    """Attention heads; must divide ``dim``."""
    ffn_mult: int = 4
    """Feed-forward width as a multiple of ``dim``."""
    max_frames: int = 256
    """Longest audio (in frames) the learned positions cover."""
    text_max_len: int = 96
    """Longest prompt, in UTF-8 bytes, that the text encoder takes."""
    text_layers: int = 1
    """Transformer layers in the byte-level text encoder."""
    cond_pool: bool = True
    """Also add a projection of the mean text state to every decoder input. Cross-attention must learn where to look
    before the prompt can inform a code; the pooled path informs every position from the first step."""
    text_word_buckets: int = 4096
    """Hash buckets for whole-word features added to every byte of a word (0: bytes only). Words let a small encoder
    see "fast" as one symbol instead of composing it from bytes; hashing keeps any text usable, with no vocabulary."""
    freeze_text: bool = False
    """Keep the text encoder fixed during training (as MusicGen keeps its T5): set for a text encoder trained
    beforehand (``learner/pretrain.py: pretrain_text``). Trained jointly from scratch, the decoder's gradient reaches
    it as mostly noise: the prompt is worth a few nats of a clip's hundreds."""
    dropout: float = 0.0
    """Dropout in attention and feed-forward blocks (training only)."""

    # ---- architecture variants: the defaults are divcfg's own; model/musicgen/convert.py sets MusicGen's -----
    positions: str = "learned"
    """learned (a trained table) or sinusoidal (MusicGen's fixed cos|sin table, a non-persistent buffer)."""
    activation: str = "gelu"
    """Feed-forward activation: gelu (exact erf form, MusicGen's), relu or silu."""
    ffn_dim: int = 0
    """Feed-forward width; 0 means ``ffn_mult * dim``."""
    bias: bool = True
    """Biases on the attention and feed-forward projections (MusicGen has none)."""
    head_bias: bool = True
    """A bias on the output heads (MusicGen's K heads have none)."""
    text_encoder: str = "bytes"
    """bytes (the in-repo byte-level encoder, trained with the decoder) or external (the condition states come from
    outside, already ``dim`` wide: MusicGen's frozen T5 and its projection)."""
    null_condition: str = "learned"
    """The unconditional branch of CFG: learned (one trained null state, always attended to) or zeros (MusicGen's:
    all-zero states under an all-False mask; with no attention biases that adds exactly nothing)."""

    def validate(self) -> None:
        for name in ("n_codebooks", "card", "dim", "n_layers", "n_heads", "ffn_mult", "max_frames", "text_max_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.text_word_buckets < 0:
            raise ValueError(f"model.text_word_buckets must be >= 0, got {self.text_word_buckets}")
        if self.dim % self.n_heads:
            raise ValueError(f"model.dim={self.dim} is not divisible by model.n_heads={self.n_heads}")
        for name, allowed in VARIANTS.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"model.{name}={getattr(self, name)!r} must be one of {', '.join(allowed)}")
        if self.ffn_dim < 0:
            raise ValueError(f"model.ffn_dim must be >= 0 (0: ffn_mult * dim), got {self.ffn_dim}")
        if self.null_condition == "zeros" and self.bias:
            raise ValueError("model.null_condition=zeros needs model.bias=false: only without biases do zero text "
                             "states add exactly nothing through cross-attention")
        if self.text_encoder == "external" and self.cond_pool:
            raise ValueError("model.cond_pool pools the byte encoder's states; set it false with text_encoder=external")

    @property
    def ffn_width(self) -> int:
        return self.ffn_dim or self.ffn_mult * self.dim


VARIANTS: dict[str, tuple[str, ...]] = {
    "positions": ("learned", "sinusoidal"),
    "activation": ("gelu", "relu", "silu"),
    "text_encoder": ("bytes", "external"),
    "null_condition": ("learned", "zeros"),
}
"""The values of each string-valued architecture field."""


# Sizes from a millisecond test model to a GPU-scale one (``base`` is about MusicGen-small's decoder).
PRESETS: dict[str, dict] = {
    "tiny": dict(dim=64, n_layers=2, n_heads=2, text_layers=1),
    "small": dict(dim=256, n_layers=4, n_heads=4, text_layers=2),
    "medium": dict(dim=512, n_layers=8, n_heads=8, text_layers=2),
    "base": dict(dim=1024, n_layers=24, n_heads=16, text_layers=4),
}


def policy_config(preset: str = "tiny", **overrides) -> PolicyConfig:
    """A :class:`PolicyConfig` from a preset name plus field overrides; an unknown preset is an error that lists the known ones."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; known presets: {', '.join(PRESETS)}")
    fields = {**PRESETS[preset], **overrides, "preset": preset}
    unknown = set(fields) - set(PolicyConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown model config field(s) {sorted(unknown)}")
    cfg = PolicyConfig(**fields)
    cfg.validate()
    return cfg
