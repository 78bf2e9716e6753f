"""Elastic pool and fault tolerance of the Ray loop (tiny policy, deterministic code-histogram judges)."""
import random
import sys
import time

import numpy as np
import pytest

from divcfg.actors.rollout import remote_rollout_worker
from divcfg.job.books import PromptStream
from divcfg.job.control import running_jobs, set_target, start_control
from divcfg.job.loop import run_ray
from divcfg.job.pool import RayTopology
from divcfg.job.recovery import RoleFailures
from divcfg.reward.worker import remote_reward_worker

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from test_loop_ray import PROMPTS, CodeHistogramJudges, TinyPolicy, make_learner  # noqa: E402

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def ray_local():
    import ray
    import test_loop_ray
    ray.cloudpickle.register_pickle_by_value(test_loop_ray)
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False, namespace="divcfg")
    yield ray
    ray.shutdown()


def topology(n_actors):
    return RayTopology(remote_rollout_worker(0.5, 0), remote_reward_worker(0.5, 0), n_actors, 1,
                       dict(policy_factory=TinyPolicy(), n_frames=4, group_size=2),
                       dict(judges_factory=CodeHistogramJudges))


def test_scale_up_and_down_mid_run(ray_local):
    control = start_control("elastic-test", 1)
    assert "elastic-test" in running_jobs()
    seen, used_ids, events = [], [], []
    reached = {}

    def on_step(i, batch, metrics, acct):
        seen.append(metrics["rollout/actors"])
        used_ids.extend(int(p) for p in np.unique(batch.prompt_id))
        if i == 1:
            set_target("elastic-test", 3)  # what `divcfg scale --actors 3` does
            reached[3] = time.perf_counter()
        if i == 5:
            set_target(None, 1)  # the only running job
            reached[1] = time.perf_counter()

    stream = PromptStream(PROMPTS * 3, 0)
    acct = run_ray(make_learner(), topology(1), stream, steps=9, batch_prompts=2,
                   group_size=2, max_lag=2, mode="async", queue_groups=0, on_step=on_step,
                   target=lambda: ray_local.get(control.get_target.remote()), on_event=events.append)
    assert seen[0] == 1 and 3 in seen[2:6] and seen[-1] == 1, seen
    assert any("1 -> 3" in e for e in events) and any("3 -> 1" in e for e in events)
    assert len(used_ids) == len(set(used_ids))  # no prompt group used twice
    assert acct.generated == acct.used + acct.stale + acct.dropped
    assert stream.position == acct.generated + acct.unfinished
    with pytest.raises(ValueError, match="--actors must be >= 0, got -1"):
        set_target("elastic-test", -1)
    with pytest.raises(ValueError, match="no running divcfg job named 'nope'"):
        set_target("nope", 2)


@pytest.mark.slow
@pytest.mark.parametrize("groups_per_call", [1, 2])  # 2: a killed actor takes two groups with it, both re-queued
def test_chaos_kills_never_lose_or_duplicate_groups(ray_local, groups_per_call):
    topo = topology(3)
    stream = PromptStream(PROMPTS * 5, 0)
    rng = random.Random(0)
    kills, used_ids = [], []

    def on_step(i, batch, metrics, acct):
        used_ids.extend(int(p) for p in np.unique(batch.prompt_id))
        assert all(len(g) == 2 for g in batch.groups())  # never a group with a missing sample
        if i % 2 == 1:
            victim = rng.choice([m for m in topo.actors + topo.rewards if m not in kills])
            ray_local.kill(victim, no_restart=True)
            kills.append(victim)

    acct = run_ray(make_learner(), topo, stream, steps=22, batch_prompts=2, group_size=2,
                   max_lag=2, mode="async", queue_groups=0, on_step=on_step, max_role_failures=50,
                   groups_per_call=groups_per_call)
    assert len(kills) >= 10
    assert len(used_ids) == len(set(used_ids)) == acct.used
    assert acct.generated == acct.used + acct.stale + acct.dropped
    assert stream.position == acct.generated + acct.unfinished  # no prompt lost: generated once, or still waiting
    # A dead member counts as one failure however many calls were in flight on it; the last kills may go unnoticed.
    assert 0 < sum(acct.failures.values()) <= len(kills)
    assert acct.requeued >= acct.failures.get("rollout", 0)


def test_repeated_failures_stop_the_job(ray_local):
    class Broken:
        def __call__(self):
            raise RuntimeError("cannot build policy")

    topo = RayTopology(remote_rollout_worker(0.5, 0), remote_reward_worker(0.5, 0), 1, 1,
                       dict(policy_factory=Broken(), n_frames=4, group_size=2),
                       dict(judges_factory=CodeHistogramJudges))
    with pytest.raises(RoleFailures, match="3 consecutive rollout failures"):
        run_ray(make_learner(), topo, PromptStream(PROMPTS, 0), steps=1, batch_prompts=1, group_size=2, max_lag=1,
                mode="sync", queue_groups=0, on_step=lambda *a: None, max_role_failures=3)
