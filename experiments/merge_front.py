"""The A/B for claim 4a: is the merges' front short of the CFG front because it had only λ = 0.5 points? (RESULTS.md
"Timed re-run: β ∈ {0, 15} × 3 seeds, λ ∈ {0.25, 0.5, 0.75} (and the claim-4a A/B)")

    python -m divcfg.experiments.merge_front runs/music_cos_eval_r/eval.json --lams 0.5 --lams 0.25,0.5,0.75

It reads one ``divcfg eval`` report that measured merges at several λ and recomputes the merges' front from each set
of λ given, against the same CFG front, on the report's own bootstrap resample and the same reference point as
``eval.json`` (every row's means, so that a subset of the merges is measured on the same axes). For each decider (the
scorer, and each independent judge that scored every run) it prints the hypervolume difference merge − CFG with its
95% interval, and the paired difference between the first λ set and each other one. No model is run.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from divcfg.reward import intervals as iv
from divcfg.reward.eval_report import scores


def _family(rows: list[dict], metric: str) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(scores(r, metric), scores(r, "diversity")) for r in rows]


def merge_front_ab(report: dict, lam_sets: list[tuple[float, ...]], metric: str = "adherence") -> list[dict]:
    """Per λ set: the merges' hypervolume minus the CFG front's (estimate, 95% interval), and its paired change
    against the first set. ``metric`` is the adherence on the fronts' first axis (a judge's, or the scorer's)."""
    rows, boot = report["rows"], report["bootstrap"]
    idx = iv.bootstrap_indices(boot["prompts"], boot["rounds"], boot["seed"])
    ref = iv.reference_point(np.asarray([[r[metric], r["diversity"]] for r in rows], dtype=float))
    cfg = _family([r for r in rows if r["kind"] == "cfg"], metric)
    cfg_draws, cfg_hv = iv.hypervolume_draws(cfg, idx, ref), iv.family_hypervolume(cfg, ref)
    merges = [r for r in rows if r["kind"] == "merge"]
    measured = sorted({r["lam"] for r in merges})
    out, first = [], None
    for lams in lam_sets:
        members = [r for r in merges if r["lam"] in lams]
        missing = sorted(set(lams) - set(measured))
        if missing or not members:
            raise ValueError(f"--lams {','.join(map(str, lams))}: the report has no merge at λ = "
                             f"{', '.join(map(str, missing or lams))}; it measured λ = {measured}")
        fam = _family(members, metric)
        draws = iv.hypervolume_draws(fam, idx, ref) - cfg_draws
        lo, hi = iv.percentile_interval(draws)
        row = {"lams": list(lams), "rows": [r["name"] for r in members], "metric": metric,
               "merge_minus_cfg": iv.family_hypervolume(fam, ref) - cfg_hv, "lo": lo, "hi": hi}
        if first is None:
            first = (row["merge_minus_cfg"], draws)
        else:
            dlo, dhi = iv.percentile_interval(draws - first[1])
            row["change_vs_first"] = {"estimate": row["merge_minus_cfg"] - first[0], "lo": dlo, "hi": dhi}
        out.append(row)
    return out


def deciders(report: dict) -> dict[str, str]:
    """The scorer and every independent judge the report decided claims by, each with its adherence metric."""
    used = {"scorer": "adherence"}
    for name, st in report.get("judges", {}).items():
        if name != "scorer" and st.get("status") == "used":
            used[name] = st["metric"]
    return used


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m divcfg.experiments.merge_front", description=__doc__.split("\n")[0])
    p.add_argument("report", type=Path, help="an eval.json with merges at several λ")
    p.add_argument("--lams", action="append", required=True,
                   help="a set of λ, comma-separated; give it twice or more (the first is the baseline)")
    p.add_argument("--out", type=Path, help="write the figures here as JSON")
    a = p.parse_args(argv)
    try:
        lam_sets = [tuple(float(x) for x in s.split(",")) for s in a.lams]
    except ValueError as e:
        p.error(f"--lams {a.lams}: {e}")
    if not a.report.is_file():
        p.error(f"{a.report}: no such eval.json")
    try:
        report = json.loads(a.report.read_text())
        result = {name: merge_front_ab(report, lam_sets, metric) for name, metric in deciders(report).items()}
    except json.JSONDecodeError as e:
        print(f"{a.report}: not JSON ({e}); give the eval.json that `divcfg eval` wrote", file=sys.stderr)
        return 2
    except KeyError as e:
        print(f"{a.report}: no {e} in it; give the eval.json that `divcfg eval` wrote", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"{a.report}: {e}", file=sys.stderr)
        return 2
    for name, rows in result.items():
        for r in rows:
            ch = r.get("change_vs_first")
            tail = f"  vs first {ch['estimate']:+.5f} [{ch['lo']:+.5f}, {ch['hi']:+.5f}]" if ch else ""
            print(f"{name:7s} λ {','.join(map(str, r['lams'])):16s} merge − cfg {r['merge_minus_cfg']:+.5f} "
                  f"[{r['lo']:+.5f}, {r['hi']:+.5f}]{tail}")
    if a.out:
        a.out.write_text(json.dumps({"report": str(a.report), "bootstrap": report["bootstrap"], "by_decider": result},
                                    indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
