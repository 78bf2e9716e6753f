"""The scheduler's books and its admission rule, shared by the local loop and the Ray scheduler.

Every prompt drawn from the stream is generated once (or still waiting when the run ends), and every generated group
ends up used, stale or dropped. Admission bounds the policy lag of what the learner trains on.
"""
from __future__ import annotations

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

    def restore(self, books: dict) -> None:
        """Go back to a checkpoint's books (a lost learner), in place, keeping the failures counted since.

        Groups generated but unused at the checkpoint are generated again from their prompts: counted once.
        """
        for name in ("used", "stale", "dropped", "requeued"):
            setattr(self, name, int(books.get(name, 0)))
        self.generated = self.used + self.stale + self.dropped
        self.unfinished, self.lags, self.outstanding = 0, [], []


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


def admit(groups: list[RolloutBatch], version: int, max_lag: int, acct: Accounting) -> list[RolloutBatch]:
    """Drop groups whose policy lag exceeds the bound (counted as stale); return the rest."""
    kept = [g for g in groups if version - int(g.policy_version[0]) <= max_lag]
    acct.stale += len(groups) - len(kept)
    return kept


def expire(ready: deque, version: int, max_lag: int, acct: Accounting) -> None:
    """Drop waiting groups that the last update made too old (counted as stale): admission alone would let a group
    admitted at lag ``max_lag`` be trained on one version later."""
    kept = admit(list(ready), version, max_lag, acct)
    ready.clear()
    ready.extend(kept)


def take(ready: deque, n: int, version: int, acct: Accounting) -> list[RolloutBatch]:
    """The next ``n`` groups for an update, used from here on; their lag at training time is recorded."""
    batch = [ready.popleft() for _ in range(n)]
    acct.used += n
    acct.lags.extend(version - int(g.policy_version[0]) for g in batch)
    return batch


def launch_room(mode: str, version: int, launched: int, batch_prompts: int, max_lag: int, capacity: int,
                waiting: int) -> int:
    """How many more groups may be launched now.

    ``sync``: exactly the groups of the next update. ``async`` (after AReaL's staleness rule): never more groups
    launched than the learner can consume within ``max_lag`` versions, and never more waiting (``waiting``: ready,
    generating, waiting for or being scored) than the queue holds (``capacity``).
    """
    if mode == "sync":
        return (version + 1) * batch_prompts - launched
    return min((version + max_lag + 1) * batch_prompts - launched, capacity - waiting)


class Admission:
    """The groups launched and still counted against admission (``launched`` of :func:`launch_room`).

    The count changes only here: a launch adds its groups, a re-queued prompt is taken back (it is launched again
    later), and a run that goes back to a checkpoint starts again from that checkpoint's books.
    """

    def __init__(self, launched: int = 0):
        self.count = launched

    def launched(self, n: int) -> None:
        self.count += n

    def taken_back(self) -> None:
        """One prompt went back to the queue: it does not count against admission twice."""
        self.count -= 1

    def reset(self, n: int) -> None:
        self.count = n

    def in_play(self, acct: Accounting) -> int:
        """The launched groups that may still reach the learner.

        Stale and dropped groups never will: they give their slots back (kept, each one would shrink the window for
        the rest of the run, and (max_lag + 1) x batch_prompts of them stall it).
        """
        return self.count - acct.stale - acct.dropped
