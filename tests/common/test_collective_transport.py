"""The collective weight transport: the snapshot a publisher broadcasts is the one the object store would deliver."""
import sys

import numpy as np
import pytest
import torch

from divcfg.common.runtime.collective_transport import (
    CollectiveTransport,
    GroupAddress,
    TransportError,
    check_backend,
    pack,
    unpack,
)
from divcfg.common.runtime.transport import ObjectStoreTransport
from divcfg.model.policy import build_policy


def snapshot(seed: int) -> dict[str, np.ndarray]:
    """A policy's weights plus tensors of two other dtypes, so that the packing by dtype is exercised."""
    w = {k: v.numpy().copy() for k, v in build_policy(seed=seed).state_dict().items()}
    w["step_count"] = np.array([seed, 7], dtype=np.int64)
    w["mask"] = np.array([[True, False], [False, seed % 2 == 0]])
    return w


def test_pack_then_unpack_is_the_identity():
    w = snapshot(0)
    flat, layout = pack(w)
    assert sorted(flat) == ["bool", "float32", "int64"]
    assert flat["float32"].numel() == sum(a.size for a in w.values() if a.dtype == np.float32)
    out = unpack(flat, layout)
    assert list(out) == list(w) and all(np.array_equal(out[k], w[k]) and out[k].dtype == w[k].dtype for k in w)


def test_a_backend_that_is_not_here_is_refused_naming_it():
    with pytest.raises(TransportError, match="backend 'mpi'"):
        check_backend("mpi")
    if not torch.cuda.is_available():
        with pytest.raises(TransportError, match="backend nccl: needs a CUDA device"):
            CollectiveTransport(GroupAddress("127.0.0.1", 1, 2, backend="nccl"), rank=0)


class Actor:
    """A rollout actor's side of both transports."""

    def join(self, address, rank):
        self.transport = CollectiveTransport(address, rank)

    def receive(self, handle):
        return {k: v.copy() for k, v in self.transport.receive(handle).items()}

    def receive_object_store(self, snapshot):
        return ObjectStoreTransport().receive(snapshot)


@pytest.mark.ray
def test_two_actors_receive_by_broadcast_what_the_object_store_delivers():
    import ray

    from divcfg.learner.group import free_port
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        actors = [ray.remote(num_cpus=0)(Actor).remote() for _ in range(2)]
        address = GroupAddress("127.0.0.1", free_port(), world_size=3)
        publisher = CollectiveTransport(address, rank=0)  # joins in the background with the actors
        ray.get([a.join.remote(address, rank) for rank, a in enumerate(actors, start=1)])
        store = ObjectStoreTransport()
        for version in (0, 1):  # the second reuses the actors' buffers
            weights = snapshot(version)
            handle = publisher.publish(version, weights)
            by_broadcast = ray.get([a.receive.remote(handle) for a in actors])
            by_store = ray.get([a.receive_object_store.remote(store.publish(version, weights)) for a in actors])
            publisher.wait()
            for got, ref in zip(by_broadcast, by_store):
                assert list(got) == list(ref) == list(weights)
                for k in weights:
                    assert got[k].dtype == ref[k].dtype and np.array_equal(got[k], ref[k]), (version, k)
                    assert np.array_equal(got[k], weights[k])
        assert not np.array_equal(snapshot(0)["pos"], snapshot(1)["pos"])  # the versions differ
    finally:
        ray.shutdown()
