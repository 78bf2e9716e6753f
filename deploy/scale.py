"""``divcfg scale --actors N``: change the rollout-actor count of a running ``divcfg train`` job.

The job registers a named control actor (namespace ``divcfg``, name ``divcfg-control-<run name>``) that holds the
target count; the training loop polls it and grows or shrinks the pool. New actors get the newest weights before
they generate; removed actors finish their current group first.
"""
from __future__ import annotations

import argparse
import os
import sys

from divcfg.common.config.help import plain
from divcfg.common.runtime.cluster import ClusterError, connect
from divcfg.job.control import NAMESPACE, set_target


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="divcfg scale", description=plain(__doc__),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--actors", type=int, required=True, help="target number of rollout actors (>= 0)")
    ap.add_argument("--run", help="run name (the basename of its run.dir); optional when one job runs")
    ap.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                    help="Ray cluster address (GCS host:port or ray://...); default RAY_ADDRESS")
    args = ap.parse_args(argv)
    if args.actors < 0:
        print(f"divcfg scale: error: --actors must be >= 0, got {args.actors}", file=sys.stderr)
        return 2
    if not args.address:
        print("divcfg scale: error: no cluster address; pass --address or set RAY_ADDRESS", file=sys.stderr)
        return 2
    try:
        connect(args.address, namespace=NAMESPACE, log_to_driver=False)
        name = set_target(args.run, args.actors)
    except (ClusterError, ValueError) as e:
        print(f"divcfg scale: error: {e}", file=sys.stderr)
        return 2
    print(f"job {name}: rollout actors -> {args.actors}")
    return 0
