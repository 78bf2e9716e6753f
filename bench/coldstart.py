"""Benchmark ``coldstart``: where a new rollout actor's or reward worker's seconds go, from its creation call to its
first result, on a local Ray instance with the tiny world.

For each setting, ``--n`` fresh members of each kind are started one after the other (the previous one killed first,
as after a kill in a run): a rollout actor gets the published weights and generates one group; a reward worker scores
that group. Each member records its own timestamps (``stats()["startup"]``: process start, module imports, ``__init__``,
first weights load, first call); the driver records the creation call and the first result. The phases, on the path
from the creation call to the first result (a phase that happened before the creation call, e.g. imports done by an
idle worker, counts 0):

  worker_start  creation call -> the worker process starts (Ray's scheduling and fork/exec)
  worker_boot   process start -> the role's module starts importing (python, ``import ray``, connecting to Ray)
  imports       the role module's imports (torch, numpy, divcfg)
  init          ``__init__``: model build (rollout) or judges load (reward), from disk
  weights       model built -> the first ``set_weights`` returns (rollout): Ray fetches the snapshot from the object
                store before the call starts, then the actor loads it
  first_call    the first ``generate_groups`` / ``score`` call; ``warmup_excess`` is how much longer it took than the
                second, identical call
  other         the rest of the total: Ray's calls and the gaps between phases

and ``cpu_s``: the CPU seconds (all threads) the member's process has used by its first result, which a start
costs its node whatever else runs there (the wall-clock phases stretch with the load; this does not).

Settings: ``cold`` (the job's Ray instance as ``divcfg train`` starts it) and ``preload`` (the same, plus Ray's
``worker_process_setup_hook`` set to :func:`preload_torch`, so that a worker process Ray started before the creation
call may already hold torch). ``process_age_s`` per member: how long its worker process existed before the creation
call (negative: Ray started it after). ``--import-profile`` adds ``python -X importtime`` of the roles' modules in a
fresh interpreter.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import torch

from divcfg.actors.rollout import remote_rollout_worker
from divcfg.bench.common import machine_info, print_table, write_results
from divcfg.common.config.schema import AlgoConfig
from divcfg.common.data.tokens import read_tokens
from divcfg.common.data.world_dir import World
from divcfg.common.runtime.transport import ObjectStoreTransport
from divcfg.job.policy_source import JudgesFactory, PolicyFactory
from divcfg.model.loaders import load_policy
from divcfg.reward.worker import remote_reward_worker
from divcfg.world.ensure import ensure_world

PHASES = ("worker_start", "worker_boot", "imports", "init", "weights", "first_call", "other")
SETTINGS = ("cold", "preload")
PRELOAD_HOOK = "divcfg.bench.coldstart.preload_torch"


def preload_torch() -> None:
    """The ``preload`` setting's ``worker_process_setup_hook``: Ray runs it in each worker process as it starts."""
    torch.zeros(1).sum()  # the first op also loads torch's CPU kernels


def phases(submit: float, done: float, startup: dict) -> dict[str, float]:
    """Seconds per phase on the path from ``submit`` (creation call) to ``done`` (first result at the driver).

    Each boundary is clamped to be no earlier than the one before, so a phase that ran before the creation call (an
    idle worker that was already up and had imported torch) counts 0 and the phases sum to the total exactly."""
    marks = [("worker_start", "process_start"), ("worker_boot", "import_start"), ("imports", "imported"),
             (None, "init_start"), ("init", "built"), ("weights", "weights_start"), ("weights", "weights_end"),
             (None, "first_call_start"), ("first_call", "first_call_end")]
    out = dict.fromkeys(PHASES, 0.0)
    t = submit
    for name, key in marks:
        if key not in startup:
            continue  # a reward worker has no weights
        nxt = min(max(t, startup[key]), done)
        out[name if name else "other"] += nxt - t
        t = nxt
    out["other"] += done - t
    return out


def _roles(world_dir: str):
    """The Ray classes and constructor arguments of both roles, with train's default method settings, the weights
    the learner would publish first, and one prompt."""

    algo, world = AlgoConfig(), World(world_dir)
    n_frames = read_tokens(world.path("heldout.parquet")).codes.shape[2]
    prompt = read_tokens(world.path("tokens.parquet")).prompts[0]
    base = str(world.path("base").resolve())
    weights = {k: v.detach().numpy() for k, v in load_policy(base).state_dict().items()}
    ref = ObjectStoreTransport().publish(0, weights)
    rollout = (remote_rollout_worker(0.5, 0), dict(policy_factory=PolicyFactory(base), n_frames=n_frames,
                                                   group_size=algo.group_size, temperature=algo.temperature,
                                                   threads=1))
    reward = (remote_reward_worker(0.5, 0), dict(judges_factory=JudgesFactory(str(world.root.resolve())), threads=1))
    return rollout, reward, ref, [(0, prompt, 0)]


def _start_one(kind: str, cls, kwargs: dict, ref, items, group) -> dict:
    """Start one member, wait for its first result, time a second identical call, read its timestamps, kill it."""
    import ray  # start-up: ray takes ~1.1 s to import; the plain classes here run without it
    submit = time.time()
    member = cls.remote(**kwargs)
    if kind == "rollout":
        member.set_weights.remote(0, ref)
        call = lambda: member.generate_groups.remote(items)  # noqa: E731
    else:
        call = lambda: member.score.remote(group)  # noqa: E731
    result = ray.get(call())
    done = time.time()
    t0 = time.perf_counter()
    ray.get(call())
    second = time.perf_counter() - t0
    startup = ray.get(member.stats.remote())["startup"]
    ray.kill(member, no_restart=True)
    p = phases(submit, done, startup)
    return dict(kind=kind, total=done - submit, **p, process_age_s=submit - startup["process_start"],
                cpu_s=startup.get("cpu_s_at_first_result", float("nan")), second_call=second,
                warmup_excess=max(0.0, p["first_call"] - second), result=result)


def run_setting(world_dir: str, setting: str, n: int, settle_s: float) -> list[dict]:
    """``n`` members of each kind, one at a time, on a fresh Ray instance configured as ``setting`` says."""
    import ray  # start-up: ray takes ~1.1 s to import; the plain classes here run without it
    env = {"env_vars": {"OMP_NUM_THREADS": "1"}}
    if setting == "preload":
        env["worker_process_setup_hook"] = PRELOAD_HOOK
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env=env)
    try:
        (r_cls, r_kw), (w_cls, w_kw), ref, items = _roles(world_dir)
        time.sleep(settle_s)  # a run's members die long after Ray started: its idle workers are up by then
        rows, group = [], None
        for _ in range(n):
            row = _start_one("rollout", r_cls, r_kw, ref, items, None)
            group = row.pop("result")
            rows.append(row)
            row = _start_one("reward", w_cls, w_kw, ref, items, group)
            row.pop("result")
            rows.append(row)
        return [dict(r, setting=setting) for r in rows]
    finally:
        ray.shutdown()


def import_profile() -> dict[str, float]:
    """``python -X importtime`` of the roles' modules in a fresh interpreter: cumulative seconds per top-level
    package imported at the outermost level (torch, ray, ...; divcfg's own modules net of what they pull in)."""
    code = ("import numpy, torch, ray, divcfg.actors.rollout, divcfg.reward.worker, divcfg.reward.judges, "
            "divcfg.common.storage.checkpoint")
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1"), check=True)
    out: dict[str, float] = {}
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line or "cumulative" in line:
            continue
        _, cumulative, name = line.split("|")
        if name.startswith("  "):  # nested: already inside its parent's cumulative time
            continue
        root = name.strip().split(".")[0]
        out[root] = out.get(root, 0.0) + int(cumulative) / 1e6
    return out


def summarise(rows: list[dict], settings: list[str]) -> list[dict]:
    """Per setting and kind: median and max of the total and of each phase, and each setting's median total
    relative to ``cold`` (same run, same machine)."""
    results = []
    for kind in ("rollout", "reward"):
        cold = [r["total"] for r in rows if r["kind"] == kind and r["setting"] == settings[0]]
        for setting in settings:
            mine = [r for r in rows if r["kind"] == kind and r["setting"] == setting]
            if not mine:
                continue
            total = statistics.median(r["total"] for r in mine)
            base = statistics.median(cold) if setting != settings[0] and cold else None
            entry = dict(name=f"coldstart/{setting}/{kind}/total", value=total, unit="s", baseline_value=base,
                         ratio=total / base if base else None, target=None, met=None,
                         max=max(r["total"] for r in mine), n=len(mine))
            for p in (*PHASES, "warmup_excess", "second_call", "cpu_s"):
                vals = [r[p] for r in mine]
                entry[p] = {"median": statistics.median(vals), "max": max(vals)}
                if p in PHASES:
                    entry[p]["share_of_total"] = statistics.median(vals) / total if total else None
            results.append(entry)
    return results


def run(world: str, n: int = 3, settings: list[str] | None = None, settle_s: float = 10.0,
        profile: bool = False, json_out: str | None = None, rounds: int = 1) -> list[dict]:
    settings = list(settings or SETTINGS)
    world_dir = str(ensure_world(world, "tiny", seed=0, progress=True).root.resolve())
    load = {"start": os.getloadavg()[0]}  # the machine's load stretches every phase: report it with the figures
    # Rounds alternate the settings' order (A B, B A, ...) so that a drift in the machine's load hits all alike.
    order = [s for r in range(rounds) for s in (settings if r % 2 == 0 else settings[::-1])]
    rows = [dict(row, round=i // len(settings)) for i, s in enumerate(order)
            for row in run_setting(world_dir, s, n, settle_s)]
    load["end"] = os.getloadavg()[0]
    results = summarise(rows, settings)
    extra = dict(loadavg_1m=load, rounds=rounds, settle_s=settle_s, members=rows)
    if profile:
        extra["import_profile_s"] = import_profile()
    results.append(dict(name="coldstart/run", value=len(rows), unit="members", baseline_value=None, ratio=None,
                        target=None, met=None, **extra))
    if json_out:
        write_results(json_out, results, machine_info("cpu"))
    print_table(results[:-1])
    for r in results[:-1]:
        print(r["name"] + ": " + ", ".join(f"{p} {r[p]['median']:.2f}/{r[p]['max']:.2f}" for p in PHASES)
              + f"  (median/max s; warm-up excess {r['warmup_excess']['median']:.2f})")
    print(f"load average (1 min): {load['start']:.1f} at the start, {load['end']:.1f} at the end")
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="divcfg bench coldstart", description=__doc__.split("\n")[0].split(": ", 1)[1])
    ap.add_argument("--world", default="worlds/tiny", help="tiny world directory (built there if missing)")
    ap.add_argument("--n", type=int, default=3, help="members of each kind started per setting and round (>= 1)")
    ap.add_argument("--rounds", type=int, default=1, help="rounds over the settings, in alternating order (>= 1)")
    ap.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, from {','.join(SETTINGS)}")
    ap.add_argument("--settle", type=float, default=10.0, help="seconds between Ray's start and the first member")
    ap.add_argument("--import-profile", action="store_true", help="also time the imports with python -X importtime")
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args(argv)
    for name in ("n", "rounds"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.settle < 0:
        ap.error(f"--settle must be >= 0, got {args.settle}")
    settings = [s for s in args.settings.split(",") if s]
    bad = [s for s in settings if s not in SETTINGS]
    if bad or not settings:
        ap.error(f"--settings {args.settings!r}: unknown {bad or 'empty'}; choose from {','.join(SETTINGS)}")
    run(args.world, args.n, settings, args.settle, args.import_profile, args.json_out, args.rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
