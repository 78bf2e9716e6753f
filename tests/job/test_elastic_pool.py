"""The elastic pool's books on fake members, without Ray: who is idle, who retires, and what goes back to the queue."""
from divcfg.job.books import Accounting, PromptStream
from divcfg.job.elastic import ElasticPool
from divcfg.job.flight import Flight

from fakes import FakeActor, FakeLearner, FakeMembers

PROMPTS = [f"prompt {i}" for i in range(5)]


def pool_of(n: int, want: list[int]):
    members = FakeMembers([FakeActor(f"a{i}") for i in range(n)], [], 2, FakeLearner())
    flight = Flight(PromptStream(PROMPTS, 0), Accounting())
    events = []
    return members, flight, ElasticPool(members, flight, target=lambda: want[0], on_event=events.append), events


def launch(members, flight, pool, n: int = 1):
    actor = pool.idle.popleft()
    items = flight.draw(n)
    flight.gen[members.generate(actor, [(pid, p, pid) for pid, p in items])] = (actor, items)
    return actor, items


def test_growing_adds_idle_actors_at_once():
    members, _, pool, events = pool_of(1, [3])
    pool.resize(force=True)
    assert len(members.actors) == 3 and len(pool.idle) == 3 and events == ["scaling rollout actors 1 -> 3"]


def test_shrinking_takes_an_idle_actor_first():
    members, flight, pool, _ = pool_of(2, [1])
    busy, _ = launch(members, flight, pool)
    pool.resize(force=True)
    assert members.actors == [busy] and not pool.idle and not pool.retiring


def test_a_busy_actor_that_has_generated_retires_after_its_call():
    members, flight, pool, _ = pool_of(1, [0])
    actor, _ = launch(members, flight, pool)
    members.mark_ready(actor)
    pool.resize(force=True)
    assert pool.retiring == {actor} and actor in members.actors and pool.size() == (0, 0)
    pool.release(actor)  # its call came back: its groups are used, then it leaves
    assert not members.actors and not pool.retiring and not pool.idle


def test_a_busy_actor_that_never_started_gives_its_prompts_back():
    members, flight, pool, _ = pool_of(1, [0])
    actor, items = launch(members, flight, pool, n=2)
    assert flight.in_play() == 2
    pool.resize(force=True)
    assert not members.actors and not flight.gen and list(flight.requeue) == items
    assert flight.acct.requeued == 2 and flight.in_play() == 0  # admission took both back


def test_a_dead_retiring_actor_is_not_replaced():
    members, flight, pool, _ = pool_of(2, [2])
    a, b = members.actors
    pool.retiring.add(a)
    pool.died(a)
    pool.died(b)
    assert a not in members.actors and members.replaced_by[b] in pool.idle and not pool.retiring


def test_the_pool_reports_once_back_at_its_target_with_everyone_generating():
    members, _, pool, events = pool_of(1, [2])
    pool.resize(force=True)
    pool.check()
    assert events == ["scaling rollout actors 1 -> 2"]  # the new actor has not generated yet
    for a in members.actors:
        members.mark_ready(a)
    pool.check()
    pool.check()
    assert len(events) == 2 and events[1].startswith("rollout pool at 2 actors, all generating")
