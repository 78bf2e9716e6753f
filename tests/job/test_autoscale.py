"""autoscale.min/max: the pool's target becomes a resource request for Ray's autoscaler."""
import pytest

from divcfg.job.control import AutoscaleRequest


def recorder():
    calls = []
    return calls, lambda **kw: calls.append(kw)


def test_each_new_target_requests_one_bundle_per_actor_plus_the_reward_workers():
    calls, fn = recorder()
    events = []
    req = AutoscaleRequest(1, 4, {"CPU": 1, "GPU": 0.5}, [{"CPU": 2, "GPU": 0}], request_fn=fn, on_event=events.append)
    assert req(2) == 2
    assert calls == [{"bundles": [{"CPU": 1, "GPU": 0.5}] * 2 + [{"CPU": 2}]}]
    assert req(2) == 2 and len(calls) == 1  # unchanged target: no new request
    assert req(3) == 3
    assert calls[-1]["bundles"] == [{"CPU": 1, "GPU": 0.5}] * 3 + [{"CPU": 2}]
    assert any("3 rollout actor bundles" in e for e in events)


def test_targets_outside_min_max_are_clamped_and_reported_once():
    calls, fn = recorder()
    events = []
    req = AutoscaleRequest(2, 3, {"CPU": 1}, [], request_fn=fn, on_event=events.append)
    assert req(10) == 3 and req(10) == 3
    assert req(0) == 2
    assert [len(c["bundles"]) for c in calls] == [3, 2]
    clamps = [e for e in events if "outside autoscale" in e]
    assert clamps == ["target 10 actors is outside autoscale [2, 3]: using 3",
                      "target 0 actors is outside autoscale [2, 3]: using 2"]


@pytest.mark.parametrize("lo,hi", [(-1, 2), (3, 2), (0, 0)])
def test_bad_bounds_are_refused_with_their_values(lo, hi):
    with pytest.raises(ValueError, match=f"min={lo} max={hi}"):
        AutoscaleRequest(lo, hi, {"CPU": 1}, [], request_fn=lambda **kw: None)


@pytest.mark.ray
def test_the_request_reaches_the_cluster():
    """Against a real (local) Ray: the request lands where the autoscaler reads it (v1: the GCS key-value store)."""
    import json

    import ray
    from ray._private.ray_constants import AUTOSCALER_RESOURCE_REQUEST_CHANNEL
    from ray.experimental.internal_kv import _internal_kv_get
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        AutoscaleRequest(1, 4, {"CPU": 1}, [{"CPU": 1}])(3)
        assert json.loads(_internal_kv_get(AUTOSCALER_RESOURCE_REQUEST_CHANNEL)) == [{"CPU": 1}] * 4
    finally:
        ray.shutdown()
