"""The Ray modes' scheduler: prompts go to rollout actors, their groups to reward workers, scored groups to the
learner, and each new version's weights back to the actors.

The scheduler is the loop. The work in flight and the admission count are a :class:`~divcfg.job.flight.Flight`,
the actors it may call an :class:`~divcfg.job.elastic.ElasticPool`, and what a failure changes a
:class:`~divcfg.job.recovery.Recovery`; the books are an :class:`~divcfg.job.books.Accounting`. It sees its roles
through two small interfaces: the learner (:class:`Trainee`) and the pool of members with the calls made
to them (:class:`Members`; :class:`divcfg.job.pool.RayTopology` on Ray, plain fakes in the unit tests).
"""
from __future__ import annotations

import time
from typing import Any, Callable, Protocol

from divcfg.common.record import RolloutBatch
from divcfg.job.books import Accounting, PromptStream, admit, expire, launch_room, take
from divcfg.job.elastic import ElasticPool
from divcfg.job.flight import Flight
from divcfg.job.recovery import DRAIN_TIMEOUT_S, Recovery


class Trainee(Protocol):
    """The learner, as the scheduler uses it."""

    version: int

    def weights(self) -> dict: ...
    def step(self, batch: RolloutBatch, group_size: int) -> dict: ...


class Members(Protocol):
    """The rollout actors and reward workers, and the calls made to them.

    A call is an opaque handle (a Ray object ref); :meth:`result` of a call whose member died raises one of
    ``failure``. ``ready_at`` holds the members that have returned a result.
    """

    actors: list
    rewards: list
    ready_at: dict
    failure: tuple[type[BaseException], ...]

    def generate(self, actor, items: list[tuple[int, str, int]]) -> Any: ...
    def score(self, worker, groups: list[RolloutBatch]) -> Any: ...
    def wait(self, calls: list, timeout: float) -> list: ...
    def result(self, call) -> Any: ...
    def add_actor(self) -> Any: ...
    def remove_actor(self, actor) -> None: ...
    def replace_actor(self, actor) -> Any: ...
    def replace_reward(self, worker) -> bool: ...
    def mark_ready(self, member) -> None: ...
    def publish(self, version: int, weights: dict) -> None: ...


class Scheduler:
    """Sync or async training over a pool of :class:`Members`.

    ``target()`` (optional) returns the wanted actor count; the pool follows it between waits. A group whose actor
    dies goes back to the queue (``requeued``) and is generated again; a group is never half-used. Each generation
    call asks an actor for up to ``groups_per_call`` groups, generated as one batch; admission counts groups, not
    calls. ``max_role_failures`` consecutive failures of one role stop the run (:class:`RoleFailures`).
    """

    def __init__(self, learner: Trainee, members: Members, stream: PromptStream, *, batch_prompts: int,
                 group_size: int, max_lag: int, mode: str, queue_groups: int = 0,
                 target: Callable[[], int] | None = None, on_event: Callable[[str], None] | None = None,
                 max_role_failures: int = 5, reward_batch: int = 8, resume_prompts=(), groups_per_call: int = 1,
                 recover: Callable[[], tuple[int, list[int], dict]] | None = None):
        self.learner, self.members = learner, members
        self.batch_prompts, self.group_size, self.max_lag, self.mode = batch_prompts, group_size, max_lag, mode
        self.capacity = queue_groups or 2 * batch_prompts
        self.reward_batch, self.groups_per_call = reward_batch, groups_per_call
        self.acct = Accounting()
        self.flight = Flight(stream, self.acct, resume_prompts)
        self.pool = ElasticPool(members, self.flight, target, on_event)
        # A lost learner (one whose calls raise ``learner.failure``) is rebuilt by ``recover()``; without it, its
        # failure is the run's.
        self.recovery = Recovery(members, self.flight, self.pool, max_role_failures=max_role_failures,
                                 recover=recover, on_event=on_event,
                                 learner_failure=tuple(getattr(learner, "failure", ())) if recover else ())

    # ---- the step loop ----------------------------------------------------------------------------------------
    def run(self, steps: int, on_step) -> Accounting:
        """Train ``steps`` steps; ``on_step(i, batch, metrics, acct)`` returning True ends the run after that step."""
        self.members.publish(self.learner.version, self.learner.weights())
        flight, lost = self.flight, self.recovery.learner_failure
        step = 0
        while step < steps:
            t0 = time.perf_counter()
            self.pool.resize(force=True)  # at least once a step, even when enough groups are already waiting
            expire(flight.ready, self.learner.version, self.max_lag, self.acct)
            self.fill()
            t_wait = time.perf_counter() - t0
            batch = RolloutBatch.concat(take(flight.ready, self.batch_prompts, self.learner.version, self.acct))
            if self.mode == "async":
                self.launch()  # keep actors busy while the learner trains
            self.dispatch()  # and reward workers: groups left waiting would otherwise sit out the update
            try:
                metrics = self.learner.step(batch, self.group_size)
                t0 = time.perf_counter()
                weights = self.learner.weights()
            except lost as err:
                step = self.recovery.learner_lost(self.learner, err)
                continue
            self.recovery.succeeded("learner")
            self.members.publish(self.learner.version, weights)
            metrics.update({"time/wait_rollouts": t_wait, "time/publish": time.perf_counter() - t0,
                            **self.pool_metrics()})
            self.acct.outstanding = flight.outstanding()
            try:
                stop = on_step(step, batch, metrics, self.acct)
            except lost as err:  # lost while its checkpoint was saved: that one never completed
                step = self.recovery.learner_lost(self.learner, err)
                continue
            if stop:
                break
            step += 1
        self.drain()
        return self.acct

    def fill(self) -> None:
        """Launch, score and wait until a batch of groups is ready for the learner."""
        while len(self.flight.ready) < self.batch_prompts:
            self.pool.resize()
            self.launch()
            self.dispatch()
            calls = self.flight.calls()
            if not calls:
                self.pause()
                continue
            done = self.members.wait(calls, 1.0)
            if done:
                self.settle(done[0])
                self.pool.check()
            self.dispatch()

    def pause(self) -> None:
        """Nothing in flight and no room to launch: no actor can run now (e.g. scaled to 0, or waiting for a node)."""
        time.sleep(0.05)

    def drain(self, timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        """Settle what is still in flight so the books balance: whatever was generated is counted, and stale since
        no step uses it. A generation that does not come back in time (its actor never found a node) leaves its
        prompts unfinished."""
        flight = self.flight
        self.recovery.draining = True
        deadline = time.perf_counter() + timeout_s
        while flight.gen or flight.rew:
            done = self.members.wait(flight.calls(), max(0.0, deadline - time.perf_counter()))
            if not done:
                break
            self.settle(done[0])
        self.acct.stale += len(flight.ready) + len(flight.pending) + flight.scoring()
        flight.ready.clear()
        flight.pending.clear()
        self.acct.unfinished = len(flight.requeue) + flight.generating()

    # ---- calls out --------------------------------------------------------------------------------------------
    def launch(self) -> None:
        """Give each idle actor as many groups as admission allows."""
        flight = self.flight
        while self.pool.idle:
            room = launch_room(self.mode, self.learner.version, flight.in_play(), self.batch_prompts, self.max_lag,
                               self.capacity + len(self.members.actors) * self.groups_per_call, flight.waiting())
            n = min(self.groups_per_call, room)
            if n <= 0:
                return
            actor = self.pool.idle.popleft()
            items = flight.draw(n)
            flight.gen[self.members.generate(actor, [(pid, prompt, pid) for pid, prompt in items])] = (actor, items)

    def dispatch(self) -> None:
        """Each idle reward worker takes up to ``reward_batch`` waiting groups in one call: scoring is batched across
        groups exactly when groups arrive faster than one worker scores them, and adds no wait when they don't."""
        pending = self.flight.pending
        busy = {id(w) for w, _ in self.flight.rew.values()}
        for worker in self.members.rewards:
            if not pending:
                return
            if id(worker) in busy:
                continue
            groups = [pending.popleft() for _ in range(min(self.reward_batch, len(pending)))]
            self.flight.rew[self.members.score(worker, groups)] = (worker, groups)

    # ---- results in -------------------------------------------------------------------------------------------
    def settle(self, call) -> None:
        """Handle one finished generation or scoring call."""
        flight = self.flight
        if call in flight.gen:
            actor, items = flight.gen.pop(call)
            try:
                groups = self.members.result(call)
            except self.members.failure as err:
                self.recovery.actor_died(actor, items, err)
                return
            self.recovery.succeeded("rollout")
            self.acct.generated += len(groups)
            self.members.mark_ready(actor)
            self.pool.release(actor)
            flight.pending.extend(groups)  # dispatch() sends them to a reward worker
            return
        worker, groups = flight.rew.pop(call)
        try:
            scored = self.members.result(call)
        except self.members.failure as err:
            self.recovery.reward_died(worker, groups, err)
            return
        self.recovery.succeeded("reward")
        self.members.mark_ready(worker)
        for g in scored:
            if g is None:
                self.acct.dropped += 1
            else:
                flight.ready.extend(admit([g], self.learner.version, self.max_lag, self.acct))

    def pool_metrics(self) -> dict[str, float]:
        return {"rollout/queue_depth": float(len(self.flight.ready)), **self.pool.metrics(),
                "rollout/groups_requeued": float(self.acct.requeued)}
