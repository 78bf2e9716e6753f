"""Benchmark ``soak``: a long tiny-world training run with kills and resizes, watching memory for slow leaks.

The run is the training loop of ``divcfg train`` (:class:`divcfg.job.scheduler.Scheduler`, async, train's default
method settings, the pool's size read from the job's control actor as ``divcfg scale`` sets it) on a local Ray
instance. While it trains for ``--minutes``:
  - every ``--kill-every`` seconds a random member that is up (rollout actor or reward worker) is killed;
  - every ``--resize-every`` seconds the pool's target goes 1 -> 3 or 3 -> 1 actors through the control actor
    (:func:`divcfg.job.control.set_target`, what ``divcfg scale`` calls);
  - every ``--sample-every`` seconds it samples the RSS of the driver (which holds the learner), of every process of
    this Ray instance (members, raylet, GCS server) and the object store's bytes in use (the raylet's store stats:
    what ``ray memory --stats-only`` prints).
At the end: the books (groups lost = 0, generated = used + stale + dropped), and the growth of every long-lived
process from the ``--warmup`` mark to the end, the median of its last 3 samples over the median of its first 3
after the mark, and of the object store's floor, its minimum over the last minute of samples over its minimum over
the first minute after the mark (target <= 1.10 for each). Samples go to ``--json``, the plot to ``--png``.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import threading
import time

import numpy as np
import psutil

from divcfg.bench.chaos import _setup
from divcfg.bench.common import machine_info, print_table, write_results
from divcfg.job.control import NAMESPACE, control_name, set_target, start_control
from divcfg.job.scheduler import Scheduler

GROWTH_TARGET = 1.10
STORE_WINDOW = 6  # the object store's floor is taken over this many samples (a minute at the default 10 s)
RUN_NAME = "soak"
MEMBERS = ("ray::RolloutWorker", "ray::RewardWorker")  # process titles of the members Ray runs


class Every(threading.Thread):
    """Calls ``fn()`` every ``period`` seconds until halted or until ``until`` (``perf_counter`` time); an error ends
    the thread and is kept in ``error``."""

    def __init__(self, period: float, fn, first: float | None = None, until: float = float("inf")):
        super().__init__(daemon=True)
        self.period, self.fn, self.first, self.until = period, fn, period if first is None else first, until
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            if self.halt.wait(self.first):
                return
            while time.perf_counter() < self.until:
                self.fn()
                if self.halt.wait(self.period):
                    return
        except BaseException as e:  # reported at the end of the run rather than lost with the thread
            self.error = e


class Chaos:
    """Kills (a random member that is up) and resizes (1 <-> 3 actors through the control actor), with a log."""

    def __init__(self, topo, t0: float, seed: int):
        self.topo, self.t0, self.rng = topo, t0, random.Random(seed)
        self.events: list[dict] = []

    def kill(self) -> None:
        import ray  # start-up: ray takes ~1.1 s to import; the plain classes here run without it
        members = [(m, "rollout") for m in list(self.topo.actors)] + [(m, "reward") for m in list(self.topo.rewards)]
        up = [(m, role) for m, role in members if m in self.topo.ready_at]
        if up:
            member, role = self.rng.choice(up)
            ray.kill(member, no_restart=True)
            self.events.append({"t": round(time.perf_counter() - self.t0, 2), "kill": role})

    def resize(self) -> None:
        import ray  # start-up: ray takes ~1.1 s to import; the plain classes here run without it

        now = ray.get(ray.get_actor(control_name(RUN_NAME), namespace=NAMESPACE).get_target.remote())
        set_target(RUN_NAME, 3 if now == 1 else 1)
        self.events.append({"t": round(time.perf_counter() - self.t0, 2), "target": 3 if now == 1 else 1})


class Sampler:
    """RSS of the driver and of every process under it (this Ray instance), and the object store's use."""

    def __init__(self, t0: float):
        import ray  # start-up: ray takes ~1.1 s to import; the plain classes here run without it
        self.t0, self.gcs = t0, ray.get_runtime_context().gcs_address
        self.samples: list[dict] = []

    def __call__(self) -> None:
        me = psutil.Process()
        rss = {f"driver:{me.pid}": me.memory_info().rss}
        for p in me.children(recursive=True):
            try:
                rss[f"{_label(p.cmdline())}:{p.pid}"] = p.memory_info().rss
            except psutil.Error:  # died between the listing and the read (a killed member)
                continue
        self.samples.append({"t": time.perf_counter() - self.t0, "rss": rss, "object_store": self.store_bytes()})

    def store_bytes(self) -> int | None:
        # The raylet's store stats, as `ray memory --stats-only` reads them; the state API's object summary needs
        # the dashboard, which the job does not start. Asked of this instance's GCS: others may run on the machine.
        from ray._private.internal_api import get_memory_info_reply, get_state_from_address
        try:
            return int(get_memory_info_reply(get_state_from_address(self.gcs)).store_stats.object_store_bytes_used)
        except Exception:  # a private API: a sample without the store figure rather than a failed run
            return None


def _label(cmdline: list[str]) -> str:
    """``ray::RolloutWorker``, ``ray::RewardWorker``, ``raylet``, ``gcs_server``, ... from a process's command line."""
    if not cmdline:
        return "?"
    first = cmdline[0].split()[0] if cmdline[0] else "?"
    if first.startswith("ray::"):
        return first.split(".")[0]
    name = os.path.basename(first)
    if name.startswith("python") and len(cmdline) > 1:
        name = os.path.basename(next((c for c in cmdline[1:] if c.endswith(".py")), cmdline[1]))
    return name


def growth(samples: list[dict], mark_s: float) -> dict[str, dict]:
    """Per series alive from the mark to the last sample (every process still up at the end that was up at the
    mark, and the object store): a process's median of its last 3 samples over the median of its first 3 at or
    after the mark; the object store's floor (minimum) over its last ``STORE_WINDOW`` samples over its floor over
    the first ``STORE_WINDOW`` after the mark."""
    after = [s for s in samples if s["t"] >= mark_s]
    if len(after) < 2:
        return {}
    out = {}
    for key in set(after[0]["rss"]) & set(after[-1]["rss"]):
        vals = [s["rss"][key] for s in after if key in s["rss"]]
        out[key] = _ratio(statistics.median(vals[:3]), statistics.median(vals[-3:]), "median of 3")
    if all(s["object_store"] is not None for s in after):
        # The store holds the newest weights plus the snapshots still on their way to actors (one to nine in the 30-minute run),
        # so any one sample moves in whole snapshots. Objects that leak stay, and raise the floor under those
        # swings; a median of 3 samples instead compares how many snapshots happened to be in flight.
        vals = [s["object_store"] for s in after]
        out["object_store"] = _ratio(min(vals[:STORE_WINDOW]), min(vals[-STORE_WINDOW:]),
                                     f"minimum of {STORE_WINDOW}")
    return out


def _ratio(start: float, end: float, statistic: str) -> dict:
    ratio = end / start if start else (1.0 if not end else None)
    return {"start_mib": start / 2**20, "end_mib": end / 2**20, "ratio": ratio, "statistic": statistic}


def plot(samples: list[dict], events: list[dict], mark_s: float, path: str) -> None:
    import matplotlib  # start-up: matplotlib takes ~1.8 s to import, for plots only
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # start-up: matplotlib takes ~1.8 s to import, for plots only
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    keys = sorted({k for s in samples for k in s["rss"]})
    for key in keys:
        pts = [(s["t"] / 60, s["rss"][key] / 2**20) for s in samples if key in s["rss"]]
        # Coloured and named: processes up for most of the run (driver, raylet, GCS, ...); grey: members and the
        # short-lived worker processes Ray starts for them.
        lasting = len(pts) >= len(samples) / 2 and not key.startswith(MEMBERS)
        ax1.plot(*zip(*pts), color=None if lasting else "0.7", lw=1.6 if lasting else 0.8,
                 label=key.rsplit(":", 1)[0] if lasting else None)
    ax1.plot([], [], color="0.7", label="members and short-lived workers, one line each")
    ax1.set_ylabel("RSS (MiB)")
    ax1.legend(fontsize=7, loc="center right", ncol=2)
    pts = [(s["t"] / 60, s["object_store"] / 2**20) for s in samples if s["object_store"] is not None]
    if pts:
        ax2.plot(*zip(*pts), color="C3")
    ax2.set_ylabel("object store in use (MiB)")
    ax2.set_xlabel("minutes")
    for ax in (ax1, ax2):
        ax.axvline(mark_s / 60, color="k", ls=":", lw=1)
        for e in events:
            ax.axvline(e["t"] / 60, color="C1" if "kill" in e else "C2", lw=0.4, alpha=0.6)
    ax1.set_title("soak: RSS and object store (orange: kills, green: resizes, dotted: warm-up mark)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


class Clock:
    """The loop's ``on_step``: records each step's samples and the prompts used, and ends the run at ``end``."""

    def __init__(self, end: float, group_size: int):
        self.end, self.group_size = end, group_size
        self.steps, self.used_ids, self.partial = 0, [], 0

    def __call__(self, i, batch, metrics, acct) -> bool:
        self.steps += 1
        self.used_ids.extend(int(p) for p in np.unique(batch.prompt_id))
        self.partial += sum(len(g) != self.group_size for g in batch.groups())
        return time.perf_counter() >= self.end


def run(world: str, minutes: float = 30.0, kill_every: float = 30.0, resize_every: float = 120.0,
        sample_every: float = 10.0, warmup_minutes: float = 5.0, seed: int = 0, json_out: str | None = None,
        png_out: str | None = None) -> list[dict]:
    import ray  # start-up: ray takes ~1.1 s to import; the plain classes here run without it


    load = {"start": os.getloadavg()[0]}
    # One actor and one reward worker to start; room on the local instance for 3 actors (0.5 CPU each).
    learner, topo, stream, algo, learner_cfg = _setup(world, 1, 1, seed)
    control = start_control(RUN_NAME, 1)
    t0 = time.perf_counter()
    chaos, sampler = Chaos(topo, t0, seed), Sampler(t0)
    clock = Clock(t0 + minutes * 60, algo.group_size)
    # Kills and resizes stop at the end time: the run ends after the next step, which a pool that is still
    # recovering from the last kill must be left to make.
    threads = [Every(sample_every, sampler, first=0.0), Every(kill_every, chaos.kill, until=clock.end),
               Every(resize_every, chaos.resize, until=clock.end)]
    for t in threads:
        t.start()
    scheduler = Scheduler(learner, topo, stream, batch_prompts=algo.batch_prompts, group_size=algo.group_size,
                          max_lag=algo.max_policy_lag, mode="async", max_role_failures=learner_cfg.max_role_failures,
                          target=lambda: ray.get(control.get_target.remote()))
    try:
        acct = scheduler.run(10**9, clock)
    finally:
        for t in threads:
            t.halt.set()
        for t in threads:
            t.join(timeout=60)
        sampler()  # the end state, after the drain
        ray.shutdown()
    load["end"] = os.getloadavg()[0]
    errors = [f"{type(t.error).__name__}: {t.error}" for t in threads if t.error is not None]
    results = _figures(sampler.samples, chaos.events, clock, acct, stream, warmup_minutes * 60, errors)
    results.append(dict(name="soak/run", value=time.perf_counter() - t0, unit="s", baseline_value=None, ratio=None,
                        target=None, met=None, minutes=minutes, kill_every_s=kill_every, resize_every_s=resize_every,
                        sample_every_s=sample_every, warmup_s=warmup_minutes * 60, steps=clock.steps,
                        loadavg_1m=load, events=chaos.events, samples=sampler.samples))
    if json_out:
        write_results(json_out, results, machine_info("cpu"))
    if png_out:
        plot(sampler.samples, chaos.events, warmup_minutes * 60, png_out)
    print_table(results[:-1])
    return results


def _figures(samples, events, clock: Clock, acct, stream, mark_s: float, errors: list[str]) -> list[dict]:
    """The books, the growth of every long-lived series, and the kills and resizes made."""
    lost = stream.position - (acct.used + acct.stale + acct.dropped + acct.unfinished)
    balanced = acct.generated == acct.used + acct.stale + acct.dropped
    duplicates = len(clock.used_ids) - len(set(clock.used_ids))
    books = dict(drawn=stream.position, generated=acct.generated, used=acct.used, stale=acct.stale,
                 dropped=acct.dropped, requeued=acct.requeued, unfinished=acct.unfinished,
                 failures=dict(acct.failures))
    grown = growth(samples, mark_s)
    worst = max((g["ratio"] for g in grown.values() if g["ratio"] is not None), default=None)

    def entry(name, value, unit, target=None, met=None, **extra):
        return dict(name=f"soak/{name}", value=value, unit=unit, baseline_value=None, ratio=None, target=target,
                    met=met, **extra)
    return [
        entry("kills", sum("kill" in e for e in events), "kills"),
        entry("resizes", sum("target" in e for e in events), "resizes"),
        entry("groups_lost", lost, "groups", target=0, met=lost == 0, books=books),
        entry("books_balanced", balanced, "bool", target=True, met=balanced),
        entry("groups_duplicated", duplicates, "groups", target=0, met=duplicates == 0),
        entry("partial_groups_at_learner", clock.partial, "groups", target=0, met=clock.partial == 0),
        entry("samples", len(samples), "samples"),
        entry("growth_max", worst, "ratio", target=GROWTH_TARGET,
              met=None if worst is None else worst <= GROWTH_TARGET, per_series=grown),
        entry("thread_errors", len(errors), "errors", target=0, met=not errors, errors=errors),
    ]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="divcfg bench soak", description=__doc__.split("\n")[0].split(": ", 1)[1])
    ap.add_argument("--world", default="worlds/tiny", help="tiny world directory (built there if missing)")
    ap.add_argument("--minutes", type=float, default=30.0, help="training time (> 0)")
    ap.add_argument("--kill-every", type=float, default=30.0, help="seconds between kills (> 0)")
    ap.add_argument("--resize-every", type=float, default=120.0, help="seconds between pool resizes 1 <-> 3 (> 0)")
    ap.add_argument("--sample-every", type=float, default=10.0, help="seconds between memory samples (> 0)")
    ap.add_argument("--warmup", type=float, default=5.0, help="minutes before growth is measured (>= 0)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", dest="json_out")
    ap.add_argument("--png", dest="png_out")
    args = ap.parse_args(argv)
    for name in ("minutes", "kill_every", "resize_every", "sample_every"):
        if getattr(args, name) <= 0:
            ap.error(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    if not 0 <= args.warmup < args.minutes:
        ap.error(f"--warmup must be >= 0 and less than --minutes ({args.minutes}), got {args.warmup}")
    results = run(args.world, args.minutes, args.kill_every, args.resize_every, args.sample_every, args.warmup,
                  args.seed, args.json_out, args.png_out)
    return 0 if all(r["met"] is not False for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
