"""One config dataclass per component, composed by Hydra's defaults lists (``conf/``).

The dataclasses are registered in Hydra's ConfigStore as schemas, so an unknown key or a wrong type fails at start-up
with Hydra's message naming it; :func:`validate_train` then checks the values and names the bad field.
Required values are ``???``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class ModelConfig:
    """The policy: divcfg's own (:class:`divcfg.model.policy.PolicyConfig`; K and V come from the codec) or Hugging
    Face MusicGen (:mod:`divcfg.model.musicgen.policy`; its architecture comes from the checkpoint)."""

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
    decoder: str = "divcfg"
    """musicgen: who runs the decoder. divcfg: MusicGen's weights in divcfg's KV-cached decoder (CFG as one batched
    forward, CUDA graphs, the CPU GEMM layout; model/musicgen/convert.py); transformers: transformers' own decoder
    (the reference adapter, and the fallback for variants the converter refuses). Rollout actors, the learner and
    ``divcfg sample`` all use it; checkpoints are the same either way."""


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
    kind: str = "procedural"
    """What a missing world is built as: procedural (synthetic tones) or music (real works from music21's corpus
    rendered with a SoundFont, judged also by Basic Pitch; `make run` uses it, in worlds/music_small). A world that is
    already built is used as it is, whatever its kind."""
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
    """Adam learning rate of the student (the peak, under a schedule)."""
    lr_schedule: str = "cosine"
    """cosine (the default): half a cosine from lr down to 0.1 × lr over the run's learner.steps; constant: lr
    throughout. A constant rate leaves the KL to the teacher at the level of its noise (learner/schedule.py): in the
    β sweep of RESULTS.md, β = 0's KL ended at 0.55–0.59× its start with it and 0.16–0.17× with cosine, and θ_q
    reached CFG's adherence only with cosine. A resume of a run saved before this default keeps constant."""
    baseline: str = "loo"
    """REINFORCE baseline inside a group: none, mean or loo (leave-one-out)."""
    kl_reduction: str = "sum"
    """How L_distill reduces a sample's per-code KLs. sum (the method, METHOD.md): the per-sequence KL, summed over
    the sample's positions and codebooks, on the scale of L_pg's sequence log-prob. mean: the per-code mean, the KL
    divided by the codes per clip (300 on the small world), which weighs the policy gradient as sum would at β × 300:
    β = 15 with mean is REINFORCE alone there (RESULTS.md, "Why β = 15 loses adherence"). A resume of a run saved
    before this key existed, or under the old default, keeps mean."""
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
    spares: int = 0
    """Warm spare actors: started, loaded and sent every new version's weights, but given no prompts. A dead actor
    is replaced by a spare at once (a new spare starts in the background), and `divcfg scale` up takes spares first.
    Each holds the resources of an actor."""
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
    """Which embedder scores diversity: the world's reward (default) or eval (only to study reward hacking), or the
    directory of one saved by ``divcfg embedder train --out DIR``."""
    batch_groups: int = 8
    """Most groups one scoring call takes: an idle worker takes every waiting group up to this many at once."""
    spares: int = 0
    """Warm spare reward workers, started and loaded but given no groups: a dead worker is replaced by a spare at
    once, and a new spare starts in the background."""


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
    mode: str = "async"
    """async (actors keep generating while the learner trains), sync (the reference), or local (no Ray)."""
    queue_groups: int = 0
    """Bound of the ready-group queue (0 = 2 × batch_prompts)."""
    max_nonfinite: int = 3
    """Stop after this many consecutive non-finite losses (each one is skipped)."""
    max_role_failures: int = 5
    """Stop when one role fails this many times in a row."""
    num_gpus: float = 0.0
    """GPUs Ray reserves per learner worker (learner/group.py); more than any node has is refused at start. With
    workers > 1 on GPUs, 1 or more (NCCL needs a GPU per worker)."""
    num_cpus: float = 1.0
    """CPUs Ray reserves per learner worker."""
    resources: dict[str, float] = field(default_factory=dict)
    """Custom Ray resources per learner worker (placement=group), e.g. ``+learner.resources.learner_node=1``: pins
    the workers' bundles to the nodes that advertise them (deploy/'s learner GPU node type); refused at start when no
    live node has them."""
    workers: int = 1
    """Learner workers in one torch.distributed group (gloo on CPU, NCCL on GPU). Each step splits the batch by
    whole groups across them, and they make exactly the update one learner makes on the whole batch; needs
    algo.batch_prompts >= workers."""
    placement: str = "group"
    """Where the learner runs in the Ray modes: group (a LearnerGroup of ``workers`` Ray actors, also at 1: the
    driver stays a light scheduler that needs no GPU, keeps a CPU copy of the student for probes and checkpoints,
    and rebuilds a group that lost a worker from the last checkpoint; give each worker a GPU with num_gpus, which
    learner.device=auto does on a driver that sees one) or driver (one Learner inside the job's driver, which dies
    with it). learner.mode=local always runs it in the driver."""
    shard: str = "none"
    """none (each worker holds the whole student; DDP averages gradients) or fsdp (FSDP2 shards the student, its
    gradients and its Adam state across the workers between steps; model.family=divcfg only)."""


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
    allow_pickle: bool = False
    """Resume from a checkpoint whose train state is in the old pickle format (``train_state.pt``). Unpickling runs
    any code the file holds: set it only when everyone who can write to the run directory is trusted."""


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


def register_configs() -> None:
    """Register the schemas in Hydra's ConfigStore (idempotent)."""

    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="pretrain_schema", node=PretrainJobConfig)


CONF_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "conf")


