"""``divcfg eval``: quality and diversity of models on the held-out prompts, and the Pareto plot.

Rows: the base model at a sweep of guidance scales (the CFG baseline), any finetuned or merged checkpoints without
CFG, and optionally a λ sweep merged on the fly from two checkpoints. Diversity is measured with the *held-out*
embedder; the reward embedder's figure is reported beside it, and a big gap between them flags reward hacking.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

import torch

COLUMNS = ["name", "kind", "guidance_scale", "lam", "adherence", "teacher_loglik", "diversity",
           "diversity_reward_embedder", "forward_passes_per_token", "frames_per_s"]


def evaluate(world_dir: str, models: list[str], gammas: list[float], merge: tuple[str, str] | None,
             lams: list[float], prompts: int, samples: int, seed: int, progress: bool = True) -> list[dict]:
    from tqdm import tqdm

    from divcfg.common.checkpoint import load_policy, load_weights, policy_family
    from divcfg.common.policy import AudioTokenPolicy, PolicyConfig
    from divcfg.common.tokens import read_tokens
    from divcfg.common.world_dir import World
    from divcfg.common.merge import merge_state_dicts
    from divcfg.reward.judges import Judges, measure_policy

    if samples < 2:
        raise ValueError(f"--samples must be >= 2 to measure diversity, got {samples}")
    for path in [*models, *(merge or ())]:
        if policy_family(path) == "musicgen":
            raise ValueError(f"{path} is a MusicGen checkpoint: divcfg eval compares checkpoints with the world's own "
                             f"base model, codec and clip length, so it can't take MusicGen yet. Listen with "
                             f"`divcfg sample {path}`; a run's summary.json has its KL, diversity and adherence")
    world = World(world_dir)
    if not world.is_built():
        raise FileNotFoundError(f"no complete world in {world_dir}; run `divcfg world build` first")
    judges = Judges.load(world_dir)
    base = load_policy(world.path("base")).eval()
    heldout = world.heldout_prompts()[:prompts]
    n_frames = read_tokens(world.path("heldout.parquet")).codes.shape[2]
    jobs = [("base", "cfg", g, None, lambda: base) for g in gammas]
    for path in models:
        jobs.append((Path(path).name if Path(path).name != "student" else Path(path).parent.name, "model", 1.0, None,
                     lambda path=path: load_policy(path).eval()))
    if merge:
        sa, ca, _ = load_weights(merge[0], "policy")
        sb, _, _ = load_weights(merge[1], "policy")

        def merged(lam):
            policy = AudioTokenPolicy(PolicyConfig(**ca))
            policy.load_state_dict(merge_state_dicts(sa, sb, lam))
            return policy.eval()
        jobs += [(f"merge λ={lam:g}", "merge", 1.0, lam, lambda lam=lam: merged(lam)) for lam in lams]
    rows = []
    for name, kind, gamma, lam, make in tqdm(jobs, desc="eval", disable=not progress):
        m = measure_policy(make(), judges, heldout, samples, gamma, n_frames, seed=seed, teacher=base,
                           teacher_scale=3.0)
        rows.append({"name": name, "kind": kind, "guidance_scale": gamma, "lam": lam, **m})
    return rows


def pareto_plot(rows: list[dict], path: str | os.PathLike) -> None:
    """Adherence (x) against diversity (y): the CFG sweep as a line, models and merges as labelled points."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    cfg = sorted((r for r in rows if r["kind"] == "cfg"), key=lambda r: r["guidance_scale"])
    if cfg:
        ax.plot([r["adherence"] for r in cfg], [r["diversity"] for r in cfg], "o-", color="gray",
                label="base + CFG (γ sweep)")
        for r in cfg:
            ax.annotate(f"γ={r['guidance_scale']:g}", (r["adherence"], r["diversity"]), fontsize=7,
                        textcoords="offset points", xytext=(3, 3))
    merges = sorted((r for r in rows if r["kind"] == "merge"), key=lambda r: r["lam"])
    if merges:
        ax.plot([r["adherence"] for r in merges], [r["diversity"] for r in merges], "s--", color="tab:blue",
                label="merged (λ sweep)")
        for r in merges:
            ax.annotate(f"λ={r['lam']:g}", (r["adherence"], r["diversity"]), fontsize=7, color="tab:blue",
                        textcoords="offset points", xytext=(3, -9))
    for r in rows:
        if r["kind"] == "model":
            ax.plot(r["adherence"], r["diversity"], "D", color="tab:red")
            ax.annotate(r["name"], (r["adherence"], r["diversity"]), fontsize=8, color="tab:red",
                        textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel("quality: prompt adherence (scorer)")
    ax.set_ylabel("diversity: 1 − mean pairwise cosine (held-out embedder)")
    ax.set_title("quality–diversity front")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(rows: list[dict], out: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    out.mkdir(parents=True, exist_ok=True)
    with open(out / "eval.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    (out / "eval.json").write_text(json.dumps({"rows": rows}, indent=2))
    pareto_plot(rows, out / "pareto.png")
    import matplotlib.image as mpimg
    writer = SummaryWriter(str(out / "tb"))
    img = torch.from_numpy(mpimg.imread(out / "pareto.png")[..., :3]).permute(2, 0, 1)
    writer.add_image("eval/pareto", img, 0)
    header = "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n"
    body = "".join("| " + " | ".join(_fmt(r.get(c)) for c in COLUMNS) + " |\n" for r in rows)
    writer.add_text("eval/table", header + body, 0)
    writer.close()


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="divcfg eval", description=__doc__.split("\n")[0].split(":", 1)[1].strip())
    ap.add_argument("models", nargs="*", help="finetuned or merged checkpoints (evaluated without CFG)")
    ap.add_argument("--world", default="worlds/small", help="world directory (base model, judges, prompts)")
    ap.add_argument("--gammas", default="1,1.5,2,3,4,5", help="guidance scales of the base-model sweep")
    ap.add_argument("--merge", nargs=2, metavar=("A", "B"), help="build a λ sweep from these two checkpoints")
    ap.add_argument("--lams", default="0,0.25,0.5,0.75,1", help="λ values for --merge")
    ap.add_argument("--prompts", type=int, default=24, help="held-out prompts")
    ap.add_argument("--samples", type=int, default=4, help="samples per prompt (G >= 4 recommended)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="output directory: eval.csv, eval.json, pareto.png, tb/")
    args = ap.parse_args(argv)
    try:
        gammas = [float(g) for g in args.gammas.split(",") if g]
        lams = [float(x) for x in args.lams.split(",") if x]
        if any(g < 0 for g in gammas):
            raise ValueError(f"--gammas must be >= 0, got {gammas}")
        rows = evaluate(args.world, args.models, gammas, tuple(args.merge) if args.merge else None, lams,
                        args.prompts, args.samples, args.seed)
        write_outputs(rows, Path(args.out))
    except (ValueError, FileNotFoundError) as e:
        print(f"divcfg eval: error: {e}", file=sys.stderr)
        return 2
    for r in rows:
        print(f"{r['name']:>14}  γ={r['guidance_scale']:<4g} adherence {r['adherence']:.3f}  "
              f"diversity {r['diversity']:.4f}  (reward emb {r['diversity_reward_embedder']:.4f})  "
              f"{r['frames_per_s']:.0f} frames/s")
    print(f"wrote {args.out}/eval.csv, eval.json, pareto.png")
    return 0
