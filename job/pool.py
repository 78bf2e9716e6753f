"""The Ray members of a run: rollout actors and reward workers, and the calls the scheduler makes to them."""
from __future__ import annotations

import time

from divcfg.common.runtime.transport import ObjectStoreTransport


class RayTopology:
    """Rollout actors and reward workers on Ray, with weights published once per version through the object store.

    The pool is elastic: :meth:`add_actor` gives a new actor the newest weights before anything else, and dead
    actors or workers are replaced (Ray's own restarts are off, so a replacement is always a fresh, synced actor).
    ``ready_at`` holds when each member first returned a result (it is alive, placed and, for an actor, synced), and
    ``replaced_by`` which member took over from a dead one: together they time each recovery.

    Warm spares (``spares`` actors, ``reward_spares`` workers) are started, loaded and, for actors, sent every new
    version's weights, but get no work: a dead member is replaced by a spare at once, a pool that grows takes spares
    first, and a new spare starts in the background in each one's place.

    It is the :class:`~divcfg.job.scheduler.Members` the scheduler runs over: calls are Ray object refs.
    """

    def __init__(self, rollout_cls, reward_cls, n_actors: int, n_reward: int, rollout_kwargs: dict,
                 reward_kwargs: dict, transport=None, spares: int = 0, reward_spares: int = 0):
        from ray.exceptions import RayError

        self.failure = (RayError,)
        self.rollout_cls, self.rollout_kwargs = rollout_cls, rollout_kwargs
        self.reward_cls, self.reward_kwargs = reward_cls, reward_kwargs
        # How snapshots travel (common/runtime/transport.py); the roles only ever see its handles.
        self.transport = transport or ObjectStoreTransport()
        self.weights_ref = None
        self.weights_version = -1
        self._seed = 0
        self.ready_at: dict = {}
        self.replaced_by: dict = {}
        self.actors: list = []
        self.spares: list = []
        self.synced: dict = {}  # spare actor -> its newest set_weights call (its result: the version it holds)
        for _ in range(n_actors):
            self.add_actor()
        self.rewards = [reward_cls.remote(**reward_kwargs) for _ in range(n_reward)]
        for _ in range(spares):  # after the pool's own actors, which keep seeds 0..n_actors-1
            self.add_spare()
        self.reward_spares = [reward_cls.remote(**reward_kwargs) for _ in range(reward_spares)]

    # ---- calls ------------------------------------------------------------------------------------------------
    def generate(self, actor, items: list[tuple[int, str, int]]):
        return actor.generate_groups.remote(items)

    def score(self, worker, groups: list):
        return worker.score.remote(groups)

    def wait(self, calls: list, timeout: float) -> list:
        import ray  # start-up: ray takes ~1.1 s to import; the plain classes here run without it
        done, _ = ray.wait(calls, num_returns=1, timeout=timeout)
        return done

    def result(self, call):
        import ray  # start-up: ray takes ~1.1 s to import; the plain classes here run without it
        return ray.get(call)

    # ---- members ----------------------------------------------------------------------------------------------
    def add_actor(self):
        """A new member of the pool: a warm spare when there is one (a new spare starts in its place), else a fresh
        actor, which gets the newest weights before its first group."""
        if self.spares:
            actor = self.spares.pop(0)
            self.synced.pop(actor, None)
            self.add_spare()
        else:
            actor = self._start_actor()[0]
        self.actors.append(actor)
        return actor

    def add_spare(self):
        actor, synced = self._start_actor()
        self.spares.append(actor)
        if synced is not None:
            self.synced[actor] = synced
        return actor

    def _start_actor(self):
        actor = self.rollout_cls.remote(**self.rollout_kwargs, seed=self._seed)
        self._seed += 1
        synced = None
        if self.weights_ref is not None:
            synced = actor.set_weights.remote(self.weights_version, self.weights_ref)  # queued before its first group
        return actor, synced

    def remove_actor(self, actor) -> None:
        import ray  # start-up: ray takes ~1.1 s to import; the plain classes here run without it
        if actor in self.actors:
            self.actors.remove(actor)
        ray.kill(actor, no_restart=True)

    def replace_actor(self, actor):
        """A fresh actor in place of a dead one (synced before it generates)."""
        self.remove_actor(actor)
        self.replaced_by[actor] = new = self.add_actor()
        return new

    def replace_reward(self, worker) -> bool:
        """Idempotent: several calls in flight on one dead worker all fail, but it is replaced once (True then)."""
        import ray  # start-up: ray takes ~1.1 s to import; the plain classes here run without it
        if worker not in self.rewards:
            return False
        ray.kill(worker, no_restart=True)
        if self.reward_spares:
            new = self.reward_spares.pop(0)
            self.reward_spares.append(self.reward_cls.remote(**self.reward_kwargs))
        else:
            new = self.reward_cls.remote(**self.reward_kwargs)
        self.replaced_by[worker] = new
        self.rewards[self.rewards.index(worker)] = new
        return True

    def mark_ready(self, member) -> None:
        self.ready_at.setdefault(member, time.perf_counter())

    def publish(self, version: int, weights: dict) -> None:
        # One publish per version (the default transport: one ray.put, which every actor reads zero-copy on its node).
        # Not awaited: Ray runs an actor's calls in submission order, so the swap lands between groups, never inside
        # one, and the learner does not wait for actors that are mid-generation.
        self.weights_ref = self.transport.publish(version, weights)
        self.weights_version = version
        for a in self.actors:
            a.set_weights.remote(version, self.weights_ref)
        for a in self.spares:
            self.synced[a] = a.set_weights.remote(version, self.weights_ref)
