"""Recovery's books on fake members, without Ray: failures counted per role, prompts and groups never lost, and a
lost learner's work replayed from its checkpoint with the admission count restored."""
import pytest

from divcfg.job.books import Accounting, PromptStream
from divcfg.job.elastic import ElasticPool
from divcfg.job.flight import Flight
from divcfg.job.recovery import Recovery, RoleFailures

from fakes import Died, FakeActor, FakeLearner, FakeMembers, FakeReward

PROMPTS = [f"prompt {i}" for i in range(5)]


def setup(max_role_failures: int = 3, recover=None):
    learner = FakeLearner()
    members = FakeMembers([FakeActor("a0"), FakeActor("a1")], [FakeReward()], 2, learner)
    flight = Flight(PromptStream(PROMPTS, 0), Accounting())
    pool = ElasticPool(members, flight)
    events = []
    recovery = Recovery(members, flight, pool, max_role_failures=max_role_failures, recover=recover,
                        learner_failure=(Died,), on_event=events.append)
    return learner, members, flight, pool, recovery, events


def launch(members, flight, pool, n: int = 1):
    actor = pool.idle.popleft()
    items = flight.draw(n)
    flight.gen[members.generate(actor, [(pid, p, pid) for pid, p in items])] = (actor, items)
    return actor, items


def test_a_dead_actors_prompts_go_back_and_a_fresh_actor_takes_its_place():
    _, members, flight, pool, recovery, events = setup()
    actor, items = launch(members, flight, pool, n=2)
    flight.gen.clear()
    recovery.actor_died(actor, items, Died("a0"))
    assert list(flight.requeue) == items and flight.acct.requeued == 2 and flight.in_play() == 0
    assert members.replaced_by[actor] in pool.idle and flight.acct.failures == {"rollout": 1}
    assert events == ["rollout failure 1 in a row: Died"]


def test_failures_in_a_row_stop_the_run_and_a_success_resets_the_count():
    *_, recovery, _ = setup(max_role_failures=2)
    recovery.fail("reward", Died("r"))
    recovery.succeeded("reward")
    recovery.fail("reward", Died("r"))
    with pytest.raises(RoleFailures, match="2 consecutive reward failures"):
        recovery.fail("reward", Died("r"))
    assert recovery.flight.acct.failures == {"reward": 3}


def test_a_dead_reward_workers_groups_wait_to_be_scored_again():
    _, members, flight, _, recovery, _ = setup()
    worker = members.rewards[0]
    recovery.reward_died(worker, ["g0", "g1"], Died("r"))
    recovery.reward_died(worker, ["g2"], Died("r"))  # a second batch on the same dead worker: counted once
    assert list(flight.pending) == ["g0", "g1", "g2"] and flight.acct.failures == {"reward": 1}


def test_while_draining_nothing_is_replaced_or_counted():
    _, members, flight, pool, recovery, _ = setup()
    actor, items = launch(members, flight, pool)
    recovery.draining = True
    recovery.actor_died(actor, items, Died("a0"))
    assert list(flight.requeue) == items and not members.replaced_by and not flight.acct.failures


def test_a_lost_learner_replays_its_checkpoint_with_its_books():
    books = {"generated": 9, "used": 4, "stale": 1, "dropped": 1, "requeued": 2}
    learner, members, flight, pool, recovery, events = setup(recover=lambda: (2, [3, 4], books))
    launch(members, flight, pool, n=2)
    flight.acct.lags.append(1)
    assert recovery.learner_lost(learner, Died("learner")) == 2
    acct = flight.acct
    assert (acct.generated, acct.used, acct.stale, acct.dropped, acct.requeued) == (6, 4, 1, 1, 2)
    assert acct.failures == {"learner": 1} and acct.lags == [] and not flight.gen and not flight.ready
    assert [pid for pid, _ in flight.requeue] == [3, 4]
    assert flight.admission.count == 6 and flight.in_play() == 4  # used + stale + dropped launched, nothing in flight
    assert len(pool.idle) == 2 and members.version == learner.version  # the abandoned call's actor came back
    assert events[-1] == "learner restart 1: back to step 2 from the last checkpoint, 2 prompts replayed"
