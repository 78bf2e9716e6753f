"""Benchmark ``broadcast``: publish a weight snapshot to A rollout actors through the weights loop.

Both transports (``--transports object,collective``):
- ``object``, the default training uses (:meth:`RayTopology.publish`-style: one ``ray.put`` of numpy arrays, the same
  object reference handed to every actor, read zero-copy). The time is from the put until every actor has loaded
  the snapshot.
- ``collective`` (:mod:`divcfg.common.runtime.collective_transport`): the publisher packs the snapshot into one buffer per
  dtype and broadcasts it in a process group of its own with the A actors (gloo here, NCCL on GPUs); the time is from
  the publish until every actor has unpacked it. One group per A (a collective group is fixed).
Baseline, in the same run: one in-process copy of the same bytes. Target: <= 3x the copy at 100 MB.
"""
from __future__ import annotations

import argparse

import numpy as np

from divcfg.bench.common import machine_info, median_time, print_table, write_results
from divcfg.common.runtime.collective_transport import CollectiveTransport, GroupAddress
from divcfg.learner.group import free_port


class WeightReader:
    """Stands in for a rollout actor's ``set_weights``: touch every array, as ``load_state_dict`` would."""

    def set_weights(self, version: int, weights: dict) -> int:
        total = 0.0
        for v in weights.values():
            total += float(v[::4096].sum())  # one read per page: the bytes are really mapped
        return version

    def join(self, address, rank: int) -> None:
        """Join one collective group; a reader is in one group per actor count A, all kept alive (a dropped
        process group would break the broadcasts of the others still measured)."""
        from divcfg.common.runtime.collective_transport import CollectiveTransport
        self.transports = getattr(self, "transports", {})
        self.transports[address.world_size] = CollectiveTransport(address, rank)

    def receive(self, world_size: int, handle) -> int:
        """The collective transport's side of ``set_weights``, in the group of ``world_size``."""
        return self.set_weights(handle.version, self.transports[world_size].receive(handle))


def snapshot(n_bytes: int, tensors: int = 32) -> dict[str, np.ndarray]:
    per = n_bytes // tensors // 4
    return {f"layer{i}.weight": np.random.default_rng(i).standard_normal(per, dtype=np.float32) for i in range(tensors)}


def run(sizes_mb=(10, 100, 1000), actors=(1, 2, 4), repeats: int = 3, json_out: str | None = None,
        transports=("object", "collective")) -> list[dict]:
    import ray  # start-up: ray takes ~1.1 s to import; the plain classes here run without it

    own = not ray.is_initialized()
    if own:
        ray.init(address="local", num_cpus=max(actors), include_dashboard=False, log_to_driver=False,
                 object_store_memory=max(int(max(sizes_mb) * 2**20 * 3), 100 * 2**20))
    readers = [ray.remote(num_cpus=1)(WeightReader).remote() for _ in range(max(actors))]
    ray.get([r.set_weights.remote(0, {"x": np.zeros(1, np.float32)}) for r in readers])  # actors up
    publishers = {a: _collective_group(readers[:a]) for a in actors} if "collective" in transports else {}
    results = []
    for mb in sizes_mb:
        weights = snapshot(mb * 2**20)
        copy_s, _ = median_time(lambda w=weights: {k: v.copy() for k, v in w.items()}, repeats)
        for transport in transports:
            for a in actors:
                publish = _publisher(transport, weights, readers[:a], publishers.get(a))
                t, _ = median_time(publish, repeats)
                ratio = t / copy_s
                prefix = "broadcast" if transport == "object" else "broadcast_collective"
                results.append(dict(name=f"{prefix}/{mb}MB/A{a}", value=t, unit="s", baseline_value=copy_s,
                                    ratio=ratio, target=3.0 if mb == 100 else None, transport=transport,
                                    met=(ratio <= 3.0) if mb == 100 else None, gb_per_s=mb / 1024 / t))
        del weights
    if own:
        ray.shutdown()
    if json_out:
        write_results(json_out, results, machine_info("cpu"))
    print_table(results)
    return results


def _collective_group(readers):
    """The driver as rank 0 (the publisher, where learner worker 0 is in training) and ``readers`` as 1..A."""
    import ray  # start-up: ray takes ~1.1 s to import; the plain classes here run without it

    address = GroupAddress("127.0.0.1", free_port(), world_size=len(readers) + 1, backend="gloo")
    publisher = CollectiveTransport(address, rank=0)  # joins in the background while the readers join
    ray.get([r.join.remote(address, rank) for rank, r in enumerate(readers, start=1)])
    return publisher


def _publisher(transport: str, weights: dict, readers, publisher):
    import ray  # start-up: ray takes ~1.1 s to import; the plain classes here run without it

    if transport == "object":
        def publish():
            ref = ray.put(weights)
            ray.get([r.set_weights.remote(1, ref) for r in readers])
    elif transport == "collective":
        def publish():
            handle = publisher.publish(1, weights)
            ray.get([r.receive.remote(len(readers) + 1, handle) for r in readers])
            publisher.wait()
    else:
        raise ValueError(f"--transports: unknown transport {transport!r}; known: object, collective")
    return publish


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m divcfg.bench.broadcast", description=__doc__.split("\n")[0])
    ap.add_argument("--sizes-mb", default="10,100,1000")
    ap.add_argument("--actors", default="1,2,4")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--transports", default="object,collective", help="object (Ray's object store, the default "
                    "of training) and/or collective (a gloo broadcast group)")
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args(argv)
    transports = tuple(t for t in args.transports.split(",") if t)
    unknown = [t for t in transports if t not in ("object", "collective")]
    if unknown or not transports:
        ap.error(f"--transports {args.transports!r}: choose from object, collective")
    run(tuple(int(x) for x in args.sizes_mb.split(",")), tuple(int(x) for x in args.actors.split(",")),
        args.repeats, args.json_out, transports)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
