"""A CLAP adherence judge: how well a clip matches its prompt, by a pretrained text-audio model (LAION CLAP).

The score of a clip is the cosine between CLAP's embedding of the prompt (``ClapModel.get_text_features``) and of
the clip (``get_audio_features``), in [−1, 1]; a set of clips reports the mean cosine, as MusicGen's evaluation
(audiocraft's CLAP text consistency) does. Some papers report 100 × max(cos, 0) per clip (the CLIPScore convention)
or the plain cosine ×100: those are per-clip transforms, so compare against them from the per-clip scores, not from
the mean.

The model is a local directory holding what ``ClapModel`` / ``ClapProcessor.save_pretrained`` (or ``hf download
laion/larger_clap_music --local-dir DIR``) writes; nothing is fetched. Clips are resampled to CLAP's own rate (the
feature extractor's ``sampling_rate``, 48 kHz) by ``torchaudio.functional.resample`` (band-limited sinc; soxr is not
installed here), then go through the checkpoint's own feature extractor, which pads a clip shorter than its 10 s
window (by repeating it, for the LAION checkpoints) and crops a longer one at random. The judge makes that crop
reproducible: each clip's extraction runs under numpy's global generator seeded with ``seed``, and the caller's
numpy state is restored after. For a fusion model, the extractor marks one random clip of an all-short batch as
"longer" (a training-time trick); the judge passes the clips' true lengths instead, so a clip's score does not depend
on the clips batched with it.

transformers is an optional extra (``musicgen``/``dev``): it is imported inside the loader.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio.functional as AF


class ClapLoadError(OSError):
    """A directory that doesn't hold a loadable CLAP; the message names the directory and what it holds."""


class ClapJudge:
    """Cosine between a prompt's and a clip's CLAP embeddings, batched. ``model`` is a transformers ``ClapModel``,
    ``processor`` its ``ClapProcessor``; ``batch_size`` clips (or prompts) go through the model at once."""

    def __init__(self, model, processor, device: str | torch.device = "cpu", batch_size: int = 8, seed: int = 0):
        self.model = model.eval().to(device)
        self.processor = processor
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.sample_rate = int(processor.feature_extractor.sampling_rate)
        """CLAP's own rate (48 kHz for the LAION checkpoints): every clip is resampled to it."""

    @torch.inference_mode()
    def embed_text(self, prompts: list[str]) -> torch.Tensor:
        """Unit-norm text embeddings ``[B, E]`` (float32, CPU) of ``B`` prompts."""
        tokenizer = self.processor.tokenizer
        # RoBERTa's positions start after the padding index, so a text model of P positions takes P − 2 tokens.
        max_len = min(int(tokenizer.model_max_length), self.model.config.text_config.max_position_embeddings - 2)
        out = []
        for i in range(0, len(prompts), self.batch_size):
            tokens = tokenizer(list(prompts[i:i + self.batch_size]), padding=True, truncation=True,
                               max_length=max_len, return_tensors="pt").to(self.device)
            out.append(self.model.get_text_features(input_ids=tokens["input_ids"],
                                                    attention_mask=tokens["attention_mask"]).pooler_output)
        return F.normalize(torch.cat(out).float(), dim=-1).cpu()

    @torch.inference_mode()
    def embed_audio(self, wavs: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """Unit-norm audio embeddings ``[B, E]`` (float32, CPU) of mono clips ``wavs [B, N]`` at ``sample_rate``."""
        wavs = torch.as_tensor(wavs, dtype=torch.float32).detach().cpu()  # the extractor works on numpy, on CPU
        if wavs.ndim != 2 or wavs.shape[1] == 0:
            raise ValueError(f"CLAP judge: expected mono clips [B, N], got shape {tuple(wavs.shape)}")
        if int(sample_rate) != self.sample_rate:
            wavs = AF.resample(wavs, int(sample_rate), self.sample_rate)
        dtype, out = next(self.model.parameters()).dtype, []
        for i in range(0, len(wavs), self.batch_size):
            features, is_longer = self._features(wavs[i:i + self.batch_size].numpy())
            out.append(self.model.get_audio_features(input_features=features.to(self.device, dtype),
                                                     is_longer=is_longer.to(self.device)).pooler_output)
        return F.normalize(torch.cat(out).float(), dim=-1).cpu()

    def _features(self, clips: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The feature extractor's mels ``[b, C, T, mels]`` for clips ``[b, N]`` at CLAP's rate, one clip at a time
        under numpy's generator seeded with ``self.seed`` (its random crop), and each clip's true ``is_longer [b, 1]``
        in place of the extractor's random pick."""
        extractor = self.processor.feature_extractor
        state = np.random.get_state()
        try:
            mels = []
            for clip in clips:
                np.random.seed(self.seed)
                mels.append(extractor(clip, sampling_rate=self.sample_rate, return_tensors="pt")["input_features"])
        finally:
            np.random.set_state(state)
        # Longer: more mel frames (1 + N // hop) than the window's, the extractor's test for fusion; a plain (unfused)
        # model ignores is_longer.
        longer = clips.shape[1] // extractor.hop_length > extractor.nb_max_samples // extractor.hop_length
        return torch.cat(mels), torch.full((len(clips), 1), bool(longer))

    def score(self, wavs: torch.Tensor, sample_rate: int, prompts: list[str]) -> torch.Tensor:
        """Cosine ``[B]`` (float32, CPU) between clip ``b`` of ``wavs [B, N]`` at ``sample_rate`` and ``prompts[b]``.
        A prompt shared by several clips (samples of one prompt) is embedded once."""
        wavs = torch.as_tensor(wavs, dtype=torch.float32).detach().cpu()
        if wavs.ndim != 2 or len(prompts) != len(wavs):
            raise ValueError(f"CLAP judge: expected mono clips [B, N] and B prompts, got clips of shape "
                             f"{tuple(wavs.shape)} and {len(prompts)} prompts")
        row = {p: i for i, p in enumerate(dict.fromkeys(prompts))}
        text = self.embed_text(list(row))[[row[p] for p in prompts]]
        return (self.embed_audio(wavs, sample_rate) * text).sum(-1)


def check_clap_dir(directory: str | Path) -> Path:
    """``directory`` as a Path if its config.json is a CLAP's (``model_type`` "clap"), else :class:`ClapLoadError`
    naming the directory and what it holds instead."""
    d = Path(directory).expanduser()
    hint = "point it at a local CLAP, e.g. `hf download laion/larger_clap_music --local-dir DIR`"
    if not d.is_dir():
        raise ClapLoadError(f"CLAP judge: {d} is not a directory; {hint}")
    config = d / "config.json"
    if not config.is_file():
        held = sorted(p.name for p in d.iterdir())
        listing = ", ".join(held[:8]) + (", ..." if len(held) > 8 else "") if held else "nothing"
        raise ClapLoadError(f"CLAP judge: {d} holds no config.json (it holds {listing}); {hint}")
    try:
        meta = json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ClapLoadError(f"CLAP judge: {config} is not valid JSON ({e}); {hint}") from None
    model_type = meta.get("model_type") if isinstance(meta, dict) else None
    if model_type != "clap":
        what = f"a {model_type!r} model" if model_type else "a config.json without a model_type"
        archs = meta.get("architectures") if isinstance(meta, dict) else None
        raise ClapLoadError(f"CLAP judge: {d} holds {what}{f' ({archs[0]})' if archs else ''}, not a CLAP "
                            f"(model_type 'clap'); {hint}")
    return d


def load_clap_judge(directory: str | Path, device: str | torch.device = "cpu", batch_size: int = 8,
                    seed: int = 0) -> ClapJudge:
    """A :class:`ClapJudge` from a local CLAP directory (``local_files_only``: nothing is fetched)."""
    d = check_clap_dir(directory)
    # transformers is an optional extra (musicgen/dev): imported here, not at module level.
    from transformers import ClapModel, ClapProcessor  # optional extra (divcfg[musicgen])

    try:
        model = ClapModel.from_pretrained(str(d), local_files_only=True)
        processor = ClapProcessor.from_pretrained(str(d), local_files_only=True)
    except OSError as e:  # transformers reports missing weights or processor files as OSError
        raise ClapLoadError(f"CLAP judge: could not load the CLAP in {d} ({type(e).__name__}: {e})") from None
    fusion, truncation = bool(model.config.audio_config.enable_fusion), processor.feature_extractor.truncation
    if fusion != (truncation == "fusion"):
        raise ClapLoadError(
            f"CLAP judge: {d}'s feature extractor has truncation={truncation!r}, but its audio model has "
            f"enable_fusion={fusion}: a fusion model takes 4 mels per clip ('fusion'), a plain one 1 ('rand_trunc'). "
            f"Fix preprocessor_config.json or processor_config.json")
    return ClapJudge(model, processor, device, batch_size, seed)
