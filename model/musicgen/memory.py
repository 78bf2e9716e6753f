"""Memory per role of a MusicGen run, from its config alone (no weights): what the README's sizing table uses."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from divcfg.model.delay import delayed_length
from divcfg.model.musicgen.loading import trainable_modules

if TYPE_CHECKING:
    from transformers import MusicgenConfig


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
    from transformers import MusicgenForConditionalGeneration  # optional extra (divcfg[musicgen])

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
