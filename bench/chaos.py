"""Benchmark ``chaos``: kill a random rollout actor or reward worker every few seconds of a tiny-world run on Ray.

The run is the training loop of ``divcfg train`` (:class:`divcfg.job.scheduler.Scheduler` with the world's base policy,
codec and reward embedder) on a local Ray instance, in three phases: ``--steps-before`` steps with no kills, then one
kill every ``--kill-every`` seconds until ``--kills`` kills were made and every killed member has a replacement that
has returned a result, then ``--steps-after`` steps with no kills.

Figures:
  - per kill: the role, and the recovery time from the kill to the first result (a generated group, or a scored
    batch) of the member that took over;
  - groups lost: prompts drawn from the stream that are neither generated (then used, stale or dropped) nor still
    waiting in the queue at the end; duplicates: prompt groups used twice; partial groups: groups that reached the
    learner with fewer than G samples. All three must be 0;
  - samples/s used by the learner before, during and after the kills.
"""
from __future__ import annotations

import argparse
import functools
import os
import random
import statistics
import threading
import time

import numpy as np
import torch

from divcfg.actors.rollout import remote_rollout_worker
from divcfg.bench.common import machine_info, print_table, write_results
from divcfg.common.config.schema import AlgoConfig, LearnerConfig
from divcfg.common.data.tokens import read_tokens
from divcfg.job.books import PromptStream
from divcfg.job.pool import RayTopology
from divcfg.job.scheduler import Scheduler
from divcfg.learner.learner import Learner
from divcfg.model.loaders import load_policy
from divcfg.reward.judges import Judges
from divcfg.reward.worker import remote_reward_worker
from divcfg.world.ensure import ensure_world

# Targets with warm spares (actors.spares, reward.spares >= 1): recovery median and max in seconds, and samples/s
# during the kills as a share of samples/s before them.
SPARES_MEDIAN_S, SPARES_MAX_S, SPARES_KEPT = 3.0, 10.0, 0.5


class Killer(threading.Thread):
    """Every ``every`` seconds, kills one random member that is up (it has returned a result) and not yet killed,
    until ``limit`` kills were made."""

    def __init__(self, topo, every: float, limit: int, seed: int):
        super().__init__(daemon=True)
        self.topo, self.every, self.limit, self.rng = topo, every, limit, random.Random(seed)
        self.kills: list[dict] = []
        self.halt = threading.Event()

    def run(self) -> None:
        import ray  # start-up: ray takes ~1.1 s to import; the plain classes here run without it
        killed = set()
        while len(self.kills) < self.limit and not self.halt.wait(self.every):
            # Copies: the training loop changes these lists while this thread reads them.
            members = ([(m, "rollout") for m in list(self.topo.actors)]
                       + [(m, "reward") for m in list(self.topo.rewards)])
            up = [(m, role) for m, role in members if m in self.topo.ready_at and m not in killed]
            if not up:
                continue
            member, role = self.rng.choice(up)
            killed.add(member)
            self.kills.append({"member": member, "role": role, "t": time.perf_counter()})
            ray.kill(member, no_restart=True)


def recovery_s(topo, kill: dict) -> float | None:
    """Seconds from the kill to the first result of the member that took over (None: not recovered yet)."""
    member = kill["member"]
    while member in topo.replaced_by:  # a replacement that died before its first result was replaced in turn
        member = topo.replaced_by[member]
        if member in topo.ready_at:
            return topo.ready_at[member] - kill["t"]
    return None


class Phases:
    """The loop's ``on_step``: ``steps_before`` steps with no kills, then the killer runs until its kills are made and
    every killed member has a recovered replacement, then ``steps_after`` steps, then the run ends (or at
    ``deadline``, whatever happened). It records each step's end time and samples, and the prompts used."""

    def __init__(self, topo, killer: Killer, kills: int, steps_before: int, steps_after: int, group_size: int,
                 deadline: float):
        self.topo, self.killer, self.kills, self.group_size, self.deadline = topo, killer, kills, group_size, deadline
        self.steps_before, self.steps_after = steps_before, steps_after
        self.steps: list[tuple[float, int]] = []  # (end time, samples used)
        self.used_ids: list[int] = []
        self.partial = 0
        self.name, self.t = "before", {}

    def __call__(self, i, batch, metrics, acct) -> bool:
        now = time.perf_counter()
        self.steps.append((now, len(batch)))
        self.used_ids.extend(int(p) for p in np.unique(batch.prompt_id))
        self.partial += sum(len(g) != self.group_size for g in batch.groups())
        if self.name == "before" and i + 1 >= self.steps_before:
            self.t["kills_start"] = now
            self.killer.start()
            self.name = "kills"
        elif self.name == "kills" and len(self.killer.kills) >= self.kills:
            if all(recovery_s(self.topo, k) is not None for k in self.killer.kills):
                self.t["recovered"] = now
                self.name = "after"
        elif self.name == "after" and sum(s > self.t["recovered"] for s, _ in self.steps) >= self.steps_after:
            return True
        return now > self.deadline

    def samples_per_s(self, start: str | float, end: str | float) -> float | None:
        """Samples used by steps that ended in (start, end], over that window; a phase's mark names its time (None
        when the run never got there)."""
        start, end = (self.t.get(x) if isinstance(x, str) else x for x in (start, end))
        if start is None or end is None:
            return None
        n = sum(k for s, k in self.steps if start < s <= end)
        return n / (end - start) if n and end > start else None


def _setup(world: str, actors: int, reward_workers: int, seed: int, spares: int = 0):
    """The training loop's roles on a local Ray instance: the tiny world's base policy, codec and reward embedder,
    with train's default method settings and ``spares`` warm spares per role. Returns (learner, topology, stream,
    algo config, learner config)."""
    import ray  # start-up: ray takes ~1.1 s to import; the plain classes here run without it


    algo, learner_cfg = AlgoConfig(), LearnerConfig()
    torch.set_num_threads(learner_cfg.threads)
    w = ensure_world(world, "tiny", seed=0, progress=True)
    world_dir, base = str(w.root.resolve()), str(w.path("base").resolve())
    n_frames = read_tokens(w.path("heldout.parquet")).codes.shape[2]
    prompts = list(dict.fromkeys(read_tokens(w.path("tokens.parquet")).prompts))
    # A private instance (address="local"): a plain ray.init() attaches to any Ray already running on the machine.
    ray.init(address="local", num_cpus=max(2, int(np.ceil(0.5 * (actors + reward_workers + 2 * spares)))),
             include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    learner = Learner(load_policy(base), beta=algo.beta, guidance_scale=algo.guidance_scale, lr=algo.lr,
                      baseline=algo.baseline, is_clip=algo.is_clip, grad_clip=learner_cfg.grad_clip)
    topo = RayTopology(remote_rollout_worker(0.5, 0), remote_reward_worker(0.5, 0), actors, reward_workers,
                       dict(policy_factory=functools.partial(load_policy, base), n_frames=n_frames,
                            group_size=algo.group_size, temperature=algo.temperature, threads=1),
                       dict(judges_factory=functools.partial(Judges.load, world_dir), threads=1),
                       spares=spares, reward_spares=spares)
    return learner, topo, PromptStream(prompts, seed), algo, learner_cfg


def run(world: str, actors: int = 2, reward_workers: int = 1, kills: int = 10, kill_every: float = 3.0,
        steps_before: int = 6, steps_after: int = 6, seed: int = 0, max_minutes: float = 20.0,
        json_out: str | None = None, spares: int = 0) -> list[dict]:

    import ray  # start-up: ray takes ~1.1 s to import; the plain classes here run without it


    load_start = os.getloadavg()[0]  # other work on the machine stretches recoveries; record how busy it was
    learner, topo, stream, algo, learner_cfg = _setup(world, actors, reward_workers, seed, spares)
    killer = Killer(topo, kill_every, kills, seed)
    phases = Phases(topo, killer, kills, steps_before, steps_after, algo.group_size,
                    deadline=time.perf_counter() + max_minutes * 60)
    t0 = time.perf_counter()
    scheduler = Scheduler(learner, topo, stream, batch_prompts=algo.batch_prompts, group_size=algo.group_size,
                          max_lag=algo.max_policy_lag, mode="async", max_role_failures=learner_cfg.max_role_failures)
    acct = scheduler.run(10**6, phases)
    killer.halt.set()
    wall = time.perf_counter() - t0
    ray.shutdown()
    results = _figures(phases, killer, topo, acct, stream, t0, kills, spares)
    results.append(_entry("run", wall, "s", steps=len(phases.steps), loadavg_1m_start=round(load_start, 2),
                          actors=actors, reward_workers=reward_workers, spares=spares, kill_every_s=kill_every,
                          group_size=algo.group_size, batch_prompts=algo.batch_prompts))
    if json_out:
        write_results(json_out, results, machine_info("cpu"))
    print_table(results)
    print("recovery per kill (s): " + ", ".join(f"{k['role']} {k['recovery_s']}" for k in results[2]["kills"]))
    return results


def _entry(name, value, unit, target=None, met=None, baseline=None, **extra) -> dict:
    ratio = value / baseline if baseline and value is not None else None
    return dict(name=f"chaos/{name}", value=value, unit=unit, baseline_value=baseline, ratio=ratio, target=target,
                met=met, **extra)


def _figures(phases: Phases, killer: Killer, topo, acct, stream, t0: float, kills: int, spares: int = 0) -> list[dict]:
    """Recoveries, the books (nothing lost, nothing used twice, no partial group) and throughput per phase. With warm
    spares, the recovery and throughput targets apply (RELIABILITY.md); without, the figures are the baseline."""
    per_kill = [{"role": k["role"], "at_s": round(k["t"] - t0, 2),
                 "recovery_s": None if (r := recovery_s(topo, k)) is None else round(r, 2)} for k in killer.kills]
    recovered = [k["recovery_s"] for k in per_kill if k["recovery_s"] is not None]
    drawn = stream.position
    lost = drawn - (acct.used + acct.stale + acct.dropped + acct.unfinished)
    duplicates = len(phases.used_ids) - len(set(phases.used_ids))
    books = dict(drawn=drawn, generated=acct.generated, used=acct.used, stale=acct.stale, dropped=acct.dropped,
                 requeued=acct.requeued, unfinished=acct.unfinished, failures=dict(acct.failures))
    # The first step waits for the actors to start; the baseline window opens when it ends.
    before = phases.samples_per_s(phases.steps[0][0], "kills_start")
    during = phases.samples_per_s("kills_start", "recovered")
    after = phases.samples_per_s("recovered", phases.steps[-1][0])
    median, worst = (statistics.median(recovered), max(recovered)) if recovered else (None, None)
    kept = during / before if during and before else None

    def target(value, bound, below=True):  # (target, met) where spares are on, else no target
        if not spares:
            return dict(target=None, met=None)
        return dict(target=bound, met=None if value is None else (value <= bound if below else value >= bound))
    return [
        _entry("kills", len(killer.kills), "kills", target=kills, met=len(killer.kills) >= kills,
               rollout=sum(k["role"] == "rollout" for k in per_kill),
               reward=sum(k["role"] == "reward" for k in per_kill)),
        _entry("recovered", len(recovered), "kills", target=len(per_kill), met=len(recovered) == len(per_kill)),
        _entry("recovery_median", median, "s", kills=per_kill, **target(median, SPARES_MEDIAN_S)),
        _entry("recovery_max", worst, "s", **target(worst, SPARES_MAX_S)),
        _entry("groups_lost", lost, "groups", target=0, met=lost == 0, books=books),
        _entry("groups_duplicated", duplicates, "groups", target=0, met=duplicates == 0),
        _entry("partial_groups_at_learner", phases.partial, "groups", target=0, met=phases.partial == 0),
        _entry("samples_per_s_before", before, "samples/s"),
        _entry("samples_per_s_during", during, "samples/s", baseline=before),
        _entry("throughput_kept_during_kills", kept, "ratio", **target(kept, SPARES_KEPT, below=False)),
        _entry("samples_per_s_after", after, "samples/s", baseline=before),
    ]


def compare(world: str, settings: list[int], json_out: str | None = None, **kw) -> list[dict]:
    """The chaos run once per number of warm spares, in one call (same machine, same load, back to back), each
    setting's figures named ``chaos/spares=K/...``, and the recovery median and throughput kept of each setting
    against the first one's."""
    runs = {k: run(world, spares=k, **kw) for k in settings}
    results = [dict(r, name=r["name"].replace("chaos/", f"chaos/spares={k}/", 1)) for k, rs in runs.items() for r in rs]
    first = {r["name"]: r for r in runs[settings[0]]}
    for k in settings[1:]:
        this = {r["name"]: r for r in runs[k]}
        for name in ("recovery_median", "throughput_kept_during_kills"):
            a, b = this[f"chaos/{name}"]["value"], first[f"chaos/{name}"]["value"]
            results.append(_entry(f"spares={k}_against_{settings[0]}/{name}", a, first[f"chaos/{name}"]["unit"],
                                  baseline=b))
    if json_out:
        write_results(json_out, results, machine_info("cpu"))
    print_table(results)
    return results


def _spares(text: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--spares must be integers separated by commas, got {text!r}") from None
    if any(k < 0 for k in out) or len(set(out)) != len(out):
        raise argparse.ArgumentTypeError(f"--spares must be distinct numbers >= 0, got {text!r}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="divcfg bench chaos", description=__doc__.split("\n")[0].split(": ", 1)[1])
    ap.add_argument("--world", default="worlds/tiny", help="tiny world directory (built there if missing)")
    ap.add_argument("--actors", type=int, default=2, help="rollout actors")
    ap.add_argument("--reward-workers", type=int, default=1)
    ap.add_argument("--spares", type=_spares, default=[0],
                    help="warm spares per role (actors.spares, reward.spares); several, e.g. 0,1, run one after the "
                         "other in this call and are compared against the first")
    ap.add_argument("--kills", type=int, default=10, help="kills to make (>= 1)")
    ap.add_argument("--kill-every", type=float, default=3.0, help="seconds between kills (> 0)")
    ap.add_argument("--steps-before", type=int, default=6, help="learner steps before the first kill (>= 2)")
    ap.add_argument("--steps-after", type=int, default=6, help="learner steps after the last recovery (>= 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-minutes", type=float, default=20.0, help="stop the run after this long, whatever happened")
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args(argv)
    for name, low in (("actors", 1), ("reward_workers", 1), ("kills", 1), ("steps_before", 2), ("steps_after", 1)):
        if getattr(args, name) < low:
            ap.error(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(args, name)}")
    if args.kill_every <= 0:
        ap.error(f"--kill-every must be > 0, got {args.kill_every}")
    kw = dict(actors=args.actors, reward_workers=args.reward_workers, kills=args.kills, kill_every=args.kill_every,
              steps_before=args.steps_before, steps_after=args.steps_after, seed=args.seed,
              max_minutes=args.max_minutes)
    if len(args.spares) == 1:
        results = run(args.world, spares=args.spares[0], json_out=args.json_out, **kw)
    else:
        results = compare(args.world, args.spares, json_out=args.json_out, **kw)
    return 0 if all(r["met"] is not False for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
