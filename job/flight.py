"""The work between a launch and the learner: the calls in flight, the groups waiting, the prompts to replay.

The scheduler's loop, its recovery (:mod:`divcfg.job.recovery`) and its elastic pool (:mod:`divcfg.job.elastic`)
all read and change it, so it is a room of its own rather than any one of theirs. It owns the admission count: a
launch, a re-queued prompt and a replay from a checkpoint are the only three changes to it, and all three are here.
"""
from __future__ import annotations

from collections import deque

from divcfg.common.record import RolloutBatch
from divcfg.job.books import Accounting, Admission, PromptStream


class Flight:
    """The calls out and the groups between them, with the admission count that bounds them."""

    def __init__(self, stream: PromptStream, acct: Accounting, resume_prompts=()):
        self.stream, self.acct = stream, acct
        # Prompts a crashed run had drawn but not used go first (run.resume), then the stream continues.
        self.requeue: deque[tuple[int, str]] = deque((pid, stream.at(pid)) for pid in resume_prompts)
        self.gen: dict = {}  # generation call -> (actor, [(prompt_id, prompt), ...])
        self.rew: dict = {}  # scoring call -> (worker, groups)
        self.pending: deque[RolloutBatch] = deque()  # generated groups waiting for a free reward worker
        self.ready: deque[RolloutBatch] = deque()  # scored and admitted groups waiting for the learner
        self.admission = Admission()

    def draw(self, n: int) -> list[tuple[int, str]]:
        """``n`` prompts for one launch, re-queued ones first; they count against admission from now on."""
        items = [self.requeue.popleft() if self.requeue else self.stream.next() for _ in range(n)]
        self.admission.launched(n)
        return items

    def requeue_prompt(self, pid: int, prompt: str) -> None:
        """A prompt whose generation never came back goes back to the queue, to be generated again."""
        self.requeue.append((pid, prompt))
        self.acct.requeued += 1
        self.admission.taken_back()

    def replay(self, outstanding: list[int]) -> None:
        """After a checkpoint's books are restored: nothing is in flight, its outstanding prompts go first."""
        self.gen.clear()
        self.rew.clear()
        self.ready.clear()
        self.pending.clear()
        self.requeue = deque((pid, self.stream.at(pid)) for pid in outstanding)
        self.admission.reset(self.acct.used + self.acct.stale + self.acct.dropped)

    def in_play(self) -> int:
        return self.admission.in_play(self.acct)

    def calls(self) -> list:
        return list(self.gen) + list(self.rew)

    def generating(self) -> int:
        return sum(len(items) for _, items in self.gen.values())

    def scoring(self) -> int:
        return sum(len(groups) for _, groups in self.rew.values())

    def waiting(self) -> int:
        """Groups launched and not yet used: ready, generating, waiting for or being scored."""
        return len(self.ready) + self.generating() + len(self.pending) + self.scoring()

    def outstanding(self) -> list[int]:
        """Stream positions drawn but not used: generating, re-queued, waiting for or being scored, ready."""
        return sorted([pid for _, items in self.gen.values() for pid, _ in items]
                      + [pid for pid, _ in self.requeue]
                      + [int(g.prompt_id[0]) for g in (*self.pending, *self.ready)]
                      + [int(g.prompt_id[0]) for _, groups in self.rew.values() for g in groups])
