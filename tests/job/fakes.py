"""Fake roles for the scheduler's tests, without Ray.

The fakes behave as Ray does where it matters: an actor's call sees the weights it held when the call was made
(Ray runs an actor's calls in submission order), a call on a dead member raises, and calls finish oldest first
unless a test holds one back.
"""
import numpy as np

from divcfg.common.record import new_group


class Died(Exception):
    """What a call on a dead fake member raises (Ray: ActorDiedError)."""


class FakeActor:
    def __init__(self, name: str, dies_on_call: int | None = None, hold: int = 0):
        self.name, self.dies_on_call, self.hold = name, dies_on_call, hold
        self.version, self.calls, self.alive = -1, 0, True

    def generate(self, items, group_size):
        self.calls += 1
        if self.calls == self.dies_on_call:
            self.alive = False
        return [new_group(prompt_id=pid, prompt=prompt, group_id=gid, codes=np.zeros((group_size, 1, 2)),
                          logprobs=np.zeros((group_size, 1, 2)), policy_version=self.version, generate_s=0.0)
                for pid, prompt, gid in items]


class FakeReward:
    def __init__(self, drop=(), dies_on_call: int | None = None):
        self.drop, self.dies_on_call, self.calls, self.alive = set(drop), dies_on_call, 0, True
        self.name = "reward"

    def score(self, groups):
        self.calls += 1
        if self.calls == self.dies_on_call:
            self.alive = False
        return [None if int(g.prompt_id[0]) in self.drop else g.with_fields(diversity_reward=np.ones(len(g)))
                for g in groups]


class Call:
    def __init__(self, member, value, hold: int):
        self.member, self.value, self.hold = member, value, hold


class FakeMembers:
    """The :class:`Members` interface over fake actors and workers; ``launches`` records (groups launched so far,
    learner version) at each generation call."""

    failure = (Died,)

    def __init__(self, actors, rewards, group_size: int, learner):
        self.actors, self.rewards, self.group_size, self.learner = list(actors), list(rewards), group_size, learner
        self.ready_at, self.replaced_by = {}, {}
        self.version, self.launched, self.launches, self.added = -1, 0, [], 0

    def generate(self, actor, items):
        self.launched += len(items)
        self.launches.append((self.launched, self.learner.version))
        return Call(actor, actor.generate(items, self.group_size), actor.hold)

    def score(self, worker, groups):
        return Call(worker, worker.score(groups), 0)

    def wait(self, calls, timeout):
        for call in calls:  # oldest first; a held call lets `hold` others finish before it
            if call.hold <= 0 or len(calls) == 1:
                for other in calls:
                    other.hold -= other is not call
                return [call]
        return []

    def result(self, call):
        if not call.member.alive:
            raise Died(call.member.name)
        return call.value

    def add_actor(self):
        self.added += 1
        actor = FakeActor(f"spare{self.added}")
        actor.version = self.version  # synced before its first group, as RayTopology.add_actor does
        self.actors.append(actor)
        return actor

    def remove_actor(self, actor):
        actor.alive = False
        if actor in self.actors:
            self.actors.remove(actor)

    def replace_actor(self, actor):
        self.remove_actor(actor)
        self.replaced_by[actor] = new = self.add_actor()
        return new

    def replace_reward(self, worker):
        if worker not in self.rewards:
            return False
        self.replaced_by[worker] = new = FakeReward(worker.drop)
        self.rewards[self.rewards.index(worker)] = new
        return True

    def mark_ready(self, member):
        self.ready_at.setdefault(member, len(self.ready_at))

    def publish(self, version, weights):
        self.version = version
        for a in self.actors:
            a.version = version


class FakeLearner:
    def __init__(self):
        self.version, self.used = 0, []

    def weights(self):
        return {}

    def step(self, batch, group_size):
        assert all(len(g) == group_size for g in batch.groups())  # never a partial group
        self.used.append(sorted(int(p) for p in np.unique(batch.prompt_id)))
        self.version += 1
        return {"losses/total": 0.0}
