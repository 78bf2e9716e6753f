"""The world's judges: codec decoding, the two embedders and the quality scorer, and a policy measurement.

Reward workers use ``reward`` embeddings for the diversity reward; evaluation uses the held-out ``eval`` embedder,
because the reward's own embedder can be gamed (METHOD.md).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from divcfg.common.codec import Codec, load_codec
from divcfg.common.captions import ATTRIBUTES, parse_prompt
from divcfg.reward.diversity import diversity_reward
from divcfg.reward.embedder import MusicEmbedder, load_embedder
from divcfg.reward.scorer import AttributeScorer, adherence, load_scorer


@dataclass
class Judges:
    codec: Codec
    reward_embedder: MusicEmbedder
    eval_embedder: MusicEmbedder
    scorer: AttributeScorer

    @staticmethod
    def load(world_dir: str | os.PathLike, codec=None) -> "Judges":
        """The world's embedders and scorer, with the world's codec or ``codec`` (a policy's own, e.g. MusicGen's
        EnCodec: the codes must be decoded by the codec that made them). The embedders and the scorer resample
        whatever rate the codec decodes at to the rate they were trained on."""
        d = Path(world_dir)
        return Judges(codec if codec is not None else load_codec(d / "codec"), load_embedder(d / "embedder_reward"),
                      load_embedder(d / "embedder_eval"), load_scorer(d / "scorer"))

    @torch.inference_mode()
    def decode(self, codes) -> torch.Tensor:
        """Codes ``[N, K, T]`` -> audio ``[N, samples]`` at ``codec.sample_rate``."""
        return self.codec.decode(torch.as_tensor(np.asarray(codes), dtype=torch.long))

    @torch.inference_mode()
    def embed(self, wav: torch.Tensor, which: str = "reward") -> torch.Tensor:
        """Unit-norm embeddings ``[N, E]`` of audio ``[N, samples]`` by the ``reward`` or ``eval`` embedder."""
        model = {"reward": self.reward_embedder, "eval": self.eval_embedder}[which]
        return model.embed(wav, self.codec.sample_rate)

    @torch.inference_mode()
    def adherence(self, wav: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Quality score ``[N]``: mean scorer probability of the attributes each prompt asks for."""
        probs = self.scorer.predict_proba(wav, self.codec.sample_rate)
        return adherence(probs, [parse_prompt(p) for p in prompts], ATTRIBUTES)


@torch.no_grad()
def teacher_loglik(teacher, codes: torch.Tensor, prompts: list[str], guidance_scale: float) -> torch.Tensor:
    """Mean per-token log-likelihood ``[N]`` of ``codes [N, K, T]`` under the CFG-guided ``teacher``."""
    cond = teacher.encode_condition(prompts)
    logits = teacher.guided_logits(codes.to(teacher.device), cond, guidance_scale)
    lp = torch.log_softmax(logits.float(), -1).gather(-1, codes.to(teacher.device)[..., None]).squeeze(-1)
    return lp.mean(dim=(1, 2)).cpu()


def measure_policy(policy, judges: Judges, prompts: list[str], samples: int, guidance_scale: float, n_frames: int,
                   seed: int = 0, teacher=None, teacher_scale: float = 3.0) -> dict[str, float]:
    """Sample ``samples`` clips per prompt and score them.

    Returns ``adherence`` (scorer), ``diversity`` (held-out embedder, 1 − mean pairwise cosine per prompt, averaged),
    ``diversity_reward_embedder`` (the same with the reward embedder), ``teacher_loglik`` (when a teacher is given),
    ``frames_per_s``, ``forward_passes_per_token`` and ``adherence_by_prompt`` (a list, one mean per prompt).
    """
    gen = torch.Generator().manual_seed(seed)
    all_prompts = [p for p in prompts for _ in range(samples)]
    start = time.perf_counter()
    out = policy.generate(policy.encode_condition(all_prompts), n_frames, guidance_scale=guidance_scale, generator=gen)
    seconds = time.perf_counter() - start
    wav = judges.decode(out.codes)
    groups = len(prompts), samples
    div_eval = diversity_reward(judges.embed(wav, "eval").view(*groups, -1)).mean(-1)
    div_reward = diversity_reward(judges.embed(wav, "reward").view(*groups, -1)).mean(-1)
    adh = judges.adherence(wav, all_prompts)
    by_prompt = np.nanmean(adh.numpy().reshape(groups), axis=1)
    result = {"adherence": float(np.nanmean(adh.numpy())), "diversity": float(div_eval.mean()),
              "diversity_reward_embedder": float(div_reward.mean()),
              "frames_per_s": len(all_prompts) * n_frames / seconds,
              "forward_passes_per_token": 2 if guidance_scale != 1.0 else 1}
    if teacher is not None:
        result["teacher_loglik"] = float(teacher_loglik(teacher, out.codes, all_prompts, teacher_scale).mean())
    result = {k: (v if not (isinstance(v, float) and math.isnan(v)) else None) for k, v in result.items()}
    # Per prompt, for paired comparisons between policies measured on the same prompts (None: nothing requested).
    result["adherence_by_prompt"] = [None if math.isnan(a) else float(a) for a in by_prompt]
    return result
