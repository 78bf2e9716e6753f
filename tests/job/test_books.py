"""The scheduler's books (job/books.py) on hand-counted cases: admission, expiry, taking a batch, launch room and
the prompt stream's order."""
from collections import deque

import numpy as np

from divcfg.common.record import new_group
from divcfg.job.books import Accounting, PromptStream, admit, expire, launch_room, take

PROMPTS = ["p0", "p1", "p2", "p3"]


def group(version: int, size: int = 2, prompt_id: int = 0):
    return new_group(prompt_id=prompt_id, prompt=f"p{prompt_id}", group_id=prompt_id, codes=np.zeros((size, 1, 2)),
                     logprobs=np.zeros((size, 1, 2)), policy_version=version, generate_s=0.0)


def versions(groups) -> list[int]:
    return [int(g.policy_version[0]) for g in groups]


def test_admit_keeps_lags_up_to_the_bound_in_order_and_adds_the_rest_to_stale():
    acct = Accounting(stale=3)
    kept = admit([group(5), group(2), group(4), group(3), group(1)], version=5, max_lag=2, acct=acct)
    assert versions(kept) == [5, 4, 3]  # lags 0, 2, 1 kept (lag == max_lag is admitted); lags 3 and 4 are not
    assert acct.stale == 3 + 2 and acct.used == 0 and acct.lags == []


def test_admit_at_lag_zero_keeps_only_the_current_version():
    acct = Accounting()
    assert versions(admit([group(7), group(6)], version=7, max_lag=0, acct=acct)) == [7]
    assert acct.stale == 1


def test_admit_takes_a_single_sample_group():
    """group_size 1 is a valid setting when beta is 0 (common/config/checks.py)."""
    acct = Accounting()
    assert versions(admit([group(3, size=1), group(0, size=1)], version=3, max_lag=1, acct=acct)) == [3]
    assert acct.stale == 1


def test_expire_drops_too_old_groups_in_place_and_keeps_the_order():
    ready = deque([group(4, prompt_id=0), group(3, prompt_id=1), group(5, prompt_id=2), group(6, prompt_id=3)])
    same = ready
    acct = Accounting(stale=1)
    expire(ready, version=6, max_lag=2, acct=acct)  # version 3 is now 3 behind
    assert ready is same and [int(g.prompt_id[0]) for g in ready] == [0, 2, 3]
    assert acct.stale == 2


def test_take_pops_the_oldest_n_counts_them_used_and_records_their_lags():
    ready = deque([group(4, size=1, prompt_id=0), group(5, prompt_id=1), group(6, prompt_id=2)])
    acct = Accounting(used=4, lags=[9])
    batch = take(ready, 2, version=6, acct=acct)
    assert [int(g.prompt_id[0]) for g in batch] == [0, 1]
    assert [int(g.prompt_id[0]) for g in ready] == [2]
    assert acct.used == 6 and acct.lags == [9, 2, 1] and acct.stale == 0


def test_launch_room_sync_is_the_next_updates_groups():
    # (version + 1) * batch_prompts - launched = (2 + 1) * 3 - 5
    assert launch_room("sync", 2, 5, 3, max_lag=4, capacity=1, waiting=1) == 4
    assert launch_room("sync", 0, 0, 3, max_lag=0, capacity=0, waiting=0) == 3


def test_launch_room_async_is_bounded_by_the_lag_and_by_the_queue():
    # lag bound: (version + max_lag + 1) * batch_prompts - launched = (2 + 1 + 1) * 3 - 5 = 7
    assert launch_room("async", 2, 5, 3, max_lag=1, capacity=20, waiting=4) == 7
    # queue bound: capacity - waiting = 10 - 4 = 6 < 7
    assert launch_room("async", 2, 5, 3, max_lag=1, capacity=10, waiting=4) == 6
    # at lag 0 async launches what sync does when the queue has room
    assert launch_room("async", 2, 5, 3, max_lag=0, capacity=20, waiting=0) == 4


def test_prompt_stream_order_is_a_seeded_permutation_per_epoch():
    # np.random.default_rng([0, 0]).permutation(4) == [2, 0, 1, 3]; with [0, 1]: [3, 0, 2, 1]
    s = PromptStream(PROMPTS, seed=0)
    assert s.position == 0
    assert [s.next() for _ in range(8)] == [(0, "p2"), (1, "p0"), (2, "p1"), (3, "p3"),
                                            (4, "p3"), (5, "p0"), (6, "p2"), (7, "p1")]
    assert s.position == 8
    # seed 1: [0, 1, 2, 3] in epoch 0, [2, 0, 1, 3] in epoch 1
    assert [PromptStream(PROMPTS, seed=1).at(i) for i in (0, 1, 2, 3, 4, 5)] == ["p0", "p1", "p2", "p3", "p2", "p0"]


def test_prompt_stream_resumes_at_its_position_and_at_reads_without_drawing():
    s = PromptStream(PROMPTS, seed=0, position=5)
    assert s.at(2) == "p1" and s.position == 5
    assert s.next() == (5, "p0") and s.next() == (6, "p2") and s.position == 7
    assert s.prompts == PROMPTS and s.seed == 0
