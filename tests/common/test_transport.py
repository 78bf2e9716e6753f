"""The weights transport: what the learner publishes is what an actor loads, whatever carries it."""
import numpy as np
import torch

from divcfg.actors.rollout import RolloutWorker
from divcfg.common.runtime.transport import InProcessTransport, ObjectStoreTransport
from divcfg.model.policy import build_policy


class TinyPolicy:
    def __call__(self):
        return build_policy(seed=0)


class CountingTransport(InProcessTransport):
    """Hands out version numbers as handles, as a broadcast transport would, and keeps the snapshots itself."""

    def __init__(self):
        self.snapshots, self.received = {}, []

    def publish(self, version, weights):
        self.snapshots[version] = weights
        return version

    def receive(self, handle):
        self.received.append(handle)
        return self.snapshots[handle]


def test_in_process_round_trip_is_the_same_object():
    t = InProcessTransport()
    weights = {"w": np.arange(3.0)}
    assert t.receive(t.publish(0, weights)) is weights


def test_object_store_receive_passes_resolved_arrays_through():
    # Ray resolves a top-level ObjectRef argument before the actor method runs: the actor then holds the dict itself.
    weights = {"w": np.arange(3.0)}
    assert ObjectStoreTransport().receive(weights) is weights


def test_rollout_worker_loads_weights_through_its_transport():
    transport = CountingTransport()
    worker = RolloutWorker(TinyPolicy(), n_frames=4, group_size=2, transport=transport)
    other = build_policy(seed=1)
    snapshot = {k: v.detach().numpy().copy() for k, v in other.state_dict().items()}
    worker.set_weights(7, transport.publish(7, snapshot))
    assert transport.received == [7] and worker.version == 7
    for k, v in worker.policy.state_dict().items():
        assert torch.equal(v, other.state_dict()[k]), k
