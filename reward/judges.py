"""The world's judges: codec decoding, the two embedders and the quality scorer, and a policy measurement.

Reward workers use ``reward`` embeddings for the diversity reward; evaluation uses the held-out ``eval`` embedder,
because the reward's own embedder can be gamed (METHOD.md).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from divcfg.codec.offline import Codec, load_codec
from divcfg.common.data.caption_schema import CaptionSchema, load_schema
from divcfg.common.data.captions import ATTRIBUTES, parse_prompt
from divcfg.model.logprob import token_logprobs
from divcfg.reward.clap_judge import ClapLoadError, load_clap_judge
from divcfg.reward.diversity import diversity_reward
from divcfg.reward.embedder import MusicEmbedder, load_embedder
from divcfg.reward.independent_judges import RULES, load_independent
from divcfg.reward.judge_pool import POOLED, JudgePool
from divcfg.reward.scorer import AttributeScorer, adherence, load_scorer

INDEPENDENT_JUDGES = {"pitch": "adherence_judge", "rhythm": "adherence_judge_rhythm", "clap": "adherence_clap"}
"""The independent judges (pretrained by others, so they check the trained scorer) and the name of each one's
adherence in measurements: Basic Pitch for mode, register, texture and density (reward/pitch_judge.py; its name is
the one world.json has always had), madmom for tempo and meter (reward/rhythm_judge.py), and CLAP for any free-text
prompt (reward/clap_judge.py; a judge beside the scorer where the world has one, else the adherence itself)."""


def _world_judges(world_dir: Path) -> dict:
    """``world.json``'s ``judges`` (empty where the world records none)."""
    try:
        return json.loads((world_dir / "world.json").read_text()).get("judges", {}) or {}
    except (OSError, ValueError, AttributeError):
        return {}


def _scorerless(world_dir: Path) -> bool:
    """Whether the world says it has no scorer (``world.json``'s ``judges.scorer`` is null), so a missing scorer/ is
    by design and not a deleted stage."""
    return _world_judges(world_dir).get("scorer", "") is None


def _load_clap(world_dir: Path, clap: str | os.PathLike | None, skipped: dict[str, str]):
    """The CLAP judge of ``clap`` (``--clap`` / ``judge.clap``), else of the directory world.json names, else None.
    A missing transformers is a named skip; a directory that holds no CLAP is an error naming where it came from."""
    source = "--clap" if clap is not None else f"{world_dir / 'world.json'}'s judges.clap"
    clap = clap if clap is not None else _world_judges(world_dir).get("clap")
    if not clap:
        return None
    try:
        return load_clap_judge(clap)
    except ImportError as e:
        skipped["clap"] = f"{e} (pip install 'divcfg[musicgen]')"
    except ClapLoadError as e:
        raise ValueError(f"{source} = {clap}: {e}") from None
    return None


@dataclass
class Judges:
    codec: Codec
    reward_embedder: MusicEmbedder
    eval_embedder: MusicEmbedder
    scorer: AttributeScorer | None
    """None: the world has no attribute labels to learn (a folder world of free-text captions): adherence is NaN."""
    schema: CaptionSchema | None = None
    """The world's attribute table and caption phrases (captions.json); None: the procedural world's."""
    independent: dict[str, object] = field(default_factory=dict)
    """The independent judges the world configures, by name of :data:`INDEPENDENT_JUDGES`: ``pitch``
    (reward.pitch_judge.PitchJudge, where the world has pitch_judge.json) and ``rhythm``
    (reward.rhythm_judge.RhythmJudge, where its captions name tempo and meter)."""
    skipped: dict[str, str] = field(default_factory=dict)
    """Judges the world configures that this install can't run: name -> why (the package missing)."""
    clap: object | None = None
    """The CLAP judge (reward.clap_judge.ClapJudge), where the world or the caller names one. Without a scorer it is
    the adherence (:meth:`adherence`); beside one, it is an independent judge (``independent["clap"]``)."""
    pool: JudgePool | None = None
    """Worker processes holding the world's Basic Pitch and madmom judges (reward/judge_pool.py), which then judge
    there, a chunk of clips per core; None: they judge in this process."""

    @property
    def adherence_by(self) -> str | None:
        """Who :meth:`adherence` asks: ``scorer``, ``clap`` (a world without a scorer) or None (NaN adherence)."""
        return "scorer" if self.scorer is not None else "clap" if self.clap is not None else None

    @property
    def pitch(self):
        """The Basic Pitch judge, or None."""
        return self.independent.get("pitch")

    @staticmethod
    def load(world_dir: str | os.PathLike, codec=None, clap: str | os.PathLike | None = None) -> "Judges":
        """The world's embedders and scorer, with the world's codec or ``codec`` (a policy's own, e.g. MusicGen's
        EnCodec: the codes must be decoded by the codec that made them), and the CLAP judge of ``clap`` or of
        world.json's ``judges.clap``. The embedders, the scorer and CLAP resample whatever rate the codec decodes at
        to the rate they were trained on."""
        d = Path(world_dir)
        independent, skipped = load_independent(d)
        clap_judge = _load_clap(d, clap, skipped)
        for name, why in skipped.items():
            print(f"judges: the {name} judge is skipped: {why}", file=sys.stderr)
        # A folder world trains no scorer where its captions carry no attributes (world.json: judges.scorer null).
        scorer = load_scorer(d / "scorer") if (d / "scorer").exists() or not _scorerless(d) else None
        if clap_judge is not None and scorer is not None:
            independent["clap"] = clap_judge  # beside the scorer it checks it; without one it is the adherence
        return Judges(codec if codec is not None else load_codec(d / "codec"), load_embedder(d / "embedder_reward"),
                      load_embedder(d / "embedder_eval"), scorer, load_schema(d), independent, skipped, clap_judge)

    def with_reward_embedder(self, embedder: str) -> "Judges":
        """These judges with ``reward.embedder`` as their reward embedder: the world's ``reward`` (as loaded), its
        ``eval`` one, or a saved embedder's directory, so that the probe's reward-embedder diversity is the one the
        diversity reward uses."""
        if embedder == "reward":
            return self
        return replace(self, reward_embedder=self.eval_embedder if embedder == "eval" else load_embedder(embedder))

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
        """Quality score ``[N]``: mean scorer probability of the attributes each prompt asks for; without a scorer,
        the CLAP cosine of each clip with its prompt (NaN where the world has neither)."""
        if self.scorer is None:
            if self.clap is not None:
                return self.clap.score(wav, self.codec.sample_rate, prompts)
            return torch.full((len(prompts),), float("nan"))
        probs = self.scorer.predict_proba(wav, self.codec.sample_rate)
        if self.schema is not None:
            # Only the attributes the scorer reads well above chance count (captions.json's "scored").
            requested = [self.schema.scored_only(self.schema.parse(p)) for p in prompts]
            return adherence(probs, requested, self.schema.attributes)
        return adherence(probs, [parse_prompt(p) for p in prompts], ATTRIBUTES)

    def judge_adherence(self, wav: torch.Tensor, prompts: list[str], judge: str = "pitch") -> torch.Tensor:
        """Adherence ``[N]`` by the independent ``judge``: the fraction of the requested attributes it reads that it
        hears as requested; NaN where a prompt requests none of them (or the world has no such judge)."""
        if judge not in INDEPENDENT_JUDGES:
            raise ValueError(f"unknown judge {judge!r}; known: {list(INDEPENDENT_JUDGES)}")
        if judge == "clap" and judge in self.independent:  # free text: no attribute table needed
            return self.independent["clap"].score(wav, self.codec.sample_rate, prompts).double()
        if judge not in self.independent or self.schema is None:
            return torch.full((len(prompts),), float("nan"), dtype=torch.float64)
        rule = RULES[judge]
        requested = [self.schema.parse(p) for p in prompts]
        return torch.as_tensor(rule(self.independent[judge], np.asarray(wav), self.codec.sample_rate, requested))

    def independent_adherence(self, wav: torch.Tensor, prompts: list[str]) -> dict[str, np.ndarray]:
        """:meth:`judge_adherence` float64 ``[N]`` of every independent judge, by name."""
        return self.start_independent(wav, prompts)()

    def start_independent(self, wav: torch.Tensor, prompts: list[str]) -> Callable[[], dict[str, np.ndarray]]:
        """Start :meth:`independent_adherence`: with a :attr:`pool`, its judges start judging there and the caller
        may work meanwhile; calling the result judges the rest here and returns them all."""
        pooled = [n for n in self.independent if self.pool is not None and n in POOLED and self.schema is not None]
        waiting = self.pool.submit(pooled, np.asarray(wav), self.codec.sample_rate,
                                   [self.schema.parse(p) for p in prompts]) if pooled else None

        def finish() -> dict[str, np.ndarray]:
            heard = {name: self.judge_adherence(wav, prompts, name).numpy() for name in self.independent
                     if name not in pooled}
            heard.update(waiting.result() if waiting is not None else {})
            return {name: heard[name] for name in self.independent}
        return finish


def independent_figures(judges: Judges, wav: torch.Tensor, prompts: list[str], groups: tuple[int, int],
                        heard: dict[str, np.ndarray] | None = None) -> dict:
    """Each independent judge's adherence over ``wav [P · G, samples]`` (the clips of ``prompts``, G per prompt) and
    per prompt, under its :data:`INDEPENDENT_JUDGES` name; ``judges_skipped`` names those that can't run here.
    ``heard``: :meth:`Judges.independent_adherence` of these clips, where the caller has it already."""
    out = {}
    for name, by_clip in (judges.independent_adherence(wav, prompts) if heard is None else heard).items():
        metric = INDEPENDENT_JUDGES[name]
        out[metric] = None if np.isnan(by_clip).all() else float(np.nanmean(by_clip))
        out[f"{metric}_by_prompt"] = [None if np.isnan(a).all() else float(np.nanmean(a))
                                      for a in by_clip.reshape(groups)]
    if judges.skipped:
        out["judges_skipped"] = dict(judges.skipped)
    return out


@torch.no_grad()
def teacher_loglik(teacher, codes: torch.Tensor, prompts: list[str], guidance_scale: float) -> torch.Tensor:
    """Mean per-token log-likelihood ``[N]`` of ``codes [N, K, T]`` under the CFG-guided ``teacher``."""
    cond = teacher.encode_condition(prompts)
    logits = teacher.guided_logits(codes.to(teacher.device), cond, guidance_scale)
    return token_logprobs(logits, codes.to(teacher.device)).mean(dim=(1, 2)).cpu()


def measure_policy(policy, judges: Judges, prompts: list[str], samples: int, guidance_scale: float, n_frames: int,
                   seed: int = 0, teacher=None, teacher_scale: float = 3.0, batch: int = 0,
                   fad_reference: np.ndarray | None = None, kad_bandwidth: float | None = None) -> dict:
    """Sample ``samples`` clips per prompt and score them.

    Every call with the same ``prompts``, ``samples``, ``seed`` and ``batch`` draws the same random numbers, so the
    per-prompt scores of two policies pair prompt by prompt (what the evaluation's paired bootstrap needs).
    ``batch`` > 0 generates that many clips per call (whole prompts, so a group never straddles two calls); 0 all
    ``len(prompts) × samples`` at once. ``frames_per_s`` counts generation only, at that batch.

    Returns ``adherence`` (:meth:`Judges.adherence`; ``adherence_by`` says whose), ``diversity`` (held-out embedder, 1 − mean pairwise cosine per prompt, averaged),
    ``diversity_reward_embedder`` (the same with the reward embedder), ``teacher_loglik`` (when a teacher is given),
    ``frames_per_s``, ``forward_passes_per_token``, and per prompt (lists of ``len(prompts)``, for paired
    comparisons): ``adherence_by_prompt`` (None where the prompt asked for nothing the scorer reads),
    ``diversity_by_prompt`` and ``diversity_reward_embedder_by_prompt``. With ``fad_reference`` (held-out-embedder
    features of real clips), ``fad``: :func:`divcfg.reward.fad.fad_report` of the samples against them, and ``kad``:
    :func:`divcfg.reward.kad.kad_interval` at ``kad_bandwidth`` (default: the real clips' median distance). Per
    independent judge the world has, its adherence and per prompt (names in :data:`INDEPENDENT_JUDGES`), and
    ``judges_skipped`` (name -> why) for those it configures that can't run here.
    """
    gen = torch.Generator().manual_seed(seed)
    all_prompts = [p for p in prompts for _ in range(samples)]
    per_call = len(all_prompts) if batch <= 0 else max(1, batch // samples) * samples
    codes, seconds = [], 0.0
    for i in range(0, len(all_prompts), per_call):
        chunk = all_prompts[i:i + per_call]
        start = time.perf_counter()
        out = policy.generate(policy.encode_condition(chunk), n_frames, guidance_scale=guidance_scale, generator=gen)
        seconds += time.perf_counter() - start
        codes.append(out.codes)
    codes = torch.cat(codes)  # [len(prompts) · samples, K, T]
    wav = judges.decode(codes)
    judging = judges.start_independent(wav, all_prompts)  # in the pool's processes, if any, while the rest runs here
    groups = len(prompts), samples
    eval_emb = judges.embed(wav, "eval")  # [P · samples, E]
    div_eval = diversity_reward(eval_emb.view(*groups, -1)).mean(-1)  # [P]
    div_reward = diversity_reward(judges.embed(wav, "reward").view(*groups, -1)).mean(-1)
    adh = judges.adherence(wav, all_prompts)
    with warnings.catch_warnings():  # all NaN where nothing asked is read (or there is no scorer): None below
        warnings.simplefilter("ignore", RuntimeWarning)
        by_prompt, adh_mean = np.nanmean(adh.numpy().reshape(groups), axis=1), float(np.nanmean(adh.numpy()))
    result = {"adherence": adh_mean, "adherence_by": judges.adherence_by, "diversity": float(div_eval.mean()),
              "diversity_reward_embedder": float(div_reward.mean()),
              "frames_per_s": len(all_prompts) * n_frames / seconds,
              "forward_passes_per_token": 2 if guidance_scale != 1.0 else 1}
    if teacher is not None:
        result["teacher_loglik"] = float(torch.cat([
            teacher_loglik(teacher, codes[i:i + per_call], all_prompts[i:i + per_call], teacher_scale)
            for i in range(0, len(all_prompts), per_call)]).mean())
    result = {k: (v if not (isinstance(v, float) and math.isnan(v)) else None) for k, v in result.items()}
    result["adherence_by_prompt"] = [None if math.isnan(a) else float(a) for a in by_prompt]
    result["diversity_by_prompt"] = [float(d) for d in div_eval]
    result["diversity_reward_embedder_by_prompt"] = [float(d) for d in div_reward]
    result.update(independent_figures(judges, wav, all_prompts, groups, judging()))  # beside the scorer
    if fad_reference is not None:  # held-out-embedder features [N, E] of real clips
        result.update(distances_to_real(eval_emb.numpy(), fad_reference, kad_bandwidth, seed))
    return result


def distances_to_real(eval_emb: np.ndarray, reference: np.ndarray, kad_bandwidth: float | None, seed: int) -> dict:
    """``fad`` (with interval, reward/fad.py) and ``kad`` of samples' held-out-embedder features against real clips'."""
    from divcfg.reward.fad import fad_report
    from divcfg.reward.kad import kad_interval, reference_bandwidth
    # One bandwidth for every row (the real clips' own median distance): KAD values compare only at one
    bandwidth = kad_bandwidth if kad_bandwidth is not None else reference_bandwidth(reference)
    return {"fad": fad_report(eval_emb, reference, seed=seed),
            "kad": kad_interval(eval_emb, reference, bandwidth=bandwidth, seed=seed)}
