"""MusicGen's decoder as divcfg's own fast one (:class:`~divcfg.model.policy.AudioTokenPolicy`): the configuration
that makes divcfg's decoder compute MusicGen's, and the state-dict mapping both ways.

What maps to what (transformers ``MusicgenForCausalLM`` -> ``AudioTokenPolicy``, ``PolicyConfig`` in brackets):

* K ``embed_tokens`` of V + 1 rows, summed -> ``code_emb`` (the K tables stacked; summed the same way);
* sinusoidal positions -> ``positions=sinusoidal`` (the same table, a non-persistent buffer in both);
* per layer, pre-norm: ``self_attn_layer_norm``, ``encoder_attn_layer_norm``, ``final_layer_norm`` -> ``norm1..3``;
  ``q/k/v_proj`` -> one fused ``qkv``; the cross-attention's ``k/v_proj`` -> one fused ``kv``; ``fc1``, ``fc2``
  -> ``ffn.0``, ``ffn.2``; no biases anywhere (``bias=false``); ``activation_function`` -> ``activation``;
  attention scaled by ``head_dim ** -0.5`` (scaled-dot-product attention's own default);
* the final ``layer_norm`` -> ``norm``; the K ``lm_heads`` -> one stacked ``heads`` (``head_bias=false``);
* the frozen T5 states (after ``enc_to_dec_proj``) come from outside (``text_encoder=external``), and the
  unconditional branch is all-zero states under an all-False mask (``null_condition=zeros``).

The T5 encoder, the projection and EnCodec stay transformers' own (:class:`MusicGenPolicy` holds them). Variants this
mapping can't reproduce exactly are refused by name; the adapter (``model.decoder=transformers``) is the reference.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from divcfg.codec.musicgen import UnsupportedMusicGenError
from divcfg.model.policy import AudioTokenPolicy
from divcfg.model.policy_config import VARIANTS, PolicyConfig

DECODERS = ("divcfg", "transformers")
"""``model.decoder``: divcfg's KV-cached decoder with MusicGen's weights mapped in, or transformers' own (the adapter)."""

DECODER_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "ffn_dim",
                  "num_codebooks", "max_position_embeddings", "activation_function", "audio_channels",
                  "scale_embedding", "cross_attention_hidden_size", "layerdrop", "dropout", "attention_dropout",
                  "activation_dropout", "pad_token_id", "bos_token_id", "tie_word_embeddings")
"""The ``MusicgenDecoderConfig`` fields the mapping reads or checks (transformers 5.24). A checkpoint records them."""

_ADAPTER = "use model.decoder=transformers (transformers' own decoder, the reference adapter)"


def decoder_fields(config, name: str = "the model") -> dict:
    """The :data:`DECODER_FIELDS` of a ``MusicgenDecoderConfig``; a field this transformers lacks is named."""
    out = {}
    for field in DECODER_FIELDS:
        if not hasattr(config, field):
            import transformers
            raise UnsupportedMusicGenError(
                f"{name}: MusicgenDecoderConfig has no field {field!r} in transformers {transformers.__version__}; "
                f"the converter to divcfg's decoder was written against transformers 5.24's fields. {_ADAPTER}")
        out[field] = getattr(config, field)
    return out


def check_decoder_fields(recorded: dict, config, name: str = "the checkpoint") -> None:
    """A checkpoint's recorded :func:`decoder_fields` against the config this transformers built: a field that is
    gone or reads differently is named (the tensors were saved under the recorded meaning)."""
    import transformers  # optional extra (divcfg[musicgen])
    for field, want in recorded.items():
        if not hasattr(config, field):
            raise UnsupportedMusicGenError(f"{name}: its decoder config field {field!r} (saved as {want!r}) does not "
                                           f"exist in transformers {transformers.__version__}'s MusicgenDecoderConfig")
        got = getattr(config, field)
        if got != want and not (field.endswith("dropout") or field == "layerdrop"):  # load_musicgen zeroes these
            raise UnsupportedMusicGenError(f"{name}: decoder config field {field!r} is {got!r} in transformers "
                                           f"{transformers.__version__}, but the checkpoint was saved with {want!r}")


def check_convertible(config, name: str = "the model") -> None:
    """Refuse, by name, what divcfg's decoder can't compute exactly; ``config`` is the top-level MusicgenConfig.

    Dropout is not refused: the converted decoder runs without any, as :func:`load_musicgen` sets transformers' to
    0 (the learner's importance weights need train-mode log-probs equal to the actors' eval-mode ones)."""
    if getattr(config, "model_type", None) != "musicgen":
        raise UnsupportedMusicGenError(f"{name} has model_type {getattr(config, 'model_type', None)!r} (melody "
                                       f"conditioning is not mapped to divcfg's decoder); {_ADAPTER}")
    d = decoder_fields(config.decoder, name)
    refusals = {
        "audio_channels": (d["audio_channels"] != 1, "stereo codebooks are interleaved, divcfg's delay is mono"),
        "activation_function": (d["activation_function"] not in VARIANTS["activation"],
                                f"divcfg's decoder has {', '.join(VARIANTS['activation'])}"),
        "scale_embedding": (bool(d["scale_embedding"]), "transformers computes embed_scale but does not apply it; "
                                                        "which one a checkpoint means is unclear"),
        "cross_attention_hidden_size": (d["cross_attention_hidden_size"] not in (None, d["hidden_size"]),
                                        "cross-attention from another width than the decoder's"),
        "layerdrop": (d["layerdrop"] != 0, "layers skipped at random in training"),
        "tie_word_embeddings": (bool(d["tie_word_embeddings"]), "tied heads and embeddings"),
        "pad_token_id": (not d["pad_token_id"] == d["bos_token_id"] == d["vocab_size"],
                         "MusicGen's layout is pad == bos == vocab_size"),
        "num_attention_heads": (d["hidden_size"] % d["num_attention_heads"] != 0, "heads must divide the width"),
    }
    for field, (refused, why) in refusals.items():
        if refused:
            raise UnsupportedMusicGenError(f"{name}: decoder.{field}={d[field]!r} can't be mapped exactly to "
                                           f"divcfg's decoder ({why}); {_ADAPTER}")


def decoder_policy_config(config, text_max_len: int, name: str = "the model") -> PolicyConfig:
    """The :class:`PolicyConfig` under which divcfg's decoder computes this MusicGen's decoder."""
    check_convertible(config, name)
    d = config.decoder
    return PolicyConfig(
        preset="musicgen", n_codebooks=d.num_codebooks, card=d.vocab_size, dim=d.hidden_size,
        n_layers=d.num_hidden_layers, n_heads=d.num_attention_heads, ffn_dim=d.ffn_dim,
        max_frames=d.max_position_embeddings - d.num_codebooks + 1, text_max_len=text_max_len, cond_pool=False,
        text_word_buckets=0, freeze_text=True, dropout=0.0, positions="sinusoidal",
        activation=d.activation_function, bias=False, head_bias=False, text_encoder="external",
        null_condition="zeros")


# ---- the state-dict mapping ------------------------------------------------------------------------------------------
def name_pairs(n_layers: int, n_codebooks: int) -> list[tuple[str, list[str]]]:
    """``(divcfg name, [MusicgenForCausalLM names])``: the divcfg tensor is the MusicGen ones stacked along dim 0."""
    dec = "model.decoder"
    pairs = [("code_emb.weight", [f"{dec}.embed_tokens.{k}.weight" for k in range(n_codebooks)])]
    for i in range(n_layers):
        ours, theirs = f"layers.{i}", f"{dec}.layers.{i}"
        pairs += [(f"{ours}.self_attn.qkv.weight", [f"{theirs}.self_attn.{p}_proj.weight" for p in "qkv"]),
                  (f"{ours}.self_attn.out.weight", [f"{theirs}.self_attn.out_proj.weight"]),
                  (f"{ours}.cross_attn.q.weight", [f"{theirs}.encoder_attn.q_proj.weight"]),
                  (f"{ours}.cross_attn.kv.weight", [f"{theirs}.encoder_attn.{p}_proj.weight" for p in "kv"]),
                  (f"{ours}.cross_attn.out.weight", [f"{theirs}.encoder_attn.out_proj.weight"]),
                  (f"{ours}.ffn.0.weight", [f"{theirs}.fc1.weight"]),
                  (f"{ours}.ffn.2.weight", [f"{theirs}.fc2.weight"])]
        for norm, their_norm in (("norm1", "self_attn_layer_norm"), ("norm2", "encoder_attn_layer_norm"),
                                 ("norm3", "final_layer_norm")):
            pairs += [(f"{ours}.{norm}.{p}", [f"{theirs}.{their_norm}.{p}"]) for p in ("weight", "bias")]
    pairs += [(f"norm.{p}", [f"{dec}.layer_norm.{p}"]) for p in ("weight", "bias")]
    pairs.append(("heads.weight", [f"lm_heads.{k}.weight" for k in range(n_codebooks)]))
    return pairs


def to_divcfg_state(state: dict[str, torch.Tensor], n_layers: int, n_codebooks: int,
                    partial: bool = False) -> dict[str, torch.Tensor]:
    """A ``MusicgenForCausalLM`` state dict -> ``AudioTokenPolicy``'s. A MusicGen tensor the mapping doesn't know is
    an error naming it (a newer transformers' bias, say); ``partial`` skips divcfg tensors whose parts are all
    absent (a snapshot of the trainable tensors only), never ones with only some parts."""
    out, used = {}, set()
    for ours, theirs in name_pairs(n_layers, n_codebooks):
        present = [t for t in theirs if t in state]
        if partial and not present:
            continue
        if len(present) != len(theirs):
            raise UnsupportedMusicGenError(f"MusicGen decoder state lacks {sorted(set(theirs) - set(present))}, "
                                           f"needed for divcfg's {ours}; {_ADAPTER}")
        out[ours] = torch.cat([state[t] for t in theirs]) if len(theirs) > 1 else state[theirs[0]]
        used.update(theirs)
    unknown = sorted(set(state) - used)
    if unknown:
        raise UnsupportedMusicGenError(f"MusicGen decoder tensors {unknown[:5]} have no place in divcfg's decoder; "
                                       f"{_ADAPTER}")
    return out


def to_musicgen_state(state: dict[str, torch.Tensor], n_layers: int, n_codebooks: int) -> dict[str, torch.Tensor]:
    """The inverse of :func:`to_divcfg_state`: stacked tensors are split back into their equal parts (views)."""
    out = {}
    for ours, theirs in name_pairs(n_layers, n_codebooks):
        if ours in state:
            # Copies, not views: safetensors refuses tensors that share storage.
            parts = state[ours].chunk(len(theirs)) if len(theirs) > 1 else (state[ours],)
            out.update((t, p.clone() if len(theirs) > 1 else p) for t, p in zip(theirs, parts))
    return out


def convert_decoder(decoder: nn.Module, config, text_max_len: int, name: str = "the model") -> AudioTokenPolicy:
    """``MusicgenForCausalLM`` -> an :class:`AudioTokenPolicy` computing the same logits, in the same dtype and on
    the same device. ``config`` is the top-level ``MusicgenConfig``."""
    cfg = decoder_policy_config(config, text_max_len, name)
    with torch.random.fork_rng(devices=[]):  # the random init is overwritten; leave the caller's stream alone
        policy = AudioTokenPolicy(cfg)
    weight = next(decoder.parameters())
    policy.load_state_dict(to_divcfg_state(decoder.state_dict(), cfg.n_layers, cfg.n_codebooks))
    return policy.to(weight.device, weight.dtype).train(decoder.training)


def trainable_modules(policy: AudioTokenPolicy, enc_to_dec_proj: nn.Module | None, train_layers: int) -> list:
    """:func:`divcfg.model.musicgen.loading.trainable_modules` for the converted decoder: 0 trains everything but the
    T5; N > 0 the last N layers, the final norm and the heads."""
    layers = policy.layers
    if not 0 <= train_layers <= len(layers):
        raise ValueError(f"model.train_layers={train_layers} must be in [0, {len(layers)}] (0 = the whole decoder)")
    if train_layers == 0:
        return [policy] + ([enc_to_dec_proj] if enc_to_dec_proj is not None else [])
    return [*layers[len(layers) - train_layers:], policy.norm, policy.heads]
