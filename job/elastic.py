"""The elastic rollout pool: which actors are idle, which retire after their current call, and the size it follows.

A plain class over the scheduler's :class:`~divcfg.job.scheduler.Members` and :class:`~divcfg.job.flight.Flight`,
tested without Ray (``tests/job/test_elastic_pool.py``).
"""
from __future__ import annotations

import time
from collections import deque
from typing import Callable

from divcfg.job.flight import Flight

# How often the pool asks ``target()`` for the wanted size between waits (a call to the cluster controller).
POLL_S = 0.25


class ElasticPool:
    """The rollout actors the scheduler may give work to.

    ``target()`` (optional) returns the wanted actor count; :meth:`resize` follows it. Growing adds actors at once.
    Shrinking takes an idle actor at once, else lets a busy one finish its call (its groups are used) and then
    leave, or, when it has not generated yet (e.g. waiting for a node), gives its prompts back to the queue.
    """

    def __init__(self, members, flight: Flight, target: Callable[[], int] | None = None,
                 on_event: Callable[[str], None] | None = None):
        self.members, self.flight, self.target = members, flight, target
        self.event = on_event or (lambda text: None)
        self.idle = deque(members.actors)
        self.retiring: set = set()
        self.last_poll, self.want, self.scaling_since = 0.0, None, None

    def release(self, actor) -> None:
        """An actor that finished its call goes back to work, or leaves if it was retiring."""
        if actor in self.retiring:
            self.retiring.discard(actor)
            self.members.remove_actor(actor)
        else:
            self.idle.append(actor)

    def died(self, actor) -> None:
        """A dead actor leaves if it was retiring; otherwise a fresh one (synced before it generates) replaces it."""
        if actor in self.retiring:
            self.retiring.discard(actor)
            self.members.remove_actor(actor)
        else:
            self.idle.append(self.members.replace_actor(actor))

    def renew(self, actor) -> None:
        """Replace an actor whose call was abandoned (a lost learner): it stays, even if it was retiring."""
        self.retiring.discard(actor)
        self.idle.append(self.members.replace_actor(actor))

    def resize(self, force: bool = False) -> None:
        """Follow ``target()`` (polled at most every :data:`POLL_S` unless forced)."""
        if self.target is None or (not force and time.perf_counter() - self.last_poll < POLL_S):
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
        busy = [(call, a) for call, (a, _) in self.flight.gen.items() if a not in self.retiring]
        call, actor = min(busy, key=lambda item: item[1] in self.members.ready_at)
        if actor in self.members.ready_at:
            self.retiring.add(actor)  # finishes its current group, which is used, then leaves
        else:
            # Not started yet (e.g. waiting for a node): its group may never come, so abandon it to the queue.
            for pid, prompt in self.flight.gen.pop(call)[1]:
                self.flight.requeue_prompt(pid, prompt)
            self.members.remove_actor(actor)

    def check(self) -> None:
        """Report when the pool is back at its target with every member generating."""
        if self.scaling_since is not None and not self.retiring and self.size() == (self.want, self.want):
            self.event(f"rollout pool at {self.want} actors, all generating, "
                       f"{time.perf_counter() - self.scaling_since:.1f} s after the change")
            self.scaling_since = None

    def size(self) -> tuple[int, int]:
        """(members that stay, of which generating): a member is generating once it has returned a group."""
        members = [a for a in self.members.actors if a not in self.retiring]
        return len(members), sum(a in self.members.ready_at for a in members)

    def metrics(self) -> dict[str, float]:
        members, generating = self.size()
        return {"rollout/actors": float(members), "rollout/actors_generating": float(generating),
                "rollout/actors_retiring": float(len(self.retiring)),
                "rollout/actors_spare": float(len(getattr(self.members, "spares", ()))),
                "rollout/reward_spares": float(len(getattr(self.members, "reward_spares", ())))}
