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
    """Every generated group ends up used, stale (too old for the learner, or unused at the end) or dropped (its
    reward failed). A group whose actor died before finishing was never generated: it is re-queued and counted.

    Books balance as ``generated == used + stale + dropped`` and, for the prompts drawn from the stream,
    ``drawn == generated + unfinished``: each prompt is generated once, or is still waiting when the run ends.
    """

    generated: int = 0
    used: int = 0
    stale: int = 0
    dropped: int = 0
    requeued: int = 0
    unfinished: int = 0
    """Prompts drawn but not generated when the run ended (re-queued, or in flight on an actor that never ran)."""
    lags: list = field(default_factory=list)
    failures: dict = field(default_factory=dict)
    outstanding: list = field(default_factory=list)
    """Stream positions drawn but not yet used (generating, re-queued, waiting for a reward or for the learner), as of
    the last step: saved with each checkpoint, so a resumed run generates them first instead of skipping them."""


class PromptStream:
    """Deterministic prompt order (a fresh permutation per epoch); ``position`` is saved for resume."""

    def __init__(self, prompts: list[str], seed: int, position: int = 0):
        self.prompts, self.seed, self.position = prompts, seed, position

    def next(self) -> tuple[int, str]:
        item = (self.position, self.at(self.position))
        self.position += 1
        return item

    def at(self, position: int) -> str:
        """The prompt at any position of the stream (drawn or not)."""
        epoch, i = divmod(position, len(self.prompts))
        return self.prompts[np.random.default_rng([self.seed, epoch]).permutation(len(self.prompts))[i]]


def _admit(groups: list[RolloutBatch], version: int, max_lag: int, acct: Accounting) -> list[RolloutBatch]:
    """Drop groups whose policy lag exceeds the bound (counted as stale); return the rest."""
    kept = [g for g in groups if version - int(g.policy_version[0]) <= max_lag]
    acct.stale += len(groups) - len(kept)
    return kept


def _expire(ready: deque, version: int, max_lag: int, acct: Accounting) -> None:
    """Drop waiting groups that the last update made too old (counted as stale): admission alone would let a group
    admitted at lag ``max_lag`` be trained on one version later."""
    kept = _admit(list(ready), version, max_lag, acct)
    ready.clear()
    ready.extend(kept)


def _take(ready: deque, n: int, version: int, acct: Accounting) -> list[RolloutBatch]:
    """The next ``n`` groups for an update, used from here on; their lag at training time is recorded."""
    batch = [ready.popleft() for _ in range(n)]
    acct.used += n
    acct.lags.extend(version - int(g.policy_version[0]) for g in batch)
    return batch


def run_local(learner, rollout, reward, stream: PromptStream, steps: int, batch_prompts: int, group_size: int,
              max_lag: int, on_step, groups_per_call: int = 1) -> Accounting:
    """Synchronous loop in one process: the reference that the Ray modes must match."""
    acct = Accounting()
    rollout.set_weights(learner.version, learner.weights())
    for step in range(steps):
        t0 = time.perf_counter()
        items = [(pid, prompt, pid) for pid, prompt in (stream.next() for _ in range(batch_prompts))]
        groups = [g for i in range(0, len(items), groups_per_call)
                  for g in rollout.generate_groups(items[i:i + groups_per_call])]
        acct.generated += len(groups)
        t_gen = time.perf_counter() - t0
        t0 = time.perf_counter()
        scored = reward.score(groups)
        t_rew = time.perf_counter() - t0
        acct.dropped += sum(g is None for g in scored)
        ready = deque(_admit([g for g in scored if g is not None], learner.version, max_lag, acct))
        ready = _take(ready, len(ready), learner.version, acct)
        if ready:
            metrics = learner.step(RolloutBatch.concat(ready), group_size)
        else:
            metrics = {}
        t0 = time.perf_counter()
        rollout.set_weights(learner.version, learner.weights())
        metrics.update({"time/generate": t_gen, "time/reward": t_rew, "time/publish": time.perf_counter() - t0})
        on_step(step, RolloutBatch.concat(ready) if ready else None, metrics, acct)
    return acct


class RayTopology:
    """Rollout actors and reward workers on Ray, with weights published once per version through the object store.

    The pool is elastic: :meth:`add_actor` gives a new actor the newest weights before anything else, and dead
    actors or workers are replaced (Ray's own restarts are off, so a replacement is always a fresh, synced actor).
    ``ready_at`` holds when each member first returned a result (it is alive, placed and, for an actor, synced), and
    ``replaced_by`` which member took over from a dead one: together they time each recovery.
    """

    def __init__(self, rollout_cls, reward_cls, n_actors: int, n_reward: int, rollout_kwargs: dict,
                 reward_kwargs: dict, transport=None):
        from divcfg.common.transport import ObjectStoreTransport
        self.rollout_cls, self.rollout_kwargs = rollout_cls, rollout_kwargs
        self.reward_cls, self.reward_kwargs = reward_cls, reward_kwargs
        # How snapshots travel (common/transport.py); the roles only ever see its handles.
        self.transport = transport or ObjectStoreTransport()
        self.weights_ref = None
        self.weights_version = -1
        self._seed = 0
        self.ready_at: dict = {}
        self.replaced_by: dict = {}
        self.actors: list = []
        for _ in range(n_actors):
            self.add_actor()
        self.rewards = [reward_cls.remote(**reward_kwargs) for _ in range(n_reward)]

    def add_actor(self):
        actor = self.rollout_cls.remote(**self.rollout_kwargs, seed=self._seed)
        self._seed += 1
        if self.weights_ref is not None:
            actor.set_weights.remote(self.weights_version, self.weights_ref)  # queued before its first group
        self.actors.append(actor)
        return actor

    def remove_actor(self, actor) -> None:
        import ray
        if actor in self.actors:
            self.actors.remove(actor)
        ray.kill(actor, no_restart=True)

    def replace_actor(self, actor):
        """A fresh actor in place of a dead one (synced before it generates)."""
        self.remove_actor(actor)
        self.replaced_by[actor] = new = self.add_actor()
        return new

    def replace_reward(self, worker) -> bool:
        """Idempotent: several calls in flight on one dead worker all fail, but it is replaced once (True then)."""
        import ray
        if worker not in self.rewards:
            return False
        ray.kill(worker, no_restart=True)
        self.replaced_by[worker] = new = self.reward_cls.remote(**self.reward_kwargs)
        self.rewards[self.rewards.index(worker)] = new
        return True

    def mark_ready(self, member) -> None:
        self.ready_at.setdefault(member, time.perf_counter())

    def publish(self, version: int, weights: dict) -> None:
        # One publish per version (the default transport: one ray.put, which every actor reads zero-copy on its node).
        # Not awaited: Ray runs an actor's calls in submission order, so the swap lands between groups, never inside
        # one, and the learner does not wait for actors that are mid-generation.
        self.weights_ref = self.transport.publish(version, weights)
        self.weights_version = version
        for a in self.actors:
            a.set_weights.remote(version, self.weights_ref)


class RoleFailures(RuntimeError):
    pass


# How long the end of a run waits for the groups still in flight, so that they are counted rather than lost.
DRAIN_TIMEOUT_S = 30.0


def run_ray(learner, topo: RayTopology, stream: PromptStream, steps: int, batch_prompts: int, group_size: int,
            max_lag: int, mode: str, queue_groups: int, on_step, target=None, on_event=None,
            max_role_failures: int = 5, reward_batch: int = 8, resume_prompts=(),
            groups_per_call: int = 1) -> Accounting:
    """Sync or async training over a :class:`RayTopology`.

    ``target()`` (optional) returns the wanted actor count; the pool follows it between waits. A group whose actor
    dies goes back to the queue (``requeued``) and is generated again; a group is never half-used. ``on_step``
    may return True to end the run after that step (the books still balance). Each generation call asks an actor
    for up to ``groups_per_call`` groups, generated as one batch; admission counts groups, not calls.
    """
    import ray
    from ray.exceptions import RayError

    acct = Accounting()
    topo.publish(learner.version, learner.weights())
    idle = deque(topo.actors)
    retiring: set = set()
    # Prompts a crashed run had drawn but not used go first (run.resume), then the stream continues.
    requeue: deque[tuple[int, str]] = deque((pid, stream.at(pid)) for pid in resume_prompts)
    gen_inflight: dict = {}  # generation ref -> (actor, [(prompt_id, prompt), ...])
    rew_inflight: dict = {}  # reward ref -> (worker, groups)
    ready: deque[RolloutBatch] = deque()
    pending: deque[RolloutBatch] = deque()  # generated groups waiting for a free reward worker
    capacity = queue_groups or 2 * batch_prompts
    failures = {"rollout": 0, "reward": 0}
    launched = 0
    last_poll = 0.0
    want = None
    scaling_since = None  # when the pool last left its target; None while it is there
    event = on_event or (lambda text: None)

    def fail(role: str, err: Exception) -> None:
        failures[role] += 1
        acct.failures[role] = acct.failures.get(role, 0) + 1
        event(f"{role} failure {failures[role]} in a row: {type(err).__name__}")
        if failures[role] >= max_role_failures:
            raise RoleFailures(f"{failures[role]} consecutive {role} failures (learner.max_role_failures="
                               f"{max_role_failures}); last: {err}")

    def pool() -> tuple[int, int]:
        """(members that stay, of which generating): a member is generating once it has returned a group."""
        members = [a for a in topo.actors if a not in retiring]
        return len(members), sum(a in topo.ready_at for a in members)

    def requeue_prompt(pid: int, prompt: str) -> None:
        nonlocal launched
        requeue.append((pid, prompt))
        acct.requeued += 1
        launched -= 1  # a re-queued prompt does not count against admission twice

    def resize(force: bool = False) -> None:
        nonlocal last_poll, want, scaling_since
        if target is None or (not force and time.perf_counter() - last_poll < 0.25):
            return
        last_poll = time.perf_counter()
        want = target()
        have = len(topo.actors) - len(retiring)
        if want == have:
            return
        event(f"scaling rollout actors {have} -> {want}")
        scaling_since = time.perf_counter()
        while have < want:
            idle.append(topo.add_actor())
            have += 1
        while have > want:
            if idle:
                topo.remove_actor(idle.pop())
            else:
                busy = [(ref, a) for ref, (a, _) in gen_inflight.items() if a not in retiring]
                ref, actor = min(busy, key=lambda item: item[1] in topo.ready_at)
                if actor in topo.ready_at:
                    retiring.add(actor)  # finishes its current group, which is used, then leaves
                else:
                    # Not started yet (e.g. waiting for a node): its group may never come, so abandon it to the queue.
                    for pid, prompt in gen_inflight.pop(ref)[1]:
                        requeue_prompt(pid, prompt)
                    topo.remove_actor(actor)
            have -= 1

    def check_pool() -> None:
        """Report when the pool is back at its target with every member generating."""
        nonlocal scaling_since
        if scaling_since is not None and not retiring and pool() == (want, want):
            event(f"rollout pool at {want} actors, all generating, {time.perf_counter() - scaling_since:.1f} s "
                  "after the change")
            scaling_since = None

    def groups_generating() -> int:
        return sum(len(items) for _, items in gen_inflight.values())

    def launch() -> None:
        nonlocal launched
        while idle:
            if mode == "sync":
                room = (learner.version + 1) * batch_prompts - launched
            else:
                # Async admission (after AReaL's staleness rule): never have more groups launched than the learner
                # can consume within max_lag versions, and never more waiting than the ready queue holds.
                room = min((learner.version + max_lag + 1) * batch_prompts - launched,
                           capacity + len(topo.actors) * groups_per_call
                           - (len(ready) + groups_generating() + len(pending) + scoring()))
            n = min(groups_per_call, room)
            if n <= 0:
                return
            actor = idle.popleft()
            items = [requeue.popleft() if requeue else stream.next() for _ in range(n)]
            ref = actor.generate_groups.remote([(pid, prompt, pid) for pid, prompt in items])
            gen_inflight[ref] = (actor, items)
            launched += n

    def scoring() -> int:
        return sum(len(groups) for _, groups in rew_inflight.values())

    def score(groups: list[RolloutBatch]) -> None:
        """Queue groups for scoring; :func:`dispatch` sends them."""
        pending.extend(groups)

    def dispatch() -> None:
        """Each idle reward worker takes up to ``reward_batch`` waiting groups in one call: scoring is batched across
        groups exactly when groups arrive faster than one worker scores them, and adds no wait when they don't."""
        busy = {id(w) for w, _ in rew_inflight.values()}
        for worker in topo.rewards:
            if not pending:
                return
            if id(worker) in busy:
                continue
            groups = [pending.popleft() for _ in range(min(reward_batch, len(pending)))]
            rew_inflight[worker.score.remote(groups)] = (worker, groups)

    def settle(ref) -> None:
        """Handle one finished generation or scoring call."""
        if ref in gen_inflight:
            actor, items = gen_inflight.pop(ref)
            try:
                groups = ray.get(ref)
            except RayError as err:
                for pid, prompt in items:
                    requeue_prompt(pid, prompt)
                if actor in retiring:
                    retiring.discard(actor)
                    topo.remove_actor(actor)
                else:
                    idle.append(topo.replace_actor(actor))  # a fresh actor, synced before it generates
                fail("rollout", err)
                return
            failures["rollout"] = 0
            acct.generated += len(groups)
            topo.mark_ready(actor)
            if actor in retiring:
                retiring.discard(actor)
                topo.remove_actor(actor)
            else:
                idle.append(actor)
            score(groups)
        else:
            worker, groups = rew_inflight.pop(ref)
            try:
                scored = ray.get(ref)
            except RayError as err:
                # Every batch in flight on a dead worker fails; the worker is replaced and counted once.
                replaced = topo.replace_reward(worker)
                score(groups)  # the groups are intact: score them again elsewhere
                if replaced:
                    fail("reward", err)
                return
            failures["reward"] = 0
            topo.mark_ready(worker)
            for g in scored:
                if g is None:
                    acct.dropped += 1
                else:
                    ready.extend(_admit([g], learner.version, max_lag, acct))

    for step in range(steps):
        t0 = time.perf_counter()
        resize(force=True)  # at least once a step, even when enough groups are already waiting
        _expire(ready, learner.version, max_lag, acct)
        while len(ready) < batch_prompts:
            resize()
            launch()
            dispatch()
            refs = list(gen_inflight) + list(rew_inflight)
            if not refs:
                time.sleep(0.05)  # no actor can run now (e.g. scaled to 0 or pending resources)
                continue
            done, _ = ray.wait(refs, num_returns=1, timeout=1.0)
            if done:
                settle(done[0])
                check_pool()
            dispatch()
        t_wait = time.perf_counter() - t0
        batch = _take(ready, batch_prompts, learner.version, acct)
        if mode == "async":
            launch()  # keep actors busy while the learner trains
        dispatch()  # and reward workers: groups left waiting would otherwise sit out the update
        metrics = learner.step(RolloutBatch.concat(batch), group_size)
        t0 = time.perf_counter()
        topo.publish(learner.version, learner.weights())
        members, generating = pool()
        metrics.update({"time/wait_rollouts": t_wait, "time/publish": time.perf_counter() - t0,
                        "rollout/queue_depth": float(len(ready)),
                        "rollout/actors": float(members), "rollout/actors_generating": float(generating),
                        "rollout/actors_retiring": float(len(retiring)),
                        "rollout/groups_requeued": float(acct.requeued)})
        acct.outstanding = sorted([pid for _, items in gen_inflight.values() for pid, _ in items]
                                  + [pid for pid, _ in requeue]
                                  + [int(g.prompt_id[0]) for g in (*pending, *ready)]
                                  + [int(g.prompt_id[0]) for _, groups in rew_inflight.values() for g in groups])
        if on_step(step, RolloutBatch.concat(batch), metrics, acct):
            break
    # Whatever is still in flight at the end is generated but unused: wait for it so the books balance. A generation
    # that does not come back in time (its actor never found a node) leaves its prompt unfinished.
    deadline = time.perf_counter() + DRAIN_TIMEOUT_S
    while gen_inflight or rew_inflight:
        done, _ = ray.wait(list(gen_inflight) + list(rew_inflight), num_returns=1,
                           timeout=max(0.0, deadline - time.perf_counter()))
        if not done:
            break
        ref = done[0]
        if ref in gen_inflight:
            _, items = gen_inflight.pop(ref)
            try:
                ray.get(ref)
            except RayError:
                for pid, prompt in items:
                    requeue_prompt(pid, prompt)
                continue
            acct.generated += len(items)
            acct.stale += len(items)
        else:
            _, groups = rew_inflight.pop(ref)
            acct.stale += len(groups)
    acct.stale += len(ready) + len(pending) + scoring()
    acct.unfinished = len(requeue) + groups_generating()
    return acct
