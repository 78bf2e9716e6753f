"""A data-parallel learner group: ``learner.workers`` learner processes in one torch.distributed process group.

Each step splits the batch by whole groups across the workers (:func:`split_groups`). Every worker runs
:meth:`Learner.step` on its share with the whole batch's sample count, so its losses are its share's sums over that
count; DDP (or FSDP2 with ``learner.shard=fsdp``) averages the gradients, the loss is scaled by the world size to
undo that mean, and every worker takes the same optimizer step. The workers' update is then the one-worker update on
the whole batch, whatever the KL reduction, β and the importance weights, and however unevenly the groups divide.

:class:`LearnerGroupWorker` is the plain class (one per process; tested with ``torch.multiprocessing`` and gloo).
:class:`LearnerGroup` starts N of them as Ray actors in one placement group and has the :class:`Learner` interface
the training loop uses (``step``, ``weights``, ``state``, ``load_state``, ``version``). Checkpoints carry the same
full student and optimizer state as a single learner, so a run saved with N workers resumes with any other N.
"""
from __future__ import annotations

import copy
import datetime
import queue as queue_mod
import socket
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from divcfg.common.record import RolloutBatch
from divcfg.learner.learner import Learner

SHARDS = ("none", "fsdp")
# The modules FSDP makes units of their own, per model family (learner.shard=fsdp); the root unit holds the rest.
# divcfg's policy computes every layer's cross-attention keys before running the layers (one pass over the text),
# outside each layer's forward, where a per-layer unit's weights would still be sharded: so the whole student is
# one unit, gathered for the forward and backward and sharded again (with its gradients and Adam state) between
# steps. MusicGen's decoder layers under the adapter (model.decoder=transformers) run whole inside their own forward,
# so there each trained layer is a unit and only one layer's full weights exist at a time. Frozen parameters
# (MusicGen's T5, divcfg's frozen text encoder, the layers below model.train_layers) are never sharded: the teacher shares those parameter objects with the student.
FSDP_BLOCKS: dict[str, Callable[[torch.nn.Module], list[torch.nn.Module]]] = {
    "divcfg": lambda policy: [],
    # The adapter (model.decoder=transformers) runs each layer whole; MusicGen's weights in divcfg's decoder
    # (model.decoder=divcfg) compute every layer's cross-attention keys first, as divcfg's policy does: root only.
    "musicgen": lambda policy: [] if not hasattr(policy.decoder, "model") else [
        layer for layer in policy.decoder.model.decoder.layers if any(p.requires_grad for p in layer.parameters())],
}


class LearnerGroupError(ValueError):
    """A learner-group setting that can't be used; the message names the config key."""


def split_groups(batch: RolloutBatch, group_size: int, workers: int) -> list[RolloutBatch]:
    """``batch`` (whole groups of ``group_size`` rows, group by group) cut into ``workers`` contiguous shares of whole
    groups, the first ``n_groups % workers`` shares one group larger."""
    if len(batch) % group_size:
        raise ValueError(f"a batch of {len(batch)} rows is not whole groups of algo.group_size={group_size}")
    n_groups = len(batch) // group_size
    if n_groups < workers:
        raise ValueError(f"{n_groups} groups can't be split across learner.workers={workers}: every worker needs "
                         f"at least one group (raise algo.batch_prompts)")
    sizes = [n_groups // workers + (i < n_groups % workers) for i in range(workers)]
    bounds = np.cumsum([0, *sizes]) * group_size
    return [batch.select(slice(int(a), int(b))) for a, b in zip(bounds[:-1], bounds[1:])]


def check_shard(shard: str, family: str) -> None:
    if shard not in SHARDS:
        raise LearnerGroupError(f"learner.shard={shard!r}: must be one of {SHARDS}")
    if shard == "fsdp" and family not in FSDP_BLOCKS:
        raise LearnerGroupError(f"learner.shard=fsdp with model.family={family}: FSDP sharding is implemented for "
                                f"{sorted(FSDP_BLOCKS)} only")


def check_resources(workers: int, num_gpus: float, nodes: list[dict], resources: dict | None = None) -> None:
    """Refuse, before any actor starts, a group no node can hold one worker of (``nodes``: ``ray.nodes()``;
    ``resources``: the custom resources each worker's bundle asks for)."""
    if workers < 1:
        raise LearnerGroupError(f"learner.workers={workers}: must be >= 1")
    if num_gpus < 0:
        raise LearnerGroupError(f"learner.num_gpus={num_gpus}: must be >= 0")
    if workers > 1 and 0 < num_gpus < 1:
        raise LearnerGroupError(f"learner.num_gpus={num_gpus} with learner.workers={workers}: NCCL needs one GPU per "
                                f"worker; use learner.num_gpus=1 (or more)")
    most = max((n.get("Resources", {}).get("GPU", 0.0) for n in nodes if n.get("Alive", True)), default=0.0)
    if num_gpus > most:
        raise LearnerGroupError(f"learner.num_gpus={num_gpus} per worker: no node of this cluster has that many "
                                f"(the most on one node is {most:g})")
    for name, amount in (resources or {}).items():
        if name in ("CPU", "GPU") or amount <= 0:
            raise LearnerGroupError(f"learner.resources.{name}={amount}: custom resources only (CPU and GPU are "
                                    f"learner.num_cpus and learner.num_gpus), each > 0")
        held = [n.get("Resources", {}).get(name, 0.0) for n in nodes if n.get("Alive", True)]
        if max(held, default=0.0) < amount:
            raise LearnerGroupError(f"learner.resources.{name}={amount:g} per worker: no live node of this cluster "
                                    f"advertises that much {name!r} (the most on one node is "
                                    f"{max(held, default=0.0):g}); start the learner nodes with "
                                    f"--resources='{{\"{name}\": 1}}' or drop the key")


class DataParallel:
    """What a :class:`Learner` needs to be one worker of a group (its ``parallel`` argument), in a process that has
    joined the default torch.distributed group."""

    def __init__(self, shard: str, device: torch.device, family: str = "divcfg", group=None):
        check_shard(shard, family)
        if group is not None and shard != "none":
            raise ValueError("a sub-group of the process group takes DDP only (learner.shard=none)")
        self.shard, self.device, self.family, self.group = shard, device, family, group
        self.world_size, self.rank = dist.get_world_size(group), dist.get_rank(group)
        self.grad_scale = float(self.world_size)  # DDP and FSDP divide the summed gradients by the world size
        self.fused_adam = shard == "none"  # fused Adam takes plain tensors, not FSDP's sharded DTensors

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        if self.shard == "none":
            from torch.nn.parallel import DistributedDataParallel
            ids = [self.device.index] if self.device.type == "cuda" else None
            # The student's step leaves some trainable parameters without a gradient (divcfg's null condition only
            # enters the CFG teacher); DDP must find them each step, or the bucket holding them is never reduced.
            return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True,
                                           process_group=self.group)
        from torch.distributed.fsdp import fully_shard  # start-up: ~2 s to import, for learner.shard=fsdp only

        # One FSDP unit per block, so only one block's full weights exist at a time; the root holds the rest.
        frozen = {p for p in module.parameters() if not p.requires_grad}
        for block in FSDP_BLOCKS[self.family](module.student):
            fully_shard(block, ignored_params=frozen & set(block.parameters()) or None)
        fully_shard(module, ignored_params=frozen or None)
        return module

    def reduce(self, sums: torch.Tensor, maxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        on = self.device if self.device.type == "cuda" else torch.device("cpu")  # NCCL reduces device tensors only
        sums, maxes = sums.to(on), maxes.to(on)
        dist.all_reduce(sums, dist.ReduceOp.SUM, group=self.group)
        dist.all_reduce(maxes, dist.ReduceOp.MAX, group=self.group)
        return sums.cpu(), maxes.cpu()


@dataclass
class LearnerSpec:
    """How every worker builds the same :class:`Learner`: a picklable policy factory plus the Learner's keywords
    (``beta``, ``guidance_scale``, ``lr``, ``baseline``, ``is_clip``, ``grad_clip``, ``amp``, ``kl_reduction``)."""

    policy_factory: Callable[[], torch.nn.Module]
    kwargs: dict[str, Any] = field(default_factory=dict)
    family: str = "divcfg"

    def build(self, device: str | torch.device, parallel: DataParallel | None = None) -> Learner:
        return Learner(self.policy_factory(), device=str(device), parallel=parallel, **self.kwargs)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


class LearnerGroupWorker:
    """One worker: joins the process group (unless this process already has one of the same size), builds its
    Learner with DDP or FSDP around the student, and steps on its share. Collective calls (construction, ``step``,
    ``weights``, ``state``, ``load_state``) must be made on every worker, in the same order."""

    def __init__(self, spec: LearnerSpec, rank: int, world_size: int, init_method: str, *, device: str = "cpu",
                 shard: str = "none", timeout_s: float = 600.0):
        self.device = torch.device(device)
        if not dist.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size,
                                    timeout=datetime.timedelta(seconds=timeout_s))
        if (dist.get_rank(), dist.get_world_size()) != (rank, world_size):
            raise RuntimeError(f"this process is rank {dist.get_rank()} of {dist.get_world_size()}, asked to be "
                               f"{rank} of {world_size}")
        self.rank, self.world_size = rank, world_size
        self.learner = spec.build(self.device, DataParallel(shard, self.device, spec.family))

    def step(self, share: RolloutBatch, group_size: int, total_samples: int) -> dict[str, float]:
        return self.learner.step(share, group_size, total_samples)

    def weights(self) -> dict[str, np.ndarray] | None:
        """Worker 0's snapshot of the whole student (every worker takes part in gathering FSDP's shards)."""
        w = self.learner.weights()
        return w if self.rank == 0 else None

    def state(self) -> tuple[dict[str, torch.Tensor], dict] | None:
        """Worker 0's ``(student state dict, learner state)``: the single learner's checkpoint contents, copied (the
        live tensors change with the next step)."""
        student, state = self.learner.full_student_state(), self.learner.state()
        return (copy.deepcopy((student, state))) if self.rank == 0 else None

    def load_state(self, student_state: dict[str, torch.Tensor], state: dict) -> None:
        # Adam keeps the tensors it is given and updates them in place; these may be shared with the sender
        # (torch.multiprocessing moves tensors to shared memory) or read-only buffers, so the worker takes a copy.
        self.learner.load_state(*copy.deepcopy((student_state, state)))

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


# ---- local mode: the same workers as plain processes, no Ray ------------------------------------------------------
def _process_main(target, rank, workers, init_method, args, results, collected, timeout_s) -> None:
    try:
        torch.set_num_threads(1)  # one thread per worker: the cores are the workers
        results.put((rank, target(rank, workers, init_method, *args), None))
    except BaseException:  # noqa: BLE001 - the parent raises it, with the worker's traceback
        import traceback
        results.put((rank, None, traceback.format_exc()))
    finally:
        # Tensors cross the queue in shared memory that this process hands out: it stays until they are read.
        collected.wait(timeout_s)
        if dist.is_initialized():
            dist.destroy_process_group()


def spawn_workers(target: Callable, workers: int, *args, timeout_s: float = 300.0) -> list:
    """Run ``target(rank, workers, init_method, *args)`` in ``workers`` fresh processes (importable ``target``;
    rendezvous on a free local port) and return their results in rank order; a worker's exception is raised here."""

    ctx = mp.get_context("spawn")
    results, collected = ctx.Queue(), ctx.Event()
    init_method = f"tcp://127.0.0.1:{free_port()}"
    procs = [ctx.Process(target=_process_main, daemon=True,
                         args=(target, r, workers, init_method, args, results, collected, timeout_s))
             for r in range(workers)]
    for p in procs:
        p.start()
    out: dict[int, Any] = {}
    try:
        for _ in range(workers):
            rank, value, error = results.get(timeout=timeout_s)
            if error is not None:
                raise RuntimeError(f"learner worker {rank} failed:\n{error}")
            out[rank] = value
    except queue_mod.Empty:
        raise TimeoutError(f"learner workers {sorted(set(range(workers)) - set(out))} gave no result in "
                           f"{timeout_s:g} s") from None
    finally:
        collected.set()
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    return [out[r] for r in range(workers)]


# ---- on Ray: N worker actors in one placement group ------------------------------------------------------------------
class LearnerGroupActor:
    """The Ray shell around :class:`LearnerGroupWorker`: placed first, told its rank and the rendezvous after."""

    def __init__(self, threads: int = 1):
        torch.set_num_threads(threads)
        self.worker: LearnerGroupWorker | None = None

    def address(self) -> tuple[str, int]:
        """This node's address and a free port on it: worker 0's are the group's rendezvous."""
        import ray  # start-up: ray takes ~1.1 s to import; the plain classes here run without it
        return ray.util.get_node_ip_address(), free_port()

    def setup(self, spec: LearnerSpec, rank: int, world_size: int, init_method: str, device: str, shard: str) -> None:
        if device == "cuda":
            device = "cuda:0"  # Ray shows the actor only its own GPU(s)
        self.worker = LearnerGroupWorker(spec, rank, world_size, init_method, device=device, shard=shard)

    def call(self, method: str, *args):
        return getattr(self.worker, method)(*args)


class LearnerGroup:
    """``workers`` learner workers on Ray with the :class:`Learner` interface of the training loop.

    ``num_gpus``/``num_cpus`` are per worker (``learner.num_gpus``/``num_cpus``); one placement group reserves them
    all before any worker starts (PACK: on as few nodes as possible, so the collectives stay inside a node where
    they can). ``device``: cpu or cuda (auto: cuda when ``num_gpus`` > 0).
    """

    def __init__(self, spec: LearnerSpec, *, workers: int, num_gpus: float = 0.0, num_cpus: float = 1.0,
                 threads: int = 1, shard: str = "none", device: str = "auto", ready_timeout_s: float = 600.0,
                 resources: dict[str, float] | None = None):
        import ray  # start-up: ray takes ~1.1 s to import; the plain classes here run without it
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
        resources = dict(resources or {})
        check_resources(workers, num_gpus, ray.nodes(), resources)
        check_shard(shard, spec.family)
        device = device if device != "auto" else ("cuda" if num_gpus > 0 else "cpu")
        bundle = {"CPU": num_cpus, **({"GPU": num_gpus} if num_gpus else {}), **resources}
        self.pg = placement_group([dict(bundle) for _ in range(workers)], strategy="PACK")
        ready, _ = ray.wait([self.pg.ready()], timeout=ready_timeout_s)
        if not ready:
            ray.util.remove_placement_group(self.pg)
            raise TimeoutError(f"the cluster could not reserve learner.workers={workers} × {bundle} in "
                               f"{ready_timeout_s:g} s")
        actor = ray.remote(enable_task_events=False)(LearnerGroupActor)  # as the members': actors/rollout.py
        # Named (learner-<group>-<rank>), so an operator or a chaos test can find a worker; unique per group, since
        # a rebuilt group starts while the dead one's names may still be held.
        tag = uuid.uuid4().hex[:8]
        self.actors = [actor.options(num_cpus=num_cpus, num_gpus=num_gpus, resources=resources,
                                     name=f"learner-{tag}-{i}", scheduling_strategy=(
            PlacementGroupSchedulingStrategy(placement_group=self.pg, placement_group_bundle_index=i))).remote(threads)
            for i in range(workers)]
        host, port = ray.get(self.actors[0].address.remote())
        ray.get([a.setup.remote(spec, rank, workers, f"tcp://{host}:{port}", device, shard)
                 for rank, a in enumerate(self.actors)])
        self.workers = workers
        self.version, self.nonfinite_in_a_row, self.nonfinite_total = 0, 0, 0
        self.failure = (ray.exceptions.RayActorError,)  # what a call raises when a worker died

    def _all(self, method: str, *per_worker_args) -> list:
        """``method`` on every worker at once (they are collectives); ``per_worker_args``: one tuple per worker."""
        import ray  # start-up: ray takes ~1.1 s to import; the plain classes here run without it
        args = per_worker_args or [()] * self.workers
        calls = [a.call.remote(method, *arg) for a, arg in zip(self.actors, args)]
        # Each result is read as soon as it arrives: a dead worker's error is raised at once, while the others
        # would wait in their collective until its timeout.
        pending, results = list(calls), {}
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                results[done[0]] = ray.get(done[0])
            except ray.exceptions.RayTaskError:
                self._raise_lost(pending)  # a live worker's collective fails when a peer dies: report the death
                raise
        return [results[c] for c in calls]

    @staticmethod
    def _raise_lost(pending: list, wait_s: float = 10.0) -> None:
        """Raise the RayActorError of a worker that died, if one of ``pending`` shows one within ``wait_s``."""
        import ray  # start-up: ray takes ~1.1 s to import; the plain classes here run without it
        done, _ = ray.wait(pending, num_returns=len(pending), timeout=wait_s)
        for ref in done:
            try:
                ray.get(ref)
            except ray.exceptions.RayActorError:
                raise
            except ray.exceptions.RayError:
                pass

    def step(self, batch: RolloutBatch, group_size: int) -> dict[str, float]:
        """One update of every worker on its share; the metrics are the whole batch's (``time/*``: worker 0's)."""
        shares = split_groups(batch, group_size, self.workers)
        metrics = self._all("step", *[(s, group_size, len(batch)) for s in shares])[0]
        if "losses/nonfinite_skipped" in metrics:
            self.nonfinite_in_a_row += 1
            self.nonfinite_total = int(metrics["losses/nonfinite_skipped"])
        else:
            self.nonfinite_in_a_row = 0
            self.version += 1
        return metrics

    def weights(self) -> dict[str, np.ndarray]:
        return self._all("weights")[0]

    def state(self) -> dict:
        return self.state_dict()[1]

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict]:
        """``(student state dict, learner state)``: what a single learner's checkpoint holds."""
        return self._all("state")[0]

    def load_state(self, student_state: dict[str, torch.Tensor], state: dict) -> None:
        self._all("load_state", *[(student_state, state)] * self.workers)
        self.version, self.nonfinite_total = int(state["version"]), int(state.get("nonfinite_total", 0))

    def shutdown(self) -> None:
        import ray  # start-up: ray takes ~1.1 s to import; the plain classes here run without it
        for a in self.actors:
            try:
                ray.kill(a, no_restart=True)
            except ValueError:  # already gone
                pass
        ray.util.remove_placement_group(self.pg)
