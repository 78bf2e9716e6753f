"""Warm spares: a killed actor's groups go to a spare that already holds the newest weights."""
import sys

import pytest

from divcfg.actors.rollout import remote_rollout_worker
from divcfg.job.books import PromptStream
from divcfg.job.pool import RayTopology
from divcfg.job.scheduler import Scheduler
from divcfg.reward.worker import remote_reward_worker

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from test_loop_ray import PROMPTS, CodeHistogramJudges, TinyPolicy, make_learner  # noqa: E402

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def ray_local():
    import ray
    import test_loop_ray
    ray.cloudpickle.register_pickle_by_value(test_loop_ray)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_a_killed_actor_is_replaced_by_a_spare_that_holds_the_newest_weights(ray_local):
    topo = RayTopology(remote_rollout_worker(0.25, 0), remote_reward_worker(0.25, 0), 1, 1,
                       dict(policy_factory=TinyPolicy(), n_frames=4, group_size=2),
                       dict(judges_factory=CodeHistogramJudges), spares=1, reward_spares=1)
    learner, stream = make_learner(), PromptStream(PROMPTS * 3, 0)
    killed, seen = {}, []

    def on_step(i, batch, metrics, acct):
        seen.append((metrics["rollout/actors"], metrics["rollout/actors_spare"], metrics["rollout/reward_spares"]))
        if i == 1:
            (victim,), (spare,) = topo.actors, topo.spares
            # The spare was loaded and sent this step's weights while it generated nothing.
            assert ray_local.get(topo.synced[spare]) == learner.version and spare not in topo.ready_at
            killed.update(victim=victim, spare=spare, version=learner.version, requeued=acct.requeued)
            ray_local.kill(victim, no_restart=True)

    acct = Scheduler(learner, topo, stream, batch_prompts=2, group_size=2, max_lag=1, mode="async").run(5, on_step)
    assert topo.replaced_by[killed["victim"]] is killed["spare"] and topo.actors == [killed["spare"]]
    assert killed["spare"] in topo.ready_at  # it generated the dead actor's groups, and the rest
    assert len(topo.spares) == 1 and topo.spares[0] is not killed["spare"]  # a new spare took its place
    assert acct.failures == {"rollout": 1} and acct.requeued > killed["requeued"]
    assert seen[0] == (1.0, 1.0, 1.0) and seen[-1] == (1.0, 1.0, 1.0)
    assert acct.generated == acct.used + acct.stale + acct.dropped
    assert stream.position == acct.generated + acct.unfinished
    assert max(acct.lags) <= 1
