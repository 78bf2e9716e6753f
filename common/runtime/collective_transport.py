"""A weight transport over a collective group: the publisher (learner worker 0) broadcasts each snapshot to the
rollout actors, instead of putting it in Ray's object store (:mod:`divcfg.common.runtime.transport`).

Rank 0 publishes; ranks 1..A are actors. The group is a process group of its own, built from a TCP store at the
publisher's address, not torch.distributed's default group: learner worker 0 is already in the learner group's
default group, and ``ray.util.collective``'s gloo backend (Ray 2.60) reuses the default group when a process has
one, so it can't host both. Backends: gloo on CPU tensors, NCCL on CUDA tensors.

One broadcast per version carries every tensor of the snapshot packed into one flat buffer per dtype. ``publish``
starts it and returns at once (the handle names the version and the layout), because the actors only join once the
handle reaches them; the next ``publish`` waits for it to finish. So every actor of the group must receive every
published version, in order: the group is fixed (a resized rollout pool needs a new group), unlike the object
store, where an actor can skip versions.
"""
from __future__ import annotations

import datetime
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

BACKENDS = ("gloo", "nccl")


class TransportError(ValueError):
    """A transport that can't be used here; the message names the setting."""


def check_backend(backend: str) -> None:
    """Refuse a collective transport whose backend this process can't run, before any group is made."""
    if backend not in BACKENDS:
        raise TransportError(f"collective transport backend {backend!r}: must be one of {BACKENDS}")
    if backend == "gloo" and not dist.is_gloo_available():
        raise TransportError("collective transport backend gloo: this PyTorch build has no gloo")
    if backend == "nccl" and not (dist.is_nccl_available() and torch.cuda.is_available()):
        raise TransportError("collective transport backend nccl: needs a CUDA device and a PyTorch build with NCCL "
                             f"(cuda available: {torch.cuda.is_available()}); use gloo on CPU")


@dataclass(frozen=True)
class GroupAddress:
    """Where a collective group meets: the publisher's host and a free port there, and the group's size."""

    host: str
    port: int
    world_size: int
    backend: str = "gloo"


@dataclass(frozen=True)
class Handle:
    """What the actors are sent for one version: the version and the packed layout, ``(name, dtype, shape,
    offset)`` per tensor, offsets in elements of that dtype's flat buffer."""

    version: int
    layout: tuple[tuple[str, str, tuple[int, ...], int], ...]


def pack(weights: dict[str, np.ndarray]) -> tuple[dict[str, torch.Tensor], tuple]:
    """One flat buffer per dtype, and the layout that unpacks it."""
    layout, chunks, sizes = [], {}, {}
    for name, a in weights.items():
        dt = str(a.dtype)
        layout.append((name, dt, tuple(a.shape), sizes.get(dt, 0)))
        sizes[dt] = sizes.get(dt, 0) + a.size
        chunks.setdefault(dt, []).append(torch.from_numpy(np.ascontiguousarray(a)).reshape(-1))
    return {dt: torch.cat(c) for dt, c in chunks.items()}, tuple(layout)


def unpack(flat: dict[str, torch.Tensor], layout: tuple) -> dict[str, np.ndarray]:
    """Views into the flat buffers (valid until the next receive)."""
    out = {}
    for name, dt, shape, offset in layout:
        n = int(np.prod(shape, dtype=np.int64))
        out[name] = flat[dt][offset:offset + n].cpu().numpy().reshape(shape)
    return out


class CollectiveTransport:
    """:class:`~divcfg.common.runtime.transport.WeightTransport` by broadcast. Build it on every member with the same
    :class:`GroupAddress` (rank 0: the publisher); joining happens in the background, since it completes only once
    every member has joined."""

    def __init__(self, address: GroupAddress, rank: int, timeout_s: float = 600.0):
        check_backend(address.backend)
        self.address, self.rank = address, rank
        self.device = torch.device("cuda" if address.backend == "nccl" else "cpu")
        self._pg = None
        self._error: BaseException | None = None
        self._joined = threading.Thread(target=self._join, args=(timeout_s,), daemon=True)
        self._joined.start()
        self._pending = None  # (work, buffers) of the publisher's last broadcast
        self._buffers: dict[str, torch.Tensor] = {}

    def _join(self, timeout_s: float) -> None:
        try:
            timeout = datetime.timedelta(seconds=timeout_s)
            store = dist.TCPStore(self.address.host, self.address.port, self.address.world_size,
                                  is_master=self.rank == 0, timeout=timeout)
            size = self.address.world_size
            self._pg = (dist.ProcessGroupGloo(store, self.rank, size, timeout) if self.address.backend == "gloo"
                        else dist.ProcessGroupNCCL(store, self.rank, size))
        except BaseException as e:  # noqa: BLE001 - raised to the caller of publish/receive
            self._error = e

    def _group(self):
        self._joined.join()
        if self._error is not None:
            raise RuntimeError(f"joining the weights group at {self.address} failed: {self._error}") from self._error
        return self._pg

    def _broadcast(self, buffers: dict[str, torch.Tensor]):
        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        return [self._group().broadcast([buffers[dt]], opts) for dt in sorted(buffers)]

    def publish(self, version: int, weights: dict[str, np.ndarray]) -> Handle:
        if self.rank != 0:
            raise RuntimeError(f"rank {self.rank} of the weights group can't publish; rank 0 does")
        self.wait()
        flat, layout = pack(weights)
        flat = {dt: t.to(self.device) for dt, t in flat.items()}
        self._pending = (self._broadcast(flat), flat)  # the buffers live until the broadcast is done
        return Handle(version, layout)

    def wait(self) -> None:
        """Publisher: block until the last broadcast has reached every actor."""
        if self._pending is not None:
            for work in self._pending[0]:
                work.wait()
            self._pending = None

    def receive(self, handle: Any) -> dict[str, np.ndarray]:
        if self.rank == 0:
            raise RuntimeError("the publisher (rank 0) of the weights group does not receive")
        sizes: dict[str, int] = {}
        for _, dt, shape, offset in handle.layout:
            sizes[dt] = max(sizes.get(dt, 0), offset + int(np.prod(shape, dtype=np.int64)))
        for dt, n in sizes.items():  # kept between versions: the layout is the same every time
            if dt not in self._buffers or self._buffers[dt].numel() != n:
                self._buffers[dt] = torch.empty(n, dtype=getattr(torch, np.dtype(dt).name), device=self.device)
        for work in self._broadcast({dt: self._buffers[dt] for dt in sizes}):
            work.wait()
        return unpack(self._buffers, handle.layout)
