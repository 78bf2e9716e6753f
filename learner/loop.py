"""The one place that wires the topology: prompts -> rollout actors -> reward workers -> learner -> weights back.

Three modes run the same plain classes:
  local  one process, no Ray (debugging and unit tests);
  sync   on Ray: generate a batch, score it, learn, publish, repeat (the reference);
  async  on Ray: actors keep generating while the learner trains; admission keeps policy lag bounded.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from divcfg.common.record import RolloutBatch


@dataclass
class Accounting:
    """Every generated group ends up used, stale (too old for the learner) or dropped (reward failed)."""

    generated: int = 0
    used: int = 0
    stale: int = 0
    dropped: int = 0
    lags: list = field(default_factory=list)


class PromptStream:
    """Deterministic prompt order (a fresh permutation per epoch); ``position`` is saved for resume."""

    def __init__(self, prompts: list[str], seed: int, position: int = 0):
        self.prompts, self.seed, self.position = prompts, seed, position

    def next(self) -> tuple[int, str]:
        epoch, i = divmod(self.position, len(self.prompts))
        perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.prompts))
        item = (self.position, self.prompts[perm[i]])
        self.position += 1
        return item


def _admit(groups: list[RolloutBatch], version: int, max_lag: int, acct: Accounting) -> list[RolloutBatch]:
    """Drop groups whose policy lag exceeds the bound (counted as stale); record the lag of the rest."""
    kept = []
    for g in groups:
        lag = version - int(g.policy_version[0])
        if lag > max_lag:
            acct.stale += 1
        else:
            acct.lags.append(lag)
            kept.append(g)
    return kept


def run_local(learner, rollout, reward, stream: PromptStream, steps: int, batch_prompts: int, group_size: int,
              max_lag: int, on_step) -> Accounting:
    """Synchronous loop in one process: the reference that the Ray modes must match."""
    acct = Accounting()
    rollout.set_weights(learner.version, learner.weights())
    for step in range(steps):
        t0 = time.perf_counter()
        groups = [rollout.generate_group(pid, prompt, pid) for pid, prompt in
                  (stream.next() for _ in range(batch_prompts))]
        acct.generated += len(groups)
        t_gen = time.perf_counter() - t0
        t0 = time.perf_counter()
        scored = reward.score(groups)
        t_rew = time.perf_counter() - t0
        acct.dropped += sum(g is None for g in scored)
        ready = _admit([g for g in scored if g is not None], learner.version, max_lag, acct)
        if ready:
            metrics = learner.step(RolloutBatch.concat(ready), group_size)
            acct.used += len(ready)
        else:
            metrics = {}
        t0 = time.perf_counter()
        rollout.set_weights(learner.version, learner.weights())
        metrics.update({"time/generate": t_gen, "time/reward": t_rew, "time/publish": time.perf_counter() - t0})
        on_step(step, RolloutBatch.concat(ready) if ready else None, metrics, acct)
    return acct


class RayTopology:
    """Rollout actors and reward workers on Ray, with weights published once per version through the object store."""

    def __init__(self, rollout_cls, reward_cls, n_actors: int, n_reward: int, rollout_kwargs: dict,
                 reward_kwargs: dict):
        self.rollout_cls, self.rollout_kwargs = rollout_cls, rollout_kwargs
        self.actors = [rollout_cls.remote(**rollout_kwargs, seed=i) for i in range(n_actors)]
        self.rewards = [reward_cls.remote(**reward_kwargs) for _ in range(n_reward)]
        self.weights_ref = None
        self.weights_version = -1

    def publish(self, version: int, weights: dict) -> None:
        import ray
        # One put per version; every actor reads the same object (zero-copy numpy on its node).
        # Not awaited: Ray runs an actor's calls in submission order, so the swap lands between groups, never inside
        # one, and the learner does not wait for actors that are mid-generation.
        self.weights_ref = ray.put(weights)
        self.weights_version = version
        for a in self.actors:
            a.set_weights.remote(version, self.weights_ref)


def run_ray(learner, topo: RayTopology, stream: PromptStream, steps: int, batch_prompts: int, group_size: int,
            max_lag: int, mode: str, queue_groups: int, on_step) -> Accounting:
    """Sync or async training over a :class:`RayTopology`."""
    import ray

    acct = Accounting()
    topo.publish(learner.version, learner.weights())
    idle = deque(topo.actors)
    gen_inflight: dict = {}  # generation ref -> actor
    rew_inflight: dict = {}  # reward ref -> number of groups
    ready: deque[RolloutBatch] = deque()
    capacity = queue_groups or 2 * batch_prompts
    next_reward = 0
    launched = 0
    t_wait = 0.0

    def launch() -> None:
        nonlocal launched
        while idle:
            if mode == "sync" and launched >= (learner.version + 1) * batch_prompts:
                return
            # Async admission (after AReaL's staleness rule): never have more groups launched than the learner can
            # consume within max_lag versions, and never more waiting than the ready queue holds.
            if mode == "async" and (launched >= (learner.version + max_lag + 1) * batch_prompts
                                    or len(ready) + len(gen_inflight) + len(rew_inflight) >= capacity + len(topo.actors)):
                return
            actor = idle.popleft()
            pid, prompt = stream.next()
            gen_inflight[actor.generate_group.remote(pid, prompt, pid)] = actor
            launched += 1

    for step in range(steps):
        t0 = time.perf_counter()
        while len(ready) < batch_prompts:
            launch()
            refs = list(gen_inflight) + list(rew_inflight)
            done, _ = ray.wait(refs, num_returns=1)
            ref = done[0]
            if ref in gen_inflight:
                idle.append(gen_inflight.pop(ref))
                group = ray.get(ref)
                acct.generated += 1
                worker = topo.rewards[next_reward % len(topo.rewards)]
                next_reward += 1
                rew_inflight[worker.score.remote([group])] = 1
            else:
                rew_inflight.pop(ref)
                for g in ray.get(ref):
                    if g is None:
                        acct.dropped += 1
                    else:
                        ready.extend(_admit([g], learner.version, max_lag, acct))
        t_wait = time.perf_counter() - t0
        batch = [ready.popleft() for _ in range(batch_prompts)]
        acct.used += len(batch)
        if mode == "async":
            launch()  # keep actors busy while the learner trains
        metrics = learner.step(RolloutBatch.concat(batch), group_size)
        t0 = time.perf_counter()
        topo.publish(learner.version, learner.weights())
        metrics.update({"time/wait_rollouts": t_wait, "time/publish": time.perf_counter() - t0,
                        "rollout/queue_depth": float(len(ready)), "rollout/actors": float(len(topo.actors))})
        on_step(step, RolloutBatch.concat(batch), metrics, acct)
    # Whatever is still in flight at the end is generated but unused: wait for it so the books balance.
    for ref in list(gen_inflight):
        ray.get(ref)
        acct.generated += 1
        acct.stale += 1
    for ref in list(rew_inflight):
        acct.stale += sum(1 for _ in ray.get(ref))
    acct.stale += len(ready)
    return acct
