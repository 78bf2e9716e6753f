"""Benchmark ``broadcast``: publish a weight snapshot to A rollout actors through the weights loop.

The transport is the one training uses (:meth:`RayTopology.publish`-style: one ``ray.put`` of numpy arrays, the same
object reference handed to every actor, read zero-copy). The time is from the put until every actor has loaded the
snapshot. Baseline, in the same run: one in-process copy of the same bytes. Target: <= 3x the copy at 100 MB.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from divcfg.bench.common import machine_info, median_time, print_table, write_results


class WeightReader:
    """Stands in for a rollout actor's ``set_weights``: touch every array, as ``load_state_dict`` would."""

    def set_weights(self, version: int, weights: dict) -> int:
        total = 0.0
        for v in weights.values():
            total += float(v[::4096].sum())  # one read per page: the bytes are really mapped
        return version


def snapshot(n_bytes: int, tensors: int = 32) -> dict[str, np.ndarray]:
    per = n_bytes // tensors // 4
    return {f"layer{i}.weight": np.random.default_rng(i).standard_normal(per, dtype=np.float32) for i in range(tensors)}


def run(sizes_mb=(10, 100, 1000), actors=(1, 2, 4), repeats: int = 3, json_out: str | None = None) -> list[dict]:
    import ray

    own = not ray.is_initialized()
    if own:
        ray.init(num_cpus=max(actors), include_dashboard=False, log_to_driver=False,
                 object_store_memory=int(max(sizes_mb) * 2**20 * 3))
    readers = [ray.remote(num_cpus=1)(WeightReader).remote() for _ in range(max(actors))]
    ray.get([r.set_weights.remote(0, {"x": np.zeros(1, np.float32)}) for r in readers])  # actors up
    results = []
    for mb in sizes_mb:
        weights = snapshot(mb * 2**20)
        copy_s, _ = median_time(lambda: {k: v.copy() for k, v in weights.items()}, repeats)
        for a in actors:
            def publish():
                ref = ray.put(weights)
                ray.get([r.set_weights.remote(1, ref) for r in readers[:a]])
            t, _ = median_time(publish, repeats)
            ratio = t / copy_s
            results.append(dict(name=f"broadcast/{mb}MB/A{a}", value=t, unit="s", baseline_value=copy_s,
                                ratio=ratio, target=3.0 if mb == 100 else None,
                                met=(ratio <= 3.0) if mb == 100 else None, gb_per_s=mb / 1024 / t))
        del weights
    if own:
        ray.shutdown()
    if json_out:
        write_results(json_out, results, machine_info("cpu"))
    print_table(results)
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m divcfg.bench.broadcast", description=__doc__.split("\n")[0])
    ap.add_argument("--sizes-mb", default="10,100,1000")
    ap.add_argument("--actors", default="1,2,4")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args(argv)
    run(tuple(int(x) for x in args.sizes_mb.split(",")), tuple(int(x) for x in args.actors.split(",")),
        args.repeats, args.json_out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
