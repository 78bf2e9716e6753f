"""The Ray modes' scheduler: prompts go to rollout actors, their groups to reward workers, scored groups to the
learner, and each new version's weights back to the actors.

The scheduler owns the queues, the calls in flight and the books (:class:`~divcfg.job.books.Accounting`). It sees
its roles through two small interfaces: the learner (:class:`Trainee`) and the pool of members with the calls made
to them (:class:`Members`; :class:`divcfg.job.pool.RayTopology` on Ray, plain fakes in the unit tests).
"""
from __future__ import annotations

import time
from collections import deque
from typing import Any, Callable, Protocol

from divcfg.common.record import RolloutBatch
from divcfg.job.books import Accounting, PromptStream, admit, expire, launch_room, take

# How long the end of a run waits for the groups still in flight, so that they are counted rather than lost.
DRAIN_TIMEOUT_S = 30.0


class RoleFailures(RuntimeError):
    pass


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
        self.learner, self.members, self.stream = learner, members, stream
        # A lost learner (one whose calls raise ``learner.failure``): ``recover()`` rebuilds it from the last
        # complete checkpoint and returns (the run's step to go on from, its outstanding prompts, its books).
        self.recover, self.learner_failure = recover, tuple(getattr(learner, "failure", ())) if recover else ()
        self.batch_prompts, self.group_size, self.max_lag, self.mode = batch_prompts, group_size, max_lag, mode
        self.capacity = queue_groups or 2 * batch_prompts
        self.target, self.event = target, on_event or (lambda text: None)
        self.max_role_failures, self.reward_batch, self.groups_per_call = max_role_failures, reward_batch, groups_per_call
        self.acct = Accounting()
        self.idle = deque(members.actors)
        self.retiring: set = set()
        # Prompts a crashed run had drawn but not used go first (run.resume), then the stream continues.
        self.requeue: deque[tuple[int, str]] = deque((pid, stream.at(pid)) for pid in resume_prompts)
        self.gen_inflight: dict = {}  # generation call -> (actor, [(prompt_id, prompt), ...])
        self.rew_inflight: dict = {}  # scoring call -> (worker, groups)
        self.pending: deque[RolloutBatch] = deque()  # generated groups waiting for a free reward worker
        self.ready: deque[RolloutBatch] = deque()  # scored and admitted groups waiting for the learner
        self.in_a_row = {"rollout": 0, "reward": 0, "learner": 0}  # consecutive failures per role
        self.launched = 0  # groups launched (a re-queued prompt is taken back)
        self.draining = False
        self.last_poll, self.want, self.scaling_since = 0.0, None, None

    # ---- the step loop ----------------------------------------------------------------------------------------
    def run(self, steps: int, on_step) -> Accounting:
        """Train ``steps`` steps; ``on_step(i, batch, metrics, acct)`` returning True ends the run after that step."""
        self.members.publish(self.learner.version, self.learner.weights())
        step = 0
        while step < steps:
            t0 = time.perf_counter()
            self.resize(force=True)  # at least once a step, even when enough groups are already waiting
            expire(self.ready, self.learner.version, self.max_lag, self.acct)
            self.fill()
            t_wait = time.perf_counter() - t0
            batch = RolloutBatch.concat(take(self.ready, self.batch_prompts, self.learner.version, self.acct))
            if self.mode == "async":
                self.launch()  # keep actors busy while the learner trains
            self.dispatch()  # and reward workers: groups left waiting would otherwise sit out the update
            try:
                metrics = self.learner.step(batch, self.group_size)
                t0 = time.perf_counter()
                weights = self.learner.weights()
            except self.learner_failure as err:
                step = self.learner_lost(err)
                continue
            self.in_a_row["learner"] = 0
            self.members.publish(self.learner.version, weights)
            metrics.update({"time/wait_rollouts": t_wait, "time/publish": time.perf_counter() - t0,
                            **self.pool_metrics()})
            self.acct.outstanding = self.outstanding()
            try:
                stop = on_step(step, batch, metrics, self.acct)
            except self.learner_failure as err:  # lost while its checkpoint was saved: that one never completed
                step = self.learner_lost(err)
                continue
            if stop:
                break
            step += 1
        self.drain()
        return self.acct

    def fill(self) -> None:
        """Launch, score and wait until a batch of groups is ready for the learner."""
        while len(self.ready) < self.batch_prompts:
            self.resize()
            self.launch()
            self.dispatch()
            calls = self.calls()
            if not calls:
                self.pause()
                continue
            done = self.members.wait(calls, 1.0)
            if done:
                self.settle(done[0])
                self.check_pool()
            self.dispatch()

    def pause(self) -> None:
        """Nothing in flight and no room to launch: no actor can run now (e.g. scaled to 0, or waiting for a node)."""
        time.sleep(0.05)

    def drain(self, timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        """Settle what is still in flight so the books balance: whatever was generated is counted, and stale since
        no step uses it. A generation that does not come back in time (its actor never found a node) leaves its
        prompts unfinished."""
        self.draining = True
        deadline = time.perf_counter() + timeout_s
        while self.gen_inflight or self.rew_inflight:
            done = self.members.wait(self.calls(), max(0.0, deadline - time.perf_counter()))
            if not done:
                break
            self.settle(done[0])
        self.acct.stale += len(self.ready) + len(self.pending) + self.scoring()
        self.ready.clear()
        self.pending.clear()
        self.acct.unfinished = len(self.requeue) + self.generating()

    # ---- calls out --------------------------------------------------------------------------------------------
    def launch(self) -> None:
        """Give each idle actor as many groups as admission allows."""
        while self.idle:
            waiting = len(self.ready) + self.generating() + len(self.pending) + self.scoring()
            # Stale and dropped groups will never reach the learner: they give their slots back (kept, each one
            # would shrink the window for the rest of the run, and (max_lag + 1) x batch_prompts of them stall it).
            in_play = self.launched - self.acct.stale - self.acct.dropped
            room = launch_room(self.mode, self.learner.version, in_play, self.batch_prompts, self.max_lag,
                               self.capacity + len(self.members.actors) * self.groups_per_call, waiting)
            n = min(self.groups_per_call, room)
            if n <= 0:
                return
            actor = self.idle.popleft()
            items = [self.requeue.popleft() if self.requeue else self.stream.next() for _ in range(n)]
            self.gen_inflight[self.members.generate(actor, [(pid, prompt, pid) for pid, prompt in items])] = (
                actor, items)
            self.launched += n

    def dispatch(self) -> None:
        """Each idle reward worker takes up to ``reward_batch`` waiting groups in one call: scoring is batched across
        groups exactly when groups arrive faster than one worker scores them, and adds no wait when they don't."""
        busy = {id(w) for w, _ in self.rew_inflight.values()}
        for worker in self.members.rewards:
            if not self.pending:
                return
            if id(worker) in busy:
                continue
            groups = [self.pending.popleft() for _ in range(min(self.reward_batch, len(self.pending)))]
            self.rew_inflight[self.members.score(worker, groups)] = (worker, groups)

    # ---- results in -------------------------------------------------------------------------------------------
    def settle(self, call) -> None:
        """Handle one finished generation or scoring call."""
        if call in self.gen_inflight:
            actor, items = self.gen_inflight.pop(call)
            try:
                groups = self.members.result(call)
            except self.members.failure as err:
                self.actor_died(actor, items, err)
                return
            self.in_a_row["rollout"] = 0
            self.acct.generated += len(groups)
            self.members.mark_ready(actor)
            self.release(actor)
            self.pending.extend(groups)  # dispatch() sends them to a reward worker
            return
        worker, groups = self.rew_inflight.pop(call)
        try:
            scored = self.members.result(call)
        except self.members.failure as err:
            self.reward_died(worker, groups, err)
            return
        self.in_a_row["reward"] = 0
        self.members.mark_ready(worker)
        for g in scored:
            if g is None:
                self.acct.dropped += 1
            else:
                self.ready.extend(admit([g], self.learner.version, self.max_lag, self.acct))

    def actor_died(self, actor, items: list[tuple[int, str]], err: BaseException) -> None:
        """Its prompts go back to the queue; a fresh actor (synced before it generates) takes its place."""
        for pid, prompt in items:
            self.requeue_prompt(pid, prompt)
        if self.draining:
            return  # the run is over: nothing to replace, and no failure can stop it now
        if actor in self.retiring:
            self.retiring.discard(actor)
            self.members.remove_actor(actor)
        else:
            self.idle.append(self.members.replace_actor(actor))
        self.fail("rollout", err)

    def reward_died(self, worker, groups: list[RolloutBatch], err: BaseException) -> None:
        """The groups are intact: they are scored again elsewhere. Every batch in flight on a dead worker fails; the
        worker is replaced and counted once."""
        self.pending.extend(groups)
        if not self.draining and self.members.replace_reward(worker):
            self.fail("reward", err)

    def release(self, actor) -> None:
        """An actor that finished its call goes back to work, or leaves if it was retiring."""
        if actor in self.retiring:
            self.retiring.discard(actor)
            self.members.remove_actor(actor)
        else:
            self.idle.append(actor)

    def requeue_prompt(self, pid: int, prompt: str) -> None:
        self.requeue.append((pid, prompt))
        self.acct.requeued += 1
        self.launched -= 1  # a re-queued prompt does not count against admission twice

    def learner_lost(self, err: BaseException) -> int:
        """The learner died: count it (stopping after ``max_role_failures`` in a row), drop the work since the last
        checkpoint, and go on from it as a resume does; returns the run's step to continue from."""
        self.fail("learner", err)
        self.abandon()
        while True:
            try:
                step, outstanding, books = self.recover()
                weights = self.learner.weights()
                break
            except self.learner_failure as again:  # lost again while it was rebuilt (a preemption wave): retried
                self.fail("learner", again)
        failures = dict(self.acct.failures)
        self.acct = Accounting(**{k: v for k, v in books.items() if k in ("generated", "used", "stale", "dropped",
                                                                          "requeued")})
        # Groups generated but unused at the checkpoint are generated again from their prompts: counted once.
        self.acct.generated = self.acct.used + self.acct.stale + self.acct.dropped
        self.acct.failures = failures
        self.ready.clear()
        self.pending.clear()
        self.requeue = deque((pid, self.stream.at(pid)) for pid in outstanding)
        self.launched = self.acct.used + self.acct.stale + self.acct.dropped  # nothing is in flight now
        self.event(f"learner restart {failures.get('learner', 0)}: back to step {step} from the last checkpoint, "
                   f"{len(outstanding)} prompts replayed")
        self.members.publish(self.learner.version, weights)
        return step

    def abandon(self, timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        """Let the calls in flight finish and drop their results (their prompts are replayed from the checkpoint);
        a member that died, or did not answer in time, is replaced."""
        deadline = time.perf_counter() + timeout_s
        while self.gen_inflight or self.rew_inflight:
            done = self.members.wait(self.calls(), max(0.0, deadline - time.perf_counter()))
            if not done:
                break
            self.drop(done[0])
        for actor, _ in self.gen_inflight.values():
            self.retiring.discard(actor)
            self.idle.append(self.members.replace_actor(actor))
        for worker, _ in self.rew_inflight.values():
            self.members.replace_reward(worker)
        self.gen_inflight.clear()
        self.rew_inflight.clear()

    def drop(self, call) -> None:
        """One finished call whose result is not used; its member goes back to work (or is replaced if it died)."""
        member, _ = self.gen_inflight.pop(call) if call in self.gen_inflight else self.rew_inflight.pop(call)
        try:
            self.members.result(call)
        except self.members.failure:
            if member in self.members.rewards:
                self.members.replace_reward(member)
            else:
                self.retiring.discard(member)
                self.idle.append(self.members.replace_actor(member))
            return
        if member not in self.members.rewards:
            self.release(member)

    def fail(self, role: str, err: BaseException) -> None:
        self.in_a_row[role] += 1
        self.acct.failures[role] = self.acct.failures.get(role, 0) + 1
        self.event(f"{role} failure {self.in_a_row[role]} in a row: {type(err).__name__}")
        if self.in_a_row[role] >= self.max_role_failures:
            raise RoleFailures(f"{self.in_a_row[role]} consecutive {role} failures (learner.max_role_failures="
                               f"{self.max_role_failures}); last: {err}")

    # ---- the elastic pool -------------------------------------------------------------------------------------
    def resize(self, force: bool = False) -> None:
        """Follow ``target()`` (polled at most every 0.25 s unless forced)."""
        if self.target is None or (not force and time.perf_counter() - self.last_poll < 0.25):
            return
        self.last_poll = time.perf_counter()
        self.want = self.target()
        have = len(self.members.actors) - len(self.retiring)
        if self.want == have:
            return
        self.event(f"scaling rollout actors {have} -> {self.want}")
        self.scaling_since = time.perf_counter()
        for _ in range(have, self.want):
            self.idle.append(self.members.add_actor())
        for _ in range(self.want, have):
            self.shrink_one()

    def shrink_one(self) -> None:
        """Take one actor out of the pool: an idle one at once, else a busy one after its current call."""
        if self.idle:
            self.members.remove_actor(self.idle.pop())
            return
        busy = [(call, a) for call, (a, _) in self.gen_inflight.items() if a not in self.retiring]
        call, actor = min(busy, key=lambda item: item[1] in self.members.ready_at)
        if actor in self.members.ready_at:
            self.retiring.add(actor)  # finishes its current group, which is used, then leaves
        else:
            # Not started yet (e.g. waiting for a node): its group may never come, so abandon it to the queue.
            for pid, prompt in self.gen_inflight.pop(call)[1]:
                self.requeue_prompt(pid, prompt)
            self.members.remove_actor(actor)

    def check_pool(self) -> None:
        """Report when the pool is back at its target with every member generating."""
        if self.scaling_since is not None and not self.retiring and self.pool() == (self.want, self.want):
            self.event(f"rollout pool at {self.want} actors, all generating, "
                       f"{time.perf_counter() - self.scaling_since:.1f} s after the change")
            self.scaling_since = None

    # ---- views ------------------------------------------------------------------------------------------------
    def calls(self) -> list:
        return list(self.gen_inflight) + list(self.rew_inflight)

    def generating(self) -> int:
        return sum(len(items) for _, items in self.gen_inflight.values())

    def scoring(self) -> int:
        return sum(len(groups) for _, groups in self.rew_inflight.values())

    def pool(self) -> tuple[int, int]:
        """(members that stay, of which generating): a member is generating once it has returned a group."""
        members = [a for a in self.members.actors if a not in self.retiring]
        return len(members), sum(a in self.members.ready_at for a in members)

    def pool_metrics(self) -> dict[str, float]:
        members, generating = self.pool()
        return {"rollout/queue_depth": float(len(self.ready)), "rollout/actors": float(members),
                "rollout/actors_generating": float(generating), "rollout/actors_retiring": float(len(self.retiring)),
                "rollout/groups_requeued": float(self.acct.requeued),
                "rollout/actors_spare": float(len(getattr(self.members, "spares", ()))),
                "rollout/reward_spares": float(len(getattr(self.members, "reward_spares", ())))}

    def outstanding(self) -> list[int]:
        """Stream positions drawn but not used: generating, re-queued, waiting for or being scored, ready."""
        return sorted([pid for _, items in self.gen_inflight.values() for pid, _ in items]
                      + [pid for pid, _ in self.requeue]
                      + [int(g.prompt_id[0]) for g in (*self.pending, *self.ready)]
                      + [int(g.prompt_id[0]) for _, groups in self.rew_inflight.values() for g in groups])
