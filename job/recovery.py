"""Failure recovery for the scheduler: a dead actor's prompts are generated again, a dead reward worker's groups are
scored again, and a lost learner goes back to its last complete checkpoint as a resume does.

A plain class over the scheduler's :class:`~divcfg.job.scheduler.Members`, :class:`~divcfg.job.flight.Flight` and
:class:`~divcfg.job.elastic.ElasticPool`, tested without Ray (``tests/job/test_recovery.py``).
"""
from __future__ import annotations

import time
from typing import Callable

from divcfg.common.record import RolloutBatch
from divcfg.job.elastic import ElasticPool
from divcfg.job.flight import Flight

# How long the end of a run (or a lost learner) waits for the calls still in flight, so that they are counted (or
# their members found alive) rather than lost.
DRAIN_TIMEOUT_S = 30.0

ROLES = ("rollout", "reward", "learner")


class RoleFailures(RuntimeError):
    pass


class Recovery:
    """Counts failures per role, stopping the run after ``max_role_failures`` in a row of one role, and repairs the
    work in flight after each.

    ``recover()`` (optional) rebuilds a lost learner from the last complete checkpoint and returns (the run's step to
    go on from, its outstanding prompts, its books); ``learner_failure`` are the exceptions that mean it was lost.
    """

    def __init__(self, members, flight: Flight, pool: ElasticPool, *, max_role_failures: int = 5,
                 recover: Callable[[], tuple[int, list[int], dict]] | None = None,
                 learner_failure: tuple[type[BaseException], ...] = (),
                 on_event: Callable[[str], None] | None = None):
        self.members, self.flight, self.pool = members, flight, pool
        self.max_role_failures, self.recover, self.learner_failure = max_role_failures, recover, learner_failure
        self.event = on_event or (lambda text: None)
        self.in_a_row = dict.fromkeys(ROLES, 0)  # consecutive failures per role
        self.draining = False  # the run is over: nothing is replaced, and no failure can stop it now

    def succeeded(self, role: str) -> None:
        self.in_a_row[role] = 0

    def fail(self, role: str, err: BaseException) -> None:
        acct = self.flight.acct
        self.in_a_row[role] += 1
        acct.failures[role] = acct.failures.get(role, 0) + 1
        self.event(f"{role} failure {self.in_a_row[role]} in a row: {type(err).__name__}")
        if self.in_a_row[role] >= self.max_role_failures:
            raise RoleFailures(f"{self.in_a_row[role]} consecutive {role} failures (learner.max_role_failures="
                               f"{self.max_role_failures}); last: {err}")

    def actor_died(self, actor, items: list[tuple[int, str]], err: BaseException) -> None:
        """Its prompts go back to the queue; a fresh actor (synced before it generates) takes its place."""
        for pid, prompt in items:
            self.flight.requeue_prompt(pid, prompt)
        if self.draining:
            return
        self.pool.died(actor)
        self.fail("rollout", err)

    def reward_died(self, worker, groups: list[RolloutBatch], err: BaseException) -> None:
        """The groups are intact: they are scored again elsewhere. Every batch in flight on a dead worker fails; the
        worker is replaced and counted once."""
        self.flight.pending.extend(groups)
        if not self.draining and self.members.replace_reward(worker):
            self.fail("reward", err)

    def learner_lost(self, learner, err: BaseException) -> int:
        """The learner died: count it, drop the work since the last checkpoint, and go on from it as a resume does;
        returns the run's step to continue from."""
        self.fail("learner", err)
        self.abandon()
        while True:
            try:
                step, outstanding, books = self.recover()
                weights = learner.weights()
                break
            except self.learner_failure as again:  # lost again while it was rebuilt (a preemption wave): retried
                self.fail("learner", again)
        self.flight.acct.restore(books)
        self.flight.replay(outstanding)
        self.event(f"learner restart {self.flight.acct.failures.get('learner', 0)}: back to step {step} from the "
                   f"last checkpoint, {len(outstanding)} prompts replayed")
        self.members.publish(learner.version, weights)
        return step

    def abandon(self, timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        """Let the calls in flight finish and drop their results (their prompts are replayed from the checkpoint);
        a member that died, or did not answer in time, is replaced."""
        flight = self.flight
        deadline = time.perf_counter() + timeout_s
        while flight.gen or flight.rew:
            done = self.members.wait(flight.calls(), max(0.0, deadline - time.perf_counter()))
            if not done:
                break
            self.drop(done[0])
        for actor, _ in flight.gen.values():
            self.pool.renew(actor)
        for worker, _ in flight.rew.values():
            self.members.replace_reward(worker)
        flight.gen.clear()
        flight.rew.clear()

    def drop(self, call) -> None:
        """One finished call whose result is not used; its member goes back to work (or is replaced if it died)."""
        flight = self.flight
        member, _ = flight.gen.pop(call) if call in flight.gen else flight.rew.pop(call)
        try:
            self.members.result(call)
        except self.members.failure:
            if member in self.members.rewards:
                self.members.replace_reward(member)
            else:
                self.pool.renew(member)
            return
        if member not in self.members.rewards:
            self.pool.release(member)
