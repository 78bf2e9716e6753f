"""How a weight snapshot travels from the learner to the rollout actors.

The roles never see the mechanism: the learner hands :meth:`WeightTransport.publish` a snapshot once per version and
gets back a *handle*; the topology passes that handle to every actor's ``set_weights``; an actor turns it back into
arrays with :meth:`WeightTransport.receive`. Swapping the transport changes none of the three.

:class:`ObjectStoreTransport` (the default) puts the snapshot into Ray's object store once; actors on the same node
map the numpy arrays without copying, and other nodes fetch one copy per node. A GPU cluster that wants NCCL adds a
class whose ``publish`` broadcasts from the learner's device (e.g. ``ray.util.collective.broadcast`` in a group the
actors joined) and returns the version as the handle, and whose ``receive`` takes part in that broadcast into the
actor's preallocated tensors.
"""
from __future__ import annotations

from typing import Any, Protocol

import numpy as np


class WeightTransport(Protocol):
    def publish(self, version: int, weights: dict[str, np.ndarray]) -> Any:
        """Make ``weights`` (version ``version``) available to actors; returns the handle they are sent."""

    def receive(self, handle: Any) -> dict[str, np.ndarray]:
        """Actor side: the snapshot a handle stands for."""


class ObjectStoreTransport:
    """One ``ray.put`` per version; the bytes are never serialised per actor."""

    def publish(self, version: int, weights: dict[str, np.ndarray]) -> Any:
        import ray  # start-up: ray takes ~1.1 s to import; the plain classes here run without it
        return ray.put(weights)

    def receive(self, handle: Any) -> dict[str, np.ndarray]:
        # Ray resolves an ObjectRef passed as a top-level argument before the method runs, so the actor usually
        # holds the arrays already; a ref nested in a container still needs a get.
        if isinstance(handle, dict):
            return handle
        import ray  # start-up: ray takes ~1.1 s to import; the plain classes here run without it
        return ray.get(handle)


class InProcessTransport:
    """No copy at all: for local mode, where learner and actor share one process."""

    def publish(self, version: int, weights: dict[str, np.ndarray]) -> Any:
        return weights

    def receive(self, handle: Any) -> dict[str, np.ndarray]:
        return handle
