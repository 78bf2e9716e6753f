"""The one place that wires a run: prompts -> rollout actors -> reward workers -> learner -> weights back.

:func:`build_learner` builds the learner (in the driver, or a learner group on Ray: ``learner.placement``);
:func:`build_topology` builds every other role of ``divcfg train`` and connects them; a newcomer reads it to see the
whole system. ``learner.mode=local`` connects the same plain classes in this process; ``sync`` and ``async``
connect them on Ray through a :class:`Scheduler`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from divcfg.actors.rollout import remote_rollout_worker
from divcfg.common.config.checks import WORLD_EMBEDDERS
from divcfg.common.runtime.transport import ObjectStoreTransport
from divcfg.job.books import Accounting, PromptStream
from divcfg.job.control import AutoscaleRequest, start_control
from divcfg.job.loop import run_local
from divcfg.job.policy_source import JudgesFactory, PolicySource
from divcfg.job.pool import RayTopology
from divcfg.job.scheduler import Scheduler
from divcfg.learner.group import LearnerGroup, LearnerSpec
from divcfg.learner.learner import Learner
from divcfg.learner.schedule import LrSchedule
from divcfg.reward.worker import remote_reward_worker


@dataclass
class Topology:
    """The connected roles of one run."""

    run: Callable[[int, Callable], Accounting]
    """``run(steps, on_step)`` trains ``steps`` steps and returns the books."""
    members: RayTopology | None = None
    """The Ray members (None in local mode)."""

    def actors_final(self) -> int:
        return len(self.members.actors) if self.members is not None else 1


def build_topology(cfg, learner, source: PolicySource, world_dir: str, stream: PromptStream,
                   resume_prompts=(), on_event: Callable[[str], None] | None = None,
                   recover: Callable[[], tuple[int, list[int], dict]] | None = None) -> Topology:
    """Build the roles of ``cfg`` and connect them (Ray must be up unless ``learner.mode=local``)."""
    loop = dict(batch_prompts=cfg.algo.batch_prompts, group_size=cfg.algo.group_size,
                max_lag=cfg.algo.max_policy_lag, groups_per_call=cfg.actors.groups_per_call)
    # rewards: each worker loads the world's judges, decoding with the policy's codec.
    judges_factory = JudgesFactory(world_dir, source.codec_factory)
    if cfg.learner.mode == "local":
        from divcfg.actors.rollout import RolloutWorker
        from divcfg.reward.worker import RewardWorker
        rollout = RolloutWorker(source.policy_factory, source.n_frames, cfg.algo.group_size, cfg.algo.temperature,
                                threads=cfg.actors.threads, seed=cfg.run.seed, dtype=cfg.actors.dtype)
        reward = RewardWorker(judges_factory, reward_embedder(cfg), threads=cfg.reward.threads)
        # prompts -> rollout -> reward -> learner -> weights back, one call after the other in this process.
        return Topology(lambda steps, on_step: run_local(learner, rollout, reward, stream, steps, on_step=on_step,
                                                         **loop))
    # pool size <- the control actor (`divcfg scale`), and the autoscaler's request follows it.
    target = pool_target(cfg, on_event)
    members = ray_members(cfg, source, judges_factory)
    # prompts -> actors -> rewards -> learner -> weights back: the scheduler makes every call between the roles.
    scheduler = Scheduler(learner, members, stream, mode=cfg.learner.mode, queue_groups=cfg.learner.queue_groups,
                          target=target, on_event=on_event, max_role_failures=cfg.learner.max_role_failures,
                          reward_batch=cfg.reward.batch_groups, resume_prompts=resume_prompts, recover=recover,
                          **loop)
    return Topology(scheduler.run, members)


def ray_members(cfg, source: PolicySource, judges_factory: JudgesFactory) -> RayTopology:
    """The rollout actors and reward workers on Ray, and the weights transport between learner and actors."""
    return RayTopology(
        # actors: each builds the base policy itself; weights <- the learner, through the transport.
        remote_rollout_worker(cfg.actors.num_cpus, cfg.actors.num_gpus),
        # rewards: groups <- the actors (via the scheduler); scored groups -> the learner.
        remote_reward_worker(cfg.reward.num_cpus, cfg.reward.num_gpus), cfg.actors.count, cfg.reward.count,
        dict(policy_factory=source.policy_factory, n_frames=source.n_frames, group_size=cfg.algo.group_size,
             temperature=cfg.algo.temperature, threads=cfg.actors.threads, dtype=cfg.actors.dtype,
             device="cuda" if cfg.actors.num_gpus > 0 else "cpu"),
        dict(judges_factory=judges_factory, embedder=reward_embedder(cfg), threads=cfg.reward.threads),
        # weights: learner -> object store (one put per version) -> every actor, warm spares included.
        transport=ObjectStoreTransport(), spares=cfg.actors.spares, reward_spares=cfg.reward.spares)


def reward_embedder(cfg) -> str:
    """reward.embedder as the reward workers get it: a directory made absolute, since a Ray worker need not start in
    the driver's working directory."""
    name = cfg.reward.embedder
    return name if name in WORLD_EMBEDDERS else os.path.abspath(name)


def pool_target(cfg, on_event=None) -> Callable[[], int]:
    """The rollout pool's wanted size: the job's control actor holds it (``divcfg scale`` sets it), clamped to the
    autoscaler's range and turned into a resource request when ``autoscale.max`` is set."""
    import ray  # start-up: ray takes ~1.1 s to import; the plain classes here run without it

    control = start_control(Path(cfg.run.dir).name, cfg.actors.count)  # run.dir: the job's own under --multirun
    autoscale = None
    if cfg.autoscale.max:
        autoscale = AutoscaleRequest(
            cfg.autoscale.min, cfg.autoscale.max, {"CPU": cfg.actors.num_cpus, "GPU": cfg.actors.num_gpus},
            [{"CPU": cfg.reward.num_cpus, "GPU": cfg.reward.num_gpus}] * cfg.reward.count, on_event=on_event)

    def target() -> int:
        n = ray.get(control.get_target.remote())
        return autoscale(n) if autoscale else n
    return target


PLACEMENTS = ("driver", "group")


def build_learner(cfg, source: PolicySource, device: str, steps: int):
    """The learner: a :class:`Learner` in this process, or (``learner.placement=group`` in a Ray mode) a
    :class:`GroupTrainee` over ``learner.workers`` Ray actors, with a CPU copy of the student here. ``steps``: the
    run's learner steps, over which ``algo.lr_schedule`` runs."""
    if cfg.learner.placement not in PLACEMENTS:
        raise ValueError(f"learner.placement={cfg.learner.placement!r}: must be one of {PLACEMENTS}")
    kwargs = dict(beta=cfg.algo.beta, guidance_scale=cfg.algo.guidance_scale, lr=cfg.algo.lr,
                  lr_schedule=LrSchedule(cfg.algo.lr, steps, cfg.algo.lr_schedule),
                  baseline=cfg.algo.baseline, is_clip=cfg.algo.is_clip, grad_clip=cfg.learner.grad_clip,
                  amp=cfg.learner.amp, kl_reduction=cfg.algo.kl_reduction)
    if cfg.learner.mode == "local" or cfg.learner.placement == "driver":
        return Learner(source.base_policy, device=device, **kwargs)
    num_gpus = cfg.learner.num_gpus
    if num_gpus == 0 and device == "cuda":
        # The group's workers see only the GPUs they reserve: without one, the learner would silently run on CPU.
        if cfg.learner.device != "auto":
            raise ValueError(f"learner.placement=group with learner.device={cfg.learner.device} and "
                             f"learner.num_gpus=0: give each worker a GPU with learner.num_gpus=1, or use "
                             f"learner.placement=driver")
        num_gpus = 1.0  # auto on a driver that sees a GPU: each worker reserves one, as the driver's learner used it
    spec = LearnerSpec(source.policy_factory, kwargs, cfg.model.family)
    # The workers' device follows num_gpus (learner.device names the driver's in the driver placement).
    return GroupTrainee(lambda: LearnerGroup(spec, workers=cfg.learner.workers, num_gpus=num_gpus,
                                             num_cpus=cfg.learner.num_cpus, threads=cfg.learner.threads,
                                             shard=cfg.learner.shard, resources=dict(cfg.learner.resources)),
                        Learner(source.base_policy, device="cpu", **kwargs))


class GroupTrainee:
    """A :class:`~divcfg.learner.group.LearnerGroup` with the face the driver's steps use: the scheduler's
    ``step``/``weights``/``version``, and the checkpoint's and probes' ``student``/``state``/``load_state``/
    ``probe_kl``, answered by ``mirror`` (a Learner on the driver's CPU that never steps) after copying worker 0's
    student into it, once per version. ``rebuild()`` replaces a group that lost a worker."""

    def __init__(self, build_group: Callable, mirror):
        self.build_group, self.mirror = build_group, mirror
        self.group = build_group()
        self.failure = self.group.failure
        self.synced: tuple | None = None  # (group, version, nonfinite_total) the mirror holds
        self.saved_state: dict = {}

    version = property(lambda self: self.group.version)
    nonfinite_in_a_row = property(lambda self: self.group.nonfinite_in_a_row)
    nonfinite_total = property(lambda self: self.group.nonfinite_total)

    def step(self, batch, group_size: int) -> dict:
        return self.group.step(batch, group_size)

    def weights(self) -> dict:
        return self.group.weights()

    def sync(self) -> None:
        key = (id(self.group), self.group.version, self.group.nonfinite_total)
        if self.synced != key:
            student_state, self.saved_state = self.group.state_dict()
            self.mirror.load_state(student_state, self.saved_state)
            self.synced = key

    @property
    def student(self):
        self.sync()
        return self.mirror.student

    def state(self) -> dict:
        self.sync()
        return self.saved_state  # the group's own (its optimizer state), not the idle mirror's

    def load_state(self, student_state: dict, state: dict) -> None:
        self.group.load_state(student_state, state)
        self.synced = None

    def probe_kl(self, *args) -> float:
        self.sync()
        return self.mirror.probe_kl(*args)

    def rebuild(self) -> None:
        """A fresh group in place of one that lost a worker (its survivors are killed); base weights until a
        checkpoint is loaded into it."""
        try:
            self.group.shutdown()
        except Exception:  # noqa: BLE001 - a group that lost workers may fail to shut down cleanly; it is dropped
            pass
        self.group, self.synced = self.build_group(), None

    def shutdown(self) -> None:
        self.group.shutdown()
