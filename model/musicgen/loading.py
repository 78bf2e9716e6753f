"""Getting a transformers MusicGen: the variants the adapter supports, loading a checkpoint (Hub id or local
directory), the tiny random model tests build in code, its byte tokenizer, and which modules the learner trains."""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from divcfg.codec.musicgen import UnsupportedMusicGenError

if TYPE_CHECKING:
    from transformers import MusicgenConfig, MusicgenForConditionalGeneration

TINY = "tiny-random"
"""The ``model.musicgen`` value that builds :func:`tiny_musicgen` in code (random weights, no download)."""


class MusicGenLoadError(OSError):
    """A MusicGen checkpoint that can't be loaded (offline, missing files); the message says how to get it."""



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
        if Path(name_or_path).is_dir():  # a local directory: no download would mend it, its files are what's wrong
            raise MusicGenLoadError(f"could not load the MusicGen directory {name_or_path!r} ({type(e).__name__}: "
                                    f"{e}). Copy the whole model directory (config.json, the weights, the tokenizer "
                                    f"files), as `hf download ID --local-dir DIR` or save_pretrained writes it") from None
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
    from transformers import MusicgenForConditionalGeneration  # optional extra (divcfg[musicgen])

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
