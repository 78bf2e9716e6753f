"""One evaluation measurement with the independent judges in worker processes against in this process.

What is timed, alternately per repeat after one untimed call each, on a music world (its base model at γ = 3, its
first ``--prompts`` held-out prompts × ``--samples``): :func:`divcfg.reward.judges.measure_policy` (generation,
decoding, both embedders, the scorer, the teacher's log-likelihood, Basic Pitch, madmom, FAD and KAD), once with
Basic Pitch and madmom in a :class:`divcfg.reward.judge_pool.JudgePool` of ``--workers`` processes and once in this
process; and the two judges alone on the same decoded clips, both ways. Every pooled figure is checked equal to the
in-process one (``same_figures``).

Entries: ``judges/measurement_s`` (pooled; baseline: in this process; ratio = in-process seconds / pooled seconds,
so > 1 is faster) and ``judges/judging_clips_per_s`` (the judges alone; ratio pooled over in-process clips/s).

Run: ``divcfg bench judges --world worlds/music_small --prompts 24 --samples 4 --workers 2 --repeats 3 --threads 2
--json bench/results/judges_cpu.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace

import numpy as np
import torch

from divcfg.bench.common import interleaved_median_times, machine_info, print_table, write_results


def _figures(measurement: dict) -> str:
    """A measurement's figures as comparable text: every field but the generation's speed (NaN prints as NaN)."""
    return json.dumps({k: v for k, v in measurement.items() if k != "frames_per_s"}, sort_keys=True)


def _time_both(base, here, pooled, heldout: list[str], samples: int, n_frames: int, repeats: int):
    """Alternately timed: one measurement by ``pooled`` and by ``here`` judges, and the two judges alone on one set of
    decoded clips; returns the timings and each side's measurement and judged figures."""
    from divcfg.reward.judges import measure_policy

    clips = [p for p in heldout for _ in range(samples)]
    out, judged = {}, {}

    def measure(judges, key):
        def call():
            out[key] = measure_policy(base, judges, heldout, samples, 3.0, n_frames, seed=0, teacher=base)
        return call

    measure(here, "here")()
    wav = here.decode(base.generate(base.encode_condition(clips), n_frames, guidance_scale=3.0,
                                    generator=torch.Generator().manual_seed(0)).codes)

    def judge(judges, key):
        def call():
            judged[key] = judges.independent_adherence(wav, clips)
        return call

    timed = interleaved_median_times({"pooled": measure(pooled, "pooled"), "here": measure(here, "here"),
                                      "judge_pooled": judge(pooled, "pooled"), "judge_here": judge(here, "here")},
                                     repeats)
    return timed, out, judged


def run(world: str, prompts: int = 24, samples: int = 4, workers: int = 2, repeats: int = 3, threads: int = 0,
        json_out: str | None = None, verbose: bool = True) -> list[dict]:
    from divcfg.common.data.tokens import read_tokens
    from divcfg.common.data.world_dir import World
    from divcfg.model.loaders import load_policy
    from divcfg.reward.judge_pool import POOLED, JudgePool
    from divcfg.reward.judges import Judges

    if prompts < 1 or samples < 2 or workers < 1 or repeats < 1:
        raise ValueError(f"--prompts, --workers and --repeats must be >= 1 and --samples >= 2, got {prompts}, "
                         f"{workers}, {repeats}, {samples}")
    if threads:
        torch.set_num_threads(threads)
    w = World(world)
    if not w.is_built():
        raise FileNotFoundError(f"no complete world in {world}; run `divcfg world build --kind music` first")
    base = load_policy(w.path("base")).eval()
    here = Judges.load(world)
    if not any(n in POOLED for n in here.independent):
        raise ValueError(f"the world {world} has no Basic Pitch or madmom judge to pool (a music world has both)")
    heldout = w.heldout_prompts()[:prompts]
    n_frames = read_tokens(w.path("heldout.parquet")).codes.shape[2]
    clips = [p for p in heldout for _ in range(samples)]
    with JudgePool(world, workers) as pool:
        timed, out, judged = _time_both(base, here, replace(here, pool=pool), heldout, samples, n_frames, repeats)
    same = _figures(out["pooled"]) == _figures(out["here"]) and all(
        np.array_equal(judged["pooled"][n], judged["here"][n], equal_nan=True) for n in judged["here"])
    extra = {"world": world, "prompts": prompts, "samples": samples, "clips": len(clips), "workers": workers,
             "judges": sorted(here.independent), "threads": torch.get_num_threads(), "repeats": repeats,
             "same_figures": same, **{f"{k}_s": v[1] for k, v in timed.items()}}
    t = {k: v[0] for k, v in timed.items()}
    results = [dict(name="judges/measurement_s", value=t["pooled"], unit="s", baseline_value=t["here"],
                    ratio=t["here"] / t["pooled"], target=None, met=None, **extra),
               dict(name="judges/judging_clips_per_s", value=len(clips) / t["judge_pooled"], unit="clips/s",
                    baseline_value=len(clips) / t["judge_here"], ratio=t["judge_here"] / t["judge_pooled"],
                    target=None, met=None, **extra)]
    if verbose:
        print_table(results)
        print(f"pooled figures equal to in-process ones: {same}")
    if json_out:
        write_results(json_out, results, machine_info("cpu"))
    if not same:
        raise RuntimeError("the pooled judges' figures differ from the in-process ones")
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="divcfg bench judges", description=__doc__.split("\n")[0])
    ap.add_argument("--world", required=True, help="a music world (it has the Basic Pitch and madmom judges)")
    ap.add_argument("--prompts", type=int, default=24, help="held-out prompts per measurement")
    ap.add_argument("--samples", type=int, default=4, help="samples per prompt")
    ap.add_argument("--workers", type=int, default=2, help="judge worker processes")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats, the sides alternating")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads of this process (0: as set)")
    ap.add_argument("--json", dest="json_out", metavar="OUT", default=None, help="write results JSON here")
    args = ap.parse_args(argv)
    try:
        run(args.world, args.prompts, args.samples, args.workers, args.repeats, args.threads, args.json_out)
    except (ValueError, OSError, ImportError, RuntimeError) as e:
        print(f"divcfg bench judges: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
