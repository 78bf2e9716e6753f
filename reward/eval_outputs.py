"""What ``divcfg eval`` writes: ``eval.json`` (everything), ``eval.csv`` (the table), ``pareto.png`` (error bars
and fronts) and TensorBoard (scalars, the plot, the tables)."""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter

from divcfg.reward.eval_report import COLUMNS, JUDGE_METRICS, METRICS

STYLE = {"cfg": ("o", "gray"), "beta": ("D", "tab:red"), "merge": ("s", "tab:blue")}


def _clean(v):
    """JSON has no NaN: a figure that could not be computed is null."""
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def write_outputs(report: dict, out: Path) -> list[str]:
    """Write the evaluation to ``out``; returns the names written, in order (``tb/`` for the TensorBoard folder), so
    that what the user is told names only files that exist: training.png only when a trained row has curves."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "eval.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(report["rows"])
    (out / "eval.json").write_text(json.dumps(_clean(report), indent=2, ensure_ascii=False))
    written = ["eval.csv", "eval.json"]
    if report["hypervolume"]:  # a world with no adherence has no quality axis to plot
        pareto_plot(report, out / "pareto.png")
        written.append("pareto.png")
    else:
        (out / "pareto.png").unlink(missing_ok=True)  # an earlier evaluation's
    if training_plot(report, out / "training.png"):
        written.append("training.png")
    else:
        (out / "training.png").unlink(missing_ok=True)  # an earlier evaluation's, of other runs
    write_tensorboard(report, out)
    return [*written, "tb/"]


def _err(r: dict, m: str) -> list[float]:
    lo, hi, est = r[f"{m}_lo"], r[f"{m}_hi"], r[m]
    return [0.0, 0.0] if lo is None or math.isnan(lo) else [est - lo, hi - est]


def pareto_plot(report: dict, path: str | os.PathLike) -> None:
    """Adherence (x) against held-out diversity (y): every row with its 95% bootstrap interval on both axes, each
    family's Pareto front as the staircase it dominates, and the reference point of the hypervolumes."""
    import matplotlib  # start-up: matplotlib takes ~1.8 s to import, for plots only
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # start-up: matplotlib takes ~1.8 s to import, for plots only

    rows = {r["name"]: r for r in report["rows"]}
    ref = report["reference_point"]
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    placed = set()
    for fam, info in report["hypervolume"].items():
        marker, color = STYLE[fam]
        members = [rows[n] for n in info["rows"]]
        for r in members:
            ax.errorbar(r["adherence"], r["diversity"], xerr=np.array([_err(r, "adherence")]).T,
                        yerr=np.array([_err(r, "diversity")]).T, fmt=marker, color=color, ms=4, capsize=2, lw=0.8)
            ax.annotate(_label(r), (r["adherence"], r["diversity"]), fontsize=6, color=color,
                        textcoords="offset points", xytext=(3, 3))
            placed.add(r["name"])
        front = [rows[n] for n in info["front"]]  # adherence descending
        xs, ys = [], []
        prev_y = ref["diversity"]
        for r in front:
            xs += [r["adherence"], r["adherence"]]
            ys += [prev_y, r["diversity"]]
            prev_y = r["diversity"]
        if front:
            xs.append(ref["adherence"])
            ys.append(prev_y)
        ax.plot(xs, ys, "-", color=color, alpha=0.6, lw=1.2,
                label=f"{info['label']}: HV {info['estimate']:.4f} [{_n(info['lo'])}, {_n(info['hi'])}]")
    for r in report["rows"]:
        if r["name"] not in placed:
            ax.errorbar(r["adherence"], r["diversity"], xerr=np.array([_err(r, "adherence")]).T,
                        yerr=np.array([_err(r, "diversity")]).T, fmt="^", color="tab:green", ms=4, capsize=2)
            ax.annotate(_label(r), (r["adherence"], r["diversity"]), fontsize=6, color="tab:green",
                        textcoords="offset points", xytext=(3, 3))
    ax.plot(ref["adherence"], ref["diversity"], "k+", ms=8, label="hypervolume reference point")
    ax.set_xlabel(f"quality: prompt adherence ({adherence_by(report)}), 95% bootstrap interval")
    ax.set_ylabel("diversity: 1 − mean pairwise cosine (held-out embedder)")
    ax.set_title(f"quality–diversity fronts ({report['bootstrap']['prompts']} prompts, "
                 f"{report['bootstrap']['rounds']} bootstrap rounds)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def training_plot(report: dict, path: str | os.PathLike) -> bool:
    """Each trained row's training curves (diversity reward and KL to the CFG teacher, per step window): one thin
    line per seed and their mean. Returns False (and writes nothing) when no row's runs have curves."""
    rows = [r for r in report["rows"] if any(t.get("reward_curve") for t in r.get("train", []))]
    if not rows:
        return False
    import matplotlib  # start-up: matplotlib takes ~1.8 s to import, for plots only
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # start-up: matplotlib takes ~1.8 s to import, for plots only

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    colors = plt.get_cmap("viridis")(np.linspace(0, 0.9, len(rows)))
    for r, color in zip(rows, colors):
        for ax, key in zip(axes, ("reward_curve", "kl_curve")):
            curves = [t[key] for t in r["train"] if t.get(key)]
            n = min(len(c) for c in curves)
            x = [(w["first_step"] + w["last_step"]) / 2 for w in curves[0][:n]]
            for c in curves:
                ax.plot(x, [w["mean"] for w in c[:n]], color=color, lw=0.6, alpha=0.5)
            ax.plot(x, np.mean([[w["mean"] for w in c[:n]] for c in curves], axis=0), color=color, lw=2,
                    label=f"{r['name']} ({len(curves)} seeds)")
    axes[0].set_ylabel("diversity reward (reward embedder), window mean")
    axes[1].set_ylabel("KL to the CFG teacher (losses/distill_kl), window mean")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _label(r: dict) -> str:
    if r["kind"] == "cfg":
        return f"γ={r['guidance_scale']:g}"
    if r["kind"] == "merge":
        return f"λ={r['lam']:g}" + (f" β={r['beta']:g}" if r.get("beta") is not None else "")
    return r["name"] + (f" ×{r['seeds']}" if r["seeds"] > 1 else "")


def _n(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"


def write_tensorboard(report: dict, out: Path) -> None:
    """Scalars under ``eval/`` (one tag per row and figure, bounds beside), the plot, and the tables as text."""
    import matplotlib.image as mpimg  # start-up: matplotlib takes ~1.8 s to import, for plots only

    writer = SummaryWriter(str(out / "tb"))
    for r in report["rows"]:
        for m in METRICS + tuple(j for j in JUDGE_METRICS if j in r):  # every judge's adherence beside the scorer's
            for suffix in ("", "_lo", "_hi"):
                v = r[f"{m}{suffix}"]
                if v is not None and not math.isnan(v):
                    writer.add_scalar(f"eval/{m}{suffix}/{r['name']}", v, 0)
        for m in ("fad", "kad"):
            if r.get(m) is not None:
                writer.add_scalar(f"eval/{m}/{r['name']}", r[m], 0)
    for fam, info in report["hypervolume"].items():
        for k in ("estimate", "lo", "hi"):
            writer.add_scalar(f"eval/hypervolume_{k}/{fam}", info[k], 0)
    for name, d in report["hypervolume_difference"].items():
        for k in ("estimate", "lo", "hi"):
            writer.add_scalar(f"eval/hypervolume_difference_{k}/{name}", d[k], 0)
    for name in ("pareto", "training"):
        if (out / f"{name}.png").is_file():
            img = torch.from_numpy(mpimg.imread(out / f"{name}.png")[..., :3]).permute(2, 0, 1)
            writer.add_image(f"eval/{name}", img, 0)
    shown = [c for c in COLUMNS if c not in ("kind",)]
    header = "| " + " | ".join(shown) + " |\n|" + "---|" * len(shown) + "\n"
    body = "".join("| " + " | ".join(_fmt(r.get(c)) for c in shown) + " |\n" for r in report["rows"])
    writer.add_text("eval/table", header + body, 0)
    writer.add_text("eval/claims", claims_table(report), 0)
    writer.close()


def claims_table(report: dict) -> str:
    """Markdown: every claim as each decider (the scorer, then each judge that ran) decided it, then who was skipped."""
    deciders = [(adherence_by(report), report["claims"])] + list(report.get("claims_by_judge", {}).items())
    out = "| claim | decided by | statistic | estimate | 95% interval | threshold | verdict |\n|" + "---|" * 7 + "\n"
    out += "".join(f"| {c['id']} | {who} | {c['statistic']} | {_n(c['estimate'])} | [{_n(c['lo'])}, {_n(c['hi'])}] "
                   f"| {_n(c['threshold'])} | {c['verdict']} |\n" for who, cs in deciders for c in cs)
    skipped = [f"the {n} judge is skipped: {s['why']}" for n, s in report.get("judges", {}).items()
               if s["status"] == "skipped"]
    return out + "".join(f"\n{line}\n" for line in skipped)


def adherence_by(report: dict) -> str:
    """Whose adherence the headline figures and claims use: ``scorer``, or ``clap`` in a world without a scorer."""
    return report.get("judges", {}).get("scorer", {}).get("by", "scorer")


def _fmt(v) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.4g}"
    return "" if v is None else str(v)
