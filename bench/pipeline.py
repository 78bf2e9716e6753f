"""Benchmark ``pipeline``: the full ``divcfg train`` loop for a fixed number of steps, async against sync, or (with
``--compare placement``) the learner as a group of Ray actors (``learner.placement=group``, the default) against the
learner inside the driver (``learner.placement=driver``), both async.

Both variants run on the same resources (``actors.count``, ``reward.count``, threads and world), one after the other in
this process through the real entry point (``divcfg train`` overrides, Hydra included), on one private local Ray
instance sized for the default ``actors.num_cpus`` and ``reward.num_cpus`` (extra overrides must leave those alone).
With ``--repeats`` > 1 the order alternates so that slow drift in the machine's load hits both modes alike. Each run
is read back from what it writes: ``summary.json``, its saved config (``.hydra/config.yaml``) and the per-step
TensorBoard scalars.

Steady-state throughput. ``summary.json``'s ``samples_per_s`` divides by the loop wall time, which starts before the
rollout actors exist and ends after the in-flight groups are drained: it counts the actors' start-up (process spawn,
imports, loading the base policy), which dominates a short run, and async's end-of-run drain. The benchmark
therefore drops the first ``warmup_steps`` steps and measures from the TensorBoard event of the last warm-up step to
that of the last step (both written at the end of their step); the whole-run figures are kept as ``whole_run_*``.
Checkpoints, audio and progress lines are kept out of that window (one checkpoint after the last step's scalars, no
audio, no progress line); the start and end probes sit outside the loop.

Learner busy fraction: the step's ``time/teacher + time/forward_backward + time/update + time/publish`` summed over
the window, divided by the window's wall time (the rest is ``time/wait_rollouts`` and logging).

Actor busy fraction: ``rollout/actor_generate_s`` (the actor seconds behind each step's groups) summed over the
window, divided by the window's wall time times ``actors.count``. Groups dropped as stale are not counted (an
underestimate), and in async mode the groups trained in a window may have been generated up to ``max_policy_lag``
updates before it (an overestimate over short windows, where it can exceed 1); over the benchmark's 40-60 steps
both edges are small.

Entries: ``pipeline/<size>/samples_per_s`` (async, baseline sync, target async/sync >= 1.3),
``pipeline/<size>/learner_busy`` (async, baseline sync), ``pipeline/<size>/actor_busy`` (async, baseline sync) and
``pipeline/<size>/<mode>/policy_lag`` (max lag over the run, target <= ``algo.max_policy_lag``). With ``--compare
placement`` the same entries under ``pipeline/<size>/placement/`` (group, baseline driver; no target: the group
moves the learner off the driver, and this measures what that costs or gains). With ``--compare decoder`` and a
MusicGen policy among the overrides, under ``pipeline/<size>/decoder/`` (``model.decoder=divcfg``, baseline
``model.decoder=transformers``; no target: the training throughput of MusicGen's weights in divcfg's decoder).

Run: ``divcfg bench pipeline --world-size small --steps 30 --json /tmp/bench_pipeline.json``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
from pathlib import Path

from omegaconf import OmegaConf

from divcfg.bench.common import machine_info, print_table, write_results
from divcfg.common.config.schema import ActorsConfig, LearnerConfig, RewardConfig
from divcfg.common.data.world_dir import World, WorldError
from divcfg.common.tb_scalars import read_scalars
from divcfg.job.train import main as train_main

MODES = ("sync", "async")
TARGET_SPEEDUP = 1.3
# What a benchmark compares: (baseline variant, measured variant, each variant's overrides, target of the ratio).
COMPARISONS = {
    "mode": ("sync", "async", {"sync": ("learner.mode=sync",), "async": ("learner.mode=async",)}, TARGET_SPEEDUP),
    "placement": ("driver", "group", {v: ("learner.mode=async", f"learner.placement={v}") for v in ("driver", "group")},
                  None),
    # A MusicGen policy (model=musicgen_small model.musicgen=DIR among the overrides): its weights in divcfg's decoder
    # against transformers' own decoder (the adapter), in the actors and the learner alike.
    "decoder": ("transformers", "divcfg", {v: ("learner.mode=async", f"model.decoder={v}")
                                           for v in ("transformers", "divcfg")}, None),
}
LEARNER_PHASES = ("teacher", "forward_backward", "update", "publish")
# Written at the end of every step by train.py's on_step; its event times mark the step boundaries.
STEP_MARK = "throughput/samples_per_s"


def train_args(variant: str, run_dir: Path, world_size: str, world_dir: str, steps: int, actors: int, reward: int,
               beta: float, extra: tuple[str, ...] = (), comparison: str = "mode") -> list[str]:
    """``divcfg train`` overrides of one benchmark run: ``variant`` of ``comparison`` (e.g. async of mode)."""
    return [f"world.size={world_size}", f"world.dir={world_dir}", f"run.dir={run_dir}",
            *COMPARISONS[comparison][2][variant], f"learner.steps={steps}", f"actors.count={actors}",
            f"reward.count={reward}",
            f"algo.beta={beta}", "logging.every=1",  # per-step scalars: the window is cut at step boundaries
            "logging.progress=false", "logging.audio_every=0", f"checkpoint.every={steps}",
            "probe.prompts=1", "probe.samples=2",  # the probes are outside the loop; keep them short
            *extra]


def read_run(run_dir: str | Path, warmup_steps: int = 1) -> dict:
    """The figures of one finished run (see the module docstring for what each one covers)."""
    run_dir = Path(run_dir)
    if warmup_steps < 1:
        raise ValueError("warmup_steps must be >= 1: the window starts at the end of a logged step")
    summary = json.loads((run_dir / "summary.json").read_text())
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    scalars = read_scalars(run_dir)
    marks = scalars.get(STEP_MARK, {})
    steps = sorted(marks)
    if len(steps) <= warmup_steps:
        raise ValueError(f"{run_dir}: {len(steps)} logged steps, need more than warmup_steps={warmup_steps}")
    per_step = cfg.algo.batch_prompts * cfg.algo.group_size  # every Ray-mode step trains on exactly B whole groups
    start, window = steps[warmup_steps - 1], steps[warmup_steps:]
    window_s = marks[window[-1]][0] - marks[start][0]

    def total(tag: str, over) -> float:
        return sum(scalars.get(tag, {}).get(s, (0.0, 0.0))[1] for s in over)

    learner_s = sum(total(f"time/{k}", window) for k in LEARNER_PHASES)
    learner_all_s = sum(total(f"time/{k}", steps) for k in LEARNER_PHASES)
    lag_max = max((v for _, v in scalars.get("rollout/policy_lag_max", {}).values()), default=0.0)
    # Generation seconds of the groups trained on in the window (stale groups' time is left out).
    actor_busy = total("rollout/actor_generate_s", window) / (window_s * cfg.actors.count)
    return {
        "run_dir": str(run_dir), "mode": summary["mode"], "steps": summary["steps"], "window_steps": len(window),
        "window_s": window_s, "samples_per_s": len(window) * per_step / window_s,
        "learner_busy": learner_s / window_s, "actor_busy": actor_busy, "wait_fraction": total("time/wait_rollouts", window) / window_s,
        # samples_per_s at a step is samples so far / seconds since the loop began, so this is step 0's duration
        "first_step_s": per_step / marks[steps[0]][1],
        "mean_window_step_s": window_s / len(window),
        "whole_run_samples_per_s": summary["samples_per_s"], "whole_run_wall_s": summary["wall_s"],
        "whole_run_learner_busy": learner_all_s / summary["wall_s"],
        "policy_lag_mean": summary["policy_lag_mean"], "policy_lag_max": lag_max,
        "max_policy_lag": cfg.algo.max_policy_lag, "actors": cfg.actors.count, "reward_workers": cfg.reward.count,
        "groups_generated": summary["groups_generated"], "groups_stale": summary["groups_stale"],
    }


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def compare(runs: dict[str, list[dict]], world_size: str, comparison: str = "mode") -> list[dict]:
    """Result entries from the runs of each variant (medians over repeats; the lag is the worst over repeats)."""
    base, new, _, target = COMPARISONS[comparison]
    a, s = runs[new], runs[base]
    prefix = f"pipeline/{world_size}" + ("" if comparison == "mode" else f"/{comparison}")
    shared = dict(steps=a[0]["steps"], window_steps=a[0]["window_steps"], actors=a[0]["actors"],
                  reward_workers=a[0]["reward_workers"], repeats=len(a))
    sps, sps_base = _median(a, "samples_per_s"), _median(s, "samples_per_s")
    whole, whole_base = _median(a, "whole_run_samples_per_s"), _median(s, "whole_run_samples_per_s")
    busy, busy_base = _median(a, "learner_busy"), _median(s, "learner_busy")
    results = [
        dict(name=f"{prefix}/samples_per_s", value=sps, unit="samples/s", baseline_value=sps_base,
             ratio=sps / sps_base, target=target, met=None if target is None else sps / sps_base >= target,
             whole_run_value=whole, whole_run_baseline=whole_base, whole_run_ratio=whole / whole_base,
             runs=runs, **shared),
        dict(name=f"{prefix}/learner_busy", value=busy, unit="fraction", baseline_value=busy_base,
             ratio=busy / busy_base, target=None, met=None, wait_fraction=_median(a, "wait_fraction"),
             wait_fraction_baseline=_median(s, "wait_fraction"),
             whole_run_value=_median(a, "whole_run_learner_busy"),
             whole_run_baseline=_median(s, "whole_run_learner_busy"), **shared),
        dict(name=f"{prefix}/actor_busy", value=_median(a, "actor_busy"), unit="fraction",
             baseline_value=_median(s, "actor_busy"), ratio=_median(a, "actor_busy") / _median(s, "actor_busy"),
             target=None, met=None, **shared),
    ]
    for mode in (base, new):
        lag = max(r["policy_lag_max"] for r in runs[mode])
        bound = runs[mode][0]["max_policy_lag"]
        results.append(dict(name=f"{prefix}/{mode}/policy_lag", value=lag, unit="versions (max)", baseline_value=None,
                            ratio=None, target=bound, met=lag <= bound,
                            policy_lag_mean=_median(runs[mode], "policy_lag_mean"), **shared))
    return results


def print_runs(runs: dict[str, list[dict]], file=None) -> None:
    """One line per run: steady-state and whole-run throughput, busy and wait fractions, lag, start-up."""
    print("\nruns (steady = after the warm-up steps; whole = summary.json):", file=file)
    print(f"{'run':<6} {'steady sps':>10} {'whole sps':>9} {'learner busy':>12} {'wait':>6} {'lag mean/max':>12} "
          f"{'first step s':>12} {'mean step s':>11}", file=file)
    for mode in runs:
        for r in runs[mode]:
            print(f"{mode:<6} {r['samples_per_s']:>10.3g} {r['whole_run_samples_per_s']:>9.3g} "
                  f"{r['learner_busy']:>12.2f} {r['wait_fraction']:>6.2f} "
                  f"{r['policy_lag_mean']:>7.2f}/{r['policy_lag_max']:<4g} {r['first_step_s']:>12.2f} "
                  f"{r['mean_window_step_s']:>11.2f}", file=file)


def _private_ray(actors: int, reward: int) -> None:
    """A private instance that every run joins: a plain ray.init() would attach to any cluster already running on
    this machine (another job's), and train would then refuse to pass its resource request to it. The logical CPUs
    are what train asks for when it starts Ray itself, so every actor, reward worker and learner worker is placed."""
    import ray  # start-up: ray takes ~1.1 s to import; the plain classes here run without it

    need = actors * ActorsConfig().num_cpus + reward * RewardConfig().num_cpus + LearnerConfig().num_cpus
    ray.init(address="local", num_cpus=max(math.ceil(need), os.cpu_count() or 1), include_dashboard=False,
             log_to_driver=False, runtime_env={"env_vars": {  # as train's own: workers import this checkout
                 "OMP_NUM_THREADS": "1",
                 "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                os.environ.get("PYTHONPATH", "")])}})


def run(world_size: str = "small", world_dir: str | None = None, steps: int = 30, actors: int = 2, reward: int = 1,
        beta: float = 0.0, repeats: int = 1, warmup_steps: int = 1, out_dir: str | None = None,
        json_out: str | None = None, extra: tuple[str, ...] = (), comparison: str = "mode") -> list[dict]:
    import ray  # start-up: ray takes ~1.1 s to import; the plain classes here run without it


    if comparison not in COMPARISONS:
        raise ValueError(f"--compare {comparison!r}: must be one of {', '.join(COMPARISONS)}")
    world_dir = world_dir or f"worlds/{world_size}"
    if not World(world_dir).is_built():  # train would build it first, which takes minutes for small
        raise WorldError(f"no built {world_size} world in {world_dir}: run `divcfg world build --size {world_size} "
                         f"--out {world_dir}` first, or pass --world-dir")
    if steps <= warmup_steps:
        raise ValueError(f"steps={steps} leaves nothing after warmup_steps={warmup_steps}")
    out = Path(out_dir or tempfile.mkdtemp(prefix="divcfg-bench-pipeline-"))
    own_ray = not ray.is_initialized()
    if own_ray:
        _private_ray(actors, reward)
    variants = COMPARISONS[comparison][:2]
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    try:
        for i in range(repeats):
            for v in (variants if i % 2 == 0 else variants[::-1]):
                run_dir = out / f"{v}-{i}"
                code = train_main(train_args(v, run_dir, world_size, world_dir, steps, actors, reward, beta,
                                             extra, comparison))
                if code:
                    raise RuntimeError(f"divcfg train ({comparison} {v}) exited with status {code} ({run_dir})")
                runs[v].append(read_run(run_dir, warmup_steps))
    finally:
        if own_ray and ray.is_initialized():
            ray.shutdown()
    results = compare(runs, world_size, comparison)
    print_table(results)
    print_runs(runs)
    if json_out:
        write_results(json_out, results, machine_info("cpu"))
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="divcfg bench pipeline", description=__doc__.split("\n")[0])
    ap.add_argument("--world-size", default="small", help="tiny or small")
    ap.add_argument("--world-dir", help="a built world (default worlds/SIZE)")
    ap.add_argument("--steps", type=int, default=30, help="learner steps per run")
    ap.add_argument("--warmup-steps", type=int, default=1, help="first steps left out of the steady-state window")
    ap.add_argument("--actors", type=int, default=2, help="actors.count, the same for both modes")
    ap.add_argument("--reward-workers", type=int, default=1, help="reward.count, the same for both modes")
    ap.add_argument("--beta", type=float, default=0.0)
    ap.add_argument("--repeats", type=int, default=1, help="runs per mode, alternating which mode goes first")
    ap.add_argument("--out-dir", help="where the runs are written (default: a new temporary directory)")
    ap.add_argument("--json", dest="json_out")
    ap.add_argument("--compare", default="mode", choices=sorted(COMPARISONS),
                    help="mode: async against sync; placement: the learner group against the learner in the driver")
    ap.add_argument("overrides", nargs="*", help="more `divcfg train` overrides for both modes, e.g. algo.group_size=8")
    args = ap.parse_args(argv)
    run(args.world_size, args.world_dir, args.steps, args.actors, args.reward_workers, args.beta, args.repeats,
        args.warmup_steps, args.out_dir, args.json_out, tuple(args.overrides), args.compare)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
