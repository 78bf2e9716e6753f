"""One config dataclass per component, composed by Hydra's defaults lists (``conf/``).

The dataclasses are registered in Hydra's ConfigStore as schemas, so an unknown key or a wrong type fails at start-up
with Hydra's message naming it; :func:`validate_train` then checks the values and names the bad field.
Required values are ``???``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING
from omegaconf.errors import InterpolationResolutionError


@dataclass
class ModelConfig:
    """The policy: divcfg's own (:class:`divcfg.common.policy.PolicyConfig`; K and V come from the codec) or Hugging
    Face MusicGen (:mod:`divcfg.common.musicgen`; its architecture comes from the checkpoint)."""

    family: str = "divcfg"
    """divcfg (the in-repo AudioTokenPolicy) or musicgen (needs the musicgen extra: pip install 'divcfg[musicgen]')."""
    preset: str = "small"
    """divcfg: size preset tiny, small, medium or base."""
    dim: Optional[int] = None
    """divcfg: override the preset's width."""
    n_layers: Optional[int] = None
    """divcfg: override the preset's decoder depth."""
    n_heads: Optional[int] = None
    """divcfg: override the preset's head count."""
    text_max_len: int = 96
    """Longest prompt: UTF-8 bytes (divcfg) or T5 tokens with EOS (musicgen)."""
    truncate_prompts: bool = False
    """Cut prompts longer than ``text_max_len`` instead of refusing them."""
    musicgen: Optional[str] = None
    """musicgen: a Hub id (facebook/musicgen-small), a local directory (``hf download ID --local-dir DIR``), or
    tiny-random (a tiny random model built in code, for tests)."""
    train_layers: int = 0
    """musicgen: train only the last N decoder layers (and the output heads above them); 0 trains the whole decoder.
    The T5 text encoder is always frozen."""
    local_files_only: bool = False
    """musicgen: never reach the Hub; the weights must be in the Hugging Face cache or in a local directory
    (``HF_HUB_OFFLINE=1`` does the same)."""


@dataclass
class CodecConfig:
    """The codec rollouts and rewards decode with (``codec=world`` or ``codec=musicgen``; unset: the policy's own)."""

    source: str = "auto"
    """auto: the policy's own codec (the world's offline codec for divcfg policies, MusicGen's 32 kHz EnCodec for
    MusicGen); world: the world's codec; musicgen: the EnCodec inside ``model.musicgen``. A codec whose codes the
    policy was not trained on (sample rate, frame rate, codebooks, cardinality) is refused before any work."""


@dataclass
class WorldRef:
    """Which offline world (codec, base model, embedders, scorer, prompts) a job uses."""

    size: str = "small"
    """World size: tiny (tests) or small (quickstart and acceptance runs)."""
    dir: str = "worlds/${world.size}"
    """Where the world lives; built there first if missing."""
    seed: int = 0
    """Seed of the world build."""


@dataclass
class AlgoConfig:
    """The method's hyperparameters (METHOD.md)."""

    beta: float = 0.0
    """β: weight of the diversity policy-gradient loss; 0 = pure CFG distillation."""
    guidance_scale: float = 3.0
    """γ of the CFG teacher; must be >= 1."""
    group_size: int = 4
    """G: samples per prompt; >= 2 when beta > 0 (the reward compares samples within a group)."""
    batch_prompts: int = 4
    """Prompts (groups) per learner step."""
    lr: float = 1e-4
    """Adam learning rate of the student."""
    baseline: str = "loo"
    """REINFORCE baseline inside a group: none, mean or loo (leave-one-out)."""
    kl_reduction: str = "mean"
    """How L_distill reduces a sample's per-code KLs: mean (METHOD.md) or sum, the per-sequence KL on the scale of
    L_pg, which sums log-probs over the same codes. With mean, β weighs each code's policy gradient K·T times more
    than its KL (300× on the small world), so the paper's β = 15 is REINFORCE alone here (RESULTS.md, "Why β = 15
    loses adherence"); with sum, β = 15 weighs them as the formula's two terms are written per sequence."""
    max_policy_lag: int = 2
    """Groups generated more than this many versions behind the learner are dropped as stale."""
    is_clip: float = 2.0
    """Truncation of the per-sequence importance weight for off-policy samples."""
    n_frames: int = 0
    """Frames per rollout; 0 = the world's clip length."""
    temperature: float = 1.0
    """Sampling temperature of the rollouts (1 keeps them on-policy for the method's estimators)."""


@dataclass
class ActorsConfig:
    """The rollout-actor pool."""

    count: int = 2
    """Number of rollout actors."""
    num_gpus: float = 0.0
    """GPUs per actor (fractional allowed); 0 runs on CPU."""
    num_cpus: float = 1.0
    """CPUs Ray reserves per actor."""
    threads: int = 1
    """torch threads per actor."""
    groups_per_call: int = 2
    """Groups an actor generates per call, as one batch of groups_per_call × G rows under one policy version. A
    decoding step reads every weight once whatever the batch, so on a CPU two groups per call cost about 1.2× one
    (small world: 0.20 s against 0.17 s; the pipeline benchmark's figures are in BENCHMARKS.md); on a GPU raise it
    until the actor's batch fills the device. 1 hands scoring each group as soon as it exists."""
    dtype: str = "fp32"
    """Precision of the actors' copy of the student: fp32, or bf16 (weights cast on load; sampling, log-probs and the
    KV cache follow), which halves the weight bytes each decoding step reads: for GPUs. On this project's 2-core CPU
    it was slower for the small world's model (0.24 against 0.17 s per group). The learner stays fp32: the stored
    bf16 log-probs only enter its truncated importance weights, which correct the small precision mismatch like any
    other behaviour-policy difference."""


@dataclass
class AutoscaleConfig:
    """Ray autoscaler requests for the rollout pool (a cluster with an autoscaler: deploy/'s launcher or KubeRay)."""

    min: int = 0
    """Fewest rollout actors the pool keeps, whatever `divcfg scale` asks for."""
    max: int = 0
    """Most rollout actors; above 0 turns autoscaling on: each new target (clamped to [min, max]) is sent to Ray's
    autoscaler with ``request_resources`` as one bundle per actor and per reward worker, so nodes are added before
    the actors wait for them. 0: off (the pool takes what the cluster has)."""


@dataclass
class RewardConfig:
    """The reward workers."""

    count: int = 1
    """Number of reward workers."""
    num_cpus: float = 1.0
    """CPUs Ray reserves per worker."""
    num_gpus: float = 0.0
    """GPUs per worker."""
    threads: int = 1
    """torch threads per worker."""
    embedder: str = "reward"
    """Which world embedder scores diversity: reward (default) or eval (only to study reward hacking)."""
    batch_groups: int = 8
    """Most groups one scoring call takes: an idle worker takes every waiting group up to this many at once."""


@dataclass
class LearnerConfig:
    """The central learner."""

    steps: int = 0
    """Learner updates in the run; 0 = the world's default (tiny: 12, small: 150)."""
    device: str = "auto"
    """auto, cpu or cuda."""
    threads: int = 1
    """torch threads of the learner."""
    grad_clip: float = 1.0
    """Global gradient-norm clip."""
    amp: bool = True
    """bf16 autocast on GPU (ignored on CPU)."""
    publish_every: int = 1
    """Publish weights to the actors every N updates."""
    mode: str = "async"
    """async (actors keep generating while the learner trains), sync (the reference), or local (no Ray)."""
    queue_groups: int = 0
    """Bound of the ready-group queue (0 = 2 × batch_prompts)."""
    max_nonfinite: int = 3
    """Stop after this many consecutive non-finite losses (each one is skipped)."""
    max_role_failures: int = 5
    """Stop when one role fails this many times in a row."""
    num_gpus: float = 0.0
    """GPUs the learner asks Ray for."""


@dataclass
class EvalProbeConfig:
    """The held-out measurement at the start and end of a run."""

    prompts: int = 8
    """Held-out prompts measured."""
    samples: int = 4
    """Samples per prompt (diversity needs >= 2)."""


@dataclass
class LoggingConfig:
    """TensorBoard and console output."""

    every: int = 1
    """Scalars every N steps."""
    audio_every: int = 25
    """Audio samples to TensorBoard every N steps (0 = never)."""
    progress: bool = True
    """Console progress line."""


@dataclass
class CheckpointConfig:
    """Training checkpoints under ``run.dir/checkpoints``."""

    every: int = 25
    """Checkpoint every N steps (and at the end)."""
    keep: int = 2
    """Complete checkpoints kept."""


@dataclass
class RunConfig:
    """Where the run writes and how it starts."""

    dir: str = "runs/${now:%Y%m%d-%H%M%S}"
    """Run directory: TensorBoard events, checkpoints, summary.json."""
    seed: int = 0
    """Seed of the run."""
    resume: Optional[str] = None
    """A run directory to continue from its last complete checkpoint; ``auto`` continues run.dir's own when it has
    one and starts fresh otherwise (what `divcfg submit --max-retries` passes to a retried job)."""
    ray_address: Optional[str] = None
    """Ray cluster address; unset = RAY_ADDRESS, the enclosing Ray job, or a new local instance."""


@dataclass
class TrainConfig:
    """`divcfg train`: every component's config."""

    model: ModelConfig = field(default_factory=ModelConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    world: WorldRef = field(default_factory=WorldRef)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    actors: ActorsConfig = field(default_factory=ActorsConfig)
    autoscale: AutoscaleConfig = field(default_factory=AutoscaleConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    probe: EvalProbeConfig = field(default_factory=EvalProbeConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    run: RunConfig = field(default_factory=RunConfig)


@dataclass
class PretrainConfig:
    """Supervised next-token pretraining of the base policy."""

    steps: int = 1000
    """Optimizer steps."""
    batch_size: int = 32
    """Sequences per step."""
    lr: float = 1e-3
    """Peak AdamW learning rate (linear warm-up, cosine decay)."""
    warmup: int = 50
    """Warm-up steps."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    cond_dropout: float = 0.15
    """Probability of replacing a prompt by the null condition: trains the unconditional branch CFG needs."""
    grad_clip: float = 1.0
    """Global gradient-norm clip."""
    log_every: int = 10
    """TensorBoard scalars every N steps."""
    ckpt_every: int = 200
    """Resumable checkpoint every N steps (and at the end)."""
    seed: int = 0
    """Seed of initialisation, batches and dropout."""


@dataclass
class PretrainJobConfig:
    """`divcfg pretrain`: a token dataset in, a base policy checkpoint out."""

    data: str = MISSING
    """Token dataset (Parquet from `divcfg world build` or `divcfg tokenize`)."""
    out: str = MISSING
    """Output directory: TensorBoard events, checkpoints/, and the final policy in base/."""
    model: ModelConfig = field(default_factory=ModelConfig)
    train: PretrainConfig = field(default_factory=PretrainConfig)
    threads: int = 0
    """torch threads (0 = all cores)."""
    resume: bool = True
    """Continue from out/checkpoints/latest when it exists."""


ROLLOUT_DTYPES = ("fp32", "bf16")


class ConfigError(ValueError):
    """A config value that can't be used; the message names the field."""


def check(condition: bool, name: str, value: Any, why: str) -> None:
    if not condition:
        raise ConfigError(f"{name}={value!r}: {why}")


def validate_model(m) -> None:
    """Value checks of a :class:`ModelConfig` (or its DictConfig)."""
    check(m.family in ("divcfg", "musicgen"), "model.family", m.family, "must be divcfg or musicgen")
    check(m.family != "musicgen" or bool(m.musicgen), "model.musicgen", m.musicgen,
          "model.family=musicgen needs a Hub id, a local directory or tiny-random")
    check(m.train_layers >= 0, "model.train_layers", m.train_layers, "must be >= 0 (0 = the whole decoder)")
    check(m.text_max_len >= 1, "model.text_max_len", m.text_max_len, "must be >= 1")


def validate_train(cfg) -> None:
    """Value checks that a schema can't express. ``cfg`` is the composed DictConfig or a TrainConfig."""
    validate_model(cfg.model)
    for key in ("dir", "resume"):
        try:
            value = getattr(cfg.run, key)
        except InterpolationResolutionError:  # ${now:...}, which only Hydra resolves: not a URI
            continue
        check(value is None or "://" not in str(value), f"run.{key}", value,
              "object-storage URIs are not supported for run directories (checkpoints need local atomic renames); "
              "mount the bucket on every node and give the mount path")
    check(cfg.codec.source in ("auto", "world", "musicgen"), "codec.source", cfg.codec.source,
          "must be auto, world or musicgen")
    check(cfg.codec.source != "musicgen" or cfg.model.family == "musicgen", "codec.source", cfg.codec.source,
          f"MusicGen's EnCodec makes the codes of a MusicGen policy, and model.family={cfg.model.family}: use "
          f"model=musicgen_small (or _medium, _large, _tiny), or codec=world")
    a = cfg.algo
    check(a.beta >= 0, "algo.beta", a.beta, "must be >= 0")
    check(a.guidance_scale >= 1, "algo.guidance_scale", a.guidance_scale, "the CFG teacher needs γ >= 1")
    check(a.group_size >= 1, "algo.group_size", a.group_size, "must be >= 1")
    check(a.beta == 0 or a.group_size >= 2, "algo.group_size", a.group_size,
          f"must be >= 2 when algo.beta={a.beta} > 0: the diversity reward compares samples within a group")
    check(a.batch_prompts >= 1, "algo.batch_prompts", a.batch_prompts, "must be >= 1")
    check(a.lr > 0, "algo.lr", a.lr, "must be > 0")
    check(a.baseline in ("none", "mean", "loo"), "algo.baseline", a.baseline, "must be none, mean or loo")
    check(a.kl_reduction in ("mean", "sum"), "algo.kl_reduction", a.kl_reduction, "must be mean or sum")
    check(a.max_policy_lag >= 0, "algo.max_policy_lag", a.max_policy_lag, "must be >= 0")
    check(a.is_clip >= 1, "algo.is_clip", a.is_clip, "must be >= 1")
    check(a.temperature > 0, "algo.temperature", a.temperature, "must be > 0")
    check(cfg.world.size in ("tiny", "small"), "world.size", cfg.world.size, "must be tiny or small")
    check(cfg.actors.count >= 1, "actors.count", cfg.actors.count, "must be >= 1")
    check(cfg.autoscale.min >= 0, "autoscale.min", cfg.autoscale.min, "must be >= 0")
    check(cfg.autoscale.max >= 0, "autoscale.max", cfg.autoscale.max, "must be >= 0 (0 turns autoscaling off)")
    if cfg.autoscale.max:
        check(cfg.autoscale.min <= cfg.autoscale.max, "autoscale.min", cfg.autoscale.min,
              f"must be <= autoscale.max={cfg.autoscale.max}")
    check(cfg.actors.num_gpus >= 0, "actors.num_gpus", cfg.actors.num_gpus, "must be >= 0")
    check(cfg.actors.groups_per_call >= 1, "actors.groups_per_call", cfg.actors.groups_per_call, "must be >= 1")
    check(cfg.actors.dtype in ROLLOUT_DTYPES, "actors.dtype", cfg.actors.dtype, f"must be one of {ROLLOUT_DTYPES}")
    check(cfg.reward.count >= 1, "reward.count", cfg.reward.count, "must be >= 1")
    check(cfg.reward.embedder in ("reward", "eval"), "reward.embedder", cfg.reward.embedder, "must be reward or eval")
    check(cfg.learner.steps >= 0, "learner.steps", cfg.learner.steps, "must be >= 0 (0 = the world's default)")
    check(cfg.learner.mode in ("async", "sync", "local"), "learner.mode", cfg.learner.mode,
          "must be async, sync or local")
    check(cfg.learner.device in ("auto", "cpu", "cuda"), "learner.device", cfg.learner.device,
          "must be auto, cpu or cuda")
    check(cfg.probe.samples >= 2, "probe.samples", cfg.probe.samples, "diversity needs >= 2 samples per prompt")
    check(cfg.checkpoint.every >= 1, "checkpoint.every", cfg.checkpoint.every, "must be >= 1")


def register_configs() -> None:
    """Register the schemas in Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="pretrain_schema", node=PretrainJobConfig)


CONF_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")
