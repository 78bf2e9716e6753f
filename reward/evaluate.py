"""``divcfg eval``: quality and diversity of models on the held-out prompts, with intervals, fronts and the claims.

Rows: the base model at a sweep of guidance scales (the CFG baseline); checkpoint groups (several seeds of one
configuration, ``--group`` or ``--multirun``) and single checkpoints, sampled without CFG; the λ sweep of merges,
θ_q (the β = 0 group) with each β > 0 group, seed s with seed s; and optionally a λ sweep of two checkpoints
(``--merge``). Every row samples the same prompts with the same sampling seed, so per-prompt scores pair across rows
and a paired bootstrap over prompts (:mod:`divcfg.reward.intervals`) gives each figure and each difference its
interval. Diversity is measured with the *held-out* embedder; the reward embedder's figure is reported beside it,
and a big gap between them flags reward hacking. FAD and KAD (reward/fad.py, reward/kad.py) compare each row's clips
with the world's held-out real clips.

The base model is the world's own (``base/``), or for a folder world the user's MusicGen directory it was built for,
decoded by that MusicGen's EnCodec; adherence is the world's scorer's, or CLAP's where the world has no scorer.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from divcfg.common.data.tokens import read_tokens
from divcfg.common.data.world_dir import World
from divcfg.common.storage.checkpoint import load_weights
from divcfg.model.loaders import load_policy, policy_family
from divcfg.model.merge import merge_state_dicts
from divcfg.model.policy import AudioTokenPolicy
from divcfg.model.policy_config import PolicyConfig
from divcfg.reward.eval_groups import check_group, multirun_groups, parse_group, resolve_checkpoint, seed_of
from divcfg.reward.eval_outputs import write_outputs
from divcfg.reward.eval_report import summarize
from divcfg.reward.intervals import check_bootstrap
from divcfg.reward.judge_pool import POOLED, JudgePool, usable_cores
from divcfg.reward.judges import Judges, measure_policy
from divcfg.reward.kad import reference_bandwidth

DEFAULT_PROMPTS, DEFAULT_SAMPLES = 96, 8


@dataclass
class RowPlan:
    """One row to measure: one model per seed (one seed for the base model and single checkpoints)."""

    name: str
    """The row's name in the table, the plot and the claims (unique)."""
    kind: str
    """cfg (the base model with CFG), group (a configuration's seeds), model (one checkpoint) or merge."""
    guidance_scale: float = 1.0
    """γ the row samples with: the CFG sweep's; 1 (one forward pass, no CFG) for every trained or merged model."""
    lam: float | None = None
    """λ of a merge: θ = (1 − λ) θ_q + λ θ_d."""
    beta: float | None = None
    """β the row's model was trained with (a merge: its θ_d's), where its run says."""
    theta_d: str | None = None
    """For a merge of groups: the θ_d group it interpolates towards."""
    members: list[tuple[int, tuple, Callable]] = field(default_factory=list)
    """``(seed, key, make)``: ``make()`` builds the policy; a key already measured (λ = 0 or 1 of a merge is θ_q's or
    θ_d's own weights, bit for bit) reuses that measurement."""
    train: list[dict] = field(default_factory=list)
    """Each seed's run summary figures (KL at the end, wall time), where the checkpoint has them."""


def world_musicgen(world: World) -> str | None:
    """The MusicGen directory a folder world was built for (its base model, and the EnCodec its tokens come from),
    or None for a world with a base model of its own (``base/``: every other world, and a folder world built for a
    divcfg policy)."""
    try:
        info = world.info()
    except (OSError, ValueError):
        return None
    musicgen = info.get("kind") == "folder" and info.get("model_family", "musicgen") == "musicgen"
    return str(info["model"]) if musicgen and info.get("model") else None


def check_family(path: str, ckpt, musicgen: str | None, world_dir: str | Path) -> None:
    """A checkpoint is compared with the world's base model: a MusicGen student with the folder world of its own
    MusicGen, a divcfg student with a world's own base. Anything else is refused, naming both."""
    config = json.loads((ckpt.path / "config.json").read_text()).get("config", {})
    family = config.get("family", "divcfg")
    build = f"`divcfg world build --kind folder --model {config.get('musicgen')} ...`"
    if musicgen is None and family == "musicgen" and not World(world_dir).is_built():
        raise FileNotFoundError(f"no complete world in {world_dir}: {path} is a MusicGen checkpoint (of "
                                f"{config.get('musicgen')}), evaluated on a folder world built for its MusicGen "
                                f"({build})")
    if musicgen is None and family == "musicgen":
        raise ValueError(f"{path} is a MusicGen checkpoint (of {config.get('musicgen')}), and this world's base is a "
                         f"divcfg policy: evaluate it on a folder world built for its MusicGen ({build})")
    if musicgen is not None and family != "musicgen":
        raise ValueError(f"{path} is a divcfg policy, and this folder world's base is the MusicGen {musicgen}: "
                         f"evaluate it on the world it was trained on")
    if musicgen is not None and Path(str(config.get("musicgen"))).resolve() != Path(musicgen).resolve():
        raise ValueError(f"{path} finetunes the MusicGen {config.get('musicgen')}, and this folder world was built "
                         f"for {musicgen}: their codes and base model differ")


def plan_rows(world_dir, base: Callable, gammas, models, merge, lams, groups, merge_with,
              musicgen: str | None = None) -> list[RowPlan]:
    """Every row, with every check on the checkpoints done before any model is loaded or sampled. ``base()`` loads
    the world's base model; ``merge_with`` names the β > 0 groups merged with θ_q (None: all of them); ``musicgen``
    is the folder world's MusicGen directory (:func:`world_musicgen`), None for a world with its own base."""

    paths = [*models, *(merge or ()), *(c for cs in groups.values() for c in cs)]
    # Each checkpoint's files (config, summary, TensorBoard curves) are read once, here
    checkpoints = {path: resolve_checkpoint(path) for path in paths}
    for path in paths:
        check_family(path, checkpoints[path], musicgen, world_dir)
    plans = [RowPlan(f"base γ={g:g}", "cfg", g, members=[(0, ("base", g), base)]) for g in gammas]
    for path in models:
        c = checkpoints[path]
        name = Path(path).name if Path(path).name != "student" else Path(path).parent.name
        plans.append(RowPlan(name, "model", beta=c.beta, members=[(0, ("ckpt", str(c.path)), _loader(c.path))],
                             train=[c.train] if c.train else []))
    resolved = {}
    for name, ckpts in groups.items():
        resolved[name] = [checkpoints[p] for p in ckpts]
        check_group(name, resolved[name], world_dir)
        cs = resolved[name]
        plans.append(RowPlan(name, "group", beta=cs[0].beta, train=[c.train for c in cs if c.train],
                             members=[(seed_of(c, i), ("ckpt", str(c.path)), _loader(c.path))
                                      for i, c in enumerate(cs)]))
    if merge:
        plans += _merge_rows(checkpoints[merge[0]], checkpoints[merge[1]], lams)
    plans += _group_merge_rows(resolved, lams, merge_with)
    names = [p.name for p in plans]
    if len(set(names)) != len(names):
        raise ValueError(f"row names repeat: {sorted({n for n in names if names.count(n) > 1})}; rename a --group")
    return plans


def _loader(path):
    return lambda: load_policy(path).eval()


def _merged(a, b, lam: float):
    """A policy of ``(1 − λ) a + λ b``; the two must be one architecture (common.merge refuses otherwise)."""
    if a.arch != b.arch:
        raise ValueError(f"can't merge {a.path} and {b.path}: different model shapes")
    if a.world is not None and b.world is not None and a.world != b.world:
        raise ValueError(f"can't merge {a.path} and {b.path}: trained on different worlds ({a.world}, {b.world})")

    def make():
        sa, ca, _ = load_weights(a.path, "policy")
        sb, _, _ = load_weights(b.path, "policy")
        merged = merge_state_dicts(sa, sb, lam)
        if policy_family(a.path) == "musicgen":  # its checkpoints hold the trained tensors only: onto θ_q's model
            policy = load_policy(a.path)
            policy.load_trainable_state_dict(merged)
        else:
            policy = AudioTokenPolicy(PolicyConfig(**ca))
            policy.load_state_dict(merged)
        return policy.eval()
    return make


def _merge_rows(a, b, lams) -> list[RowPlan]:
    return [RowPlan(f"merge λ={lam:g}", "merge", lam=lam, members=[(0, ("merge", str(a.path), str(b.path), lam),
                                                                    _merged(a, b, lam))]) for lam in lams]


def _group_merge_rows(groups: dict, lams, merge_with: list[str] | None) -> list[RowPlan]:
    """θ_q (the one β = 0 group) with each β > 0 group (or those ``merge_with`` names), seed s with seed s."""
    from divcfg.reward.eval_groups import seed_of
    quality = [n for n, cs in groups.items() if cs[0].beta == 0]
    diverse = [n for n, cs in groups.items() if cs[0].beta is not None and cs[0].beta > 0]
    if merge_with is not None:
        missing = [n for n in merge_with if n not in groups]
        if missing:
            raise ValueError(f"--merge-with {missing}: no such group; the groups are {list(groups)} (β > 0: "
                             f"{diverse})")
        unknown = [n for n in merge_with if n not in diverse]
        if unknown:
            raise ValueError(f"--merge-with {unknown}: not a β > 0 group; the β > 0 groups are {diverse}")
        diverse = merge_with
    if not diverse or not quality:
        return []
    if len(quality) > 1:
        raise ValueError(f"groups {quality} all have β = 0; merges need one θ_q group (or pass --merge-with '')")
    q = {seed_of(c, i): c for i, c in enumerate(groups[quality[0]])}
    plans = []
    for name in diverse:
        d = {seed_of(c, i): c for i, c in enumerate(groups[name])}
        if set(d) != set(q):
            raise ValueError(f"--group {name} has seeds {sorted(d)} and θ_q ({quality[0]}) {sorted(q)}: merges pair "
                             f"seed s with seed s")
        beta = groups[name][0].beta
        for lam in lams:
            members = []
            for s in sorted(q):
                # λ = 0 and 1 are θ_q's and θ_d's own weights bit for bit: their measurements are reused
                key = ("ckpt", str(q[s].path)) if lam == 0 else ("ckpt", str(d[s].path)) if lam == 1 else \
                    ("merge", str(q[s].path), str(d[s].path), lam)
                members.append((s, key, _merged(q[s], d[s], lam)))
            plans.append(RowPlan(f"merge β={beta:g} λ={lam:g}", "merge", lam=lam, beta=beta, theta_d=name,
                                 members=members))
    return plans


def evaluate(world_dir: str, models: list[str], gammas: list[float], merge: tuple[str, str] | None,
             lams: list[float], prompts: int | None, samples: int, seed: int, progress: bool = True,
             groups: dict[str, list[str]] | None = None, merge_with: list[str] | None = None,
             batch: int = 0, clap: str | None = None, judge_workers: int | None = None) -> list[dict]:
    """Measure every row; each row dict holds its plan's fields and ``runs``, one :func:`measure_policy` result per
    seed (with per-prompt scores). ``clap``: a CLAP directory judging adherence (instead of the one world.json
    names). ``judge_workers``: processes that run the Basic Pitch and madmom judges (reward/judge_pool.py; None:
    one per usable core, none on one core; 0: in this process); the figures are the same either way."""

    if samples < 2:
        raise ValueError(f"--samples must be >= 2 to measure diversity, got {samples}")
    if judge_workers is None:  # one per core; on one core a worker would only take turns with this process
        judge_workers = cores if (cores := usable_cores()) > 1 else 0
    if judge_workers < 0:
        raise ValueError(f"--judge-workers must be >= 0, got {judge_workers}")
    world = World(world_dir)
    musicgen = world_musicgen(world)
    # The base model and the codec its codes decode with: the world's own (base/, codec/), or the folder world's
    # MusicGen directory as it is (its decoder and its EnCodec). Loaded once, after every check.
    if musicgen is None:
        base_and_codec = functools.cache(lambda: (load_policy(world.path("base")).eval(), None))
    else:
        base_and_codec = functools.cache(lambda: _musicgen_base(musicgen))
    base = functools.cache(lambda: base_and_codec()[0])
    plans = plan_rows(world_dir, base, gammas, models, merge, lams, groups or {}, merge_with, musicgen)
    if not world.is_built():
        raise FileNotFoundError(f"no complete world in {world_dir}; run `divcfg world build` first")
    heldout = world.heldout_prompts()
    if prompts is not None and prompts > len(heldout):
        raise ValueError(f"--prompts {prompts}: the world {world_dir} has {len(heldout)} held-out prompts")
    heldout = heldout[:DEFAULT_PROMPTS if prompts is None else prompts]  # the tiny world has fewer than 96: all
    # Says on stderr which independent judge is skipped, and why
    judges = Judges.load(world_dir, codec=base_and_codec()[1], clap=clap)
    if judges.skipped:
        print(f"divcfg eval: the claims are decided without the {', '.join(judges.skipped)} judge (its package is "
              f"missing); by the {judges.adherence_by or 'no adherence'}"
              f"{''.join(f' and the {n} judge' for n in judges.independent)}", file=sys.stderr)
    pooled = judge_workers and any(n in POOLED for n in judges.independent)
    with JudgePool(world_dir, judge_workers) if pooled else contextlib.nullcontext() as pool:
        judges = replace(judges, pool=pool)
        return _measure_rows(world, plans, judges, heldout, samples, seed, batch, base, progress)


def _measure_rows(world: World, plans: list[RowPlan], judges: Judges, heldout: list[str], samples: int, seed: int,
                  batch: int, base: Callable, progress: bool) -> list[dict]:
    heldout_codes = read_tokens(world.path("heldout.parquet")).codes
    n_frames = heldout_codes.shape[2]
    # FAD's reference, as world.json's: held-out-embedder features of the held-out clips, decoded as samples are
    real = judges.embed(judges.decode(heldout_codes), "eval").numpy()
    kad_bandwidth = reference_bandwidth(real)  # one kernel for every row, so that their KADs compare
    measured, rows = {}, []
    todo = sum(len(p.members) for p in plans)
    with tqdm(total=todo, desc="eval", disable=not progress) as bar:
        for plan in plans:
            runs = []
            for s, key, make in plan.members:
                if key not in measured:
                    start = time.perf_counter()
                    measured[key] = measure_policy(make(), judges, heldout, samples, plan.guidance_scale, n_frames,
                                                   seed=seed, teacher=base(), teacher_scale=3.0, batch=batch,
                                                   fad_reference=real, kad_bandwidth=kad_bandwidth)
                    measured[key]["measure_s"] = time.perf_counter() - start  # load, sample, decode and judge
                runs.append({"seed": s, **measured[key]})
                bar.update(1)
            rows.append({"name": plan.name, "kind": plan.kind, "guidance_scale": plan.guidance_scale,
                         "lam": plan.lam, "beta": plan.beta, "theta_d": plan.theta_d, "runs": runs,
                         "train": plan.train})
    return rows


def _musicgen_base(directory: str):
    """``(policy, codec)`` of a folder world's MusicGen directory; a directory that has gone is named."""
    from divcfg.model.loaders import load_musicgen_directory
    from divcfg.model.musicgen.loading import MusicGenLoadError
    try:
        policy, codec = load_musicgen_directory(directory)
    except (MusicGenLoadError, ImportError, OSError) as e:
        raise ValueError(f"the folder world's base model, the MusicGen {directory} (world.json's model): {e}") from None
    return policy.eval(), codec


def _parse_floats(text: str, flag: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x]
    except ValueError:
        raise ValueError(f"{flag} {text!r}: expected comma-separated numbers") from None


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="divcfg eval", description=__doc__.split("\n")[0].split(":", 1)[1].strip())
    ap.add_argument("models", nargs="*", help="single finetuned or merged checkpoints (evaluated without CFG)")
    ap.add_argument("--world", default="worlds/small", help="world directory (base model, judges, prompts)")
    ap.add_argument("--gammas", default="1,1.5,2,3,4,5", help="guidance scales of the base-model sweep")
    ap.add_argument("--group", action="append", default=[], metavar="NAME=CKPT,CKPT,...",
                    help="several seeds' checkpoints of one configuration, one row (repeatable)")
    ap.add_argument("--multirun", action="append", default=[], metavar="DIR",
                    help="a `divcfg train --multirun` run.dir: its jobs grouped by overrides less run.seed")
    ap.add_argument("--merge-with", metavar="NAME,...", help="the β > 0 groups merged with θ_q (the β = 0 group), "
                    "seed by seed; default all of them, '' none")
    ap.add_argument("--merge", nargs=2, metavar=("A", "B"), help="also a λ sweep of these two checkpoints")
    ap.add_argument("--lams", default="0,0.25,0.5,0.75,1", help="λ values of the merges")
    ap.add_argument("--prompts", type=int, help=f"held-out prompts (default {DEFAULT_PROMPTS}, or all the world "
                    f"has if fewer)")
    ap.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, help="samples per prompt")
    ap.add_argument("--bootstrap", type=int, default=1000, help="paired bootstrap rounds over prompts (>= 100)")
    ap.add_argument("--batch", type=int, default=0, help="clips per generate call (0: all of a row's at once)")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed, the same for every row")
    ap.add_argument("--clap", metavar="DIR", help="a local CLAP directory judging adherence (default: the one the "
                    "world's world.json names, if any)")
    ap.add_argument("--judge-workers", type=int, default=None, metavar="N", help="processes running the Basic "
                    "Pitch and madmom judges (default: one per usable core, none on a one-core machine; 0: in this "
                    "process)")
    ap.add_argument("--out", required=True, help="output directory: eval.csv, eval.json, pareto.png, "
                    "training.png (the trained rows' reward and KL curves, when they have any), tb/")
    return ap


def _print_report(report: dict) -> None:
    used = {n: s["metric"] for n, s in report["judges"].items() if n != "scorer" and s["status"] == "used"}
    for r in report["rows"]:
        judged = "".join(f"  {n} judge {_num(r.get(metric))}" for n, metric in used.items())
        print(f"{r['name']:>22}  γ={r['guidance_scale']:<4g} adherence {_num(r['adherence'])} "
              f"[{_num(r['adherence_lo'])}, {_num(r['adherence_hi'])}]{judged}  diversity {_num(r['diversity'])} "
              f"[{_num(r['diversity_lo'])}, {_num(r['diversity_hi'])}] (reward emb "
              f"{_num(r['diversity_reward_embedder'])})  FAD {_num(r.get('fad'))}  KAD {_num(r.get('kad'))}  "
              f"{_num(r['frames_per_s'])} frames/s")
    for c in report["claims"]:
        print(f"claim {c['id']}: {c['verdict']}  {c['statistic']} = {_num(c['estimate'])} "
              f"[{_num(c['lo'])}, {_num(c['hi'])}]")
    for name, cs in report["claims_by_judge"].items():
        for c in cs:
            print(f"claim {c['id']} by the {name} judge: {c['verdict']}  {c['statistic']} = {_num(c['estimate'])} "
                  f"[{_num(c['lo'])}, {_num(c['hi'])}]")
    for m in report.get("claim_3_by_theta_d", []):
        mid = m["minus_midpoint"]["adherence"]
        print(f"claim 3 with θ_d = {m['theta_d']}: {m['claim']['verdict']}  {m['claim']['note']}; adherence − "
              f"the ends' midpoint {_num(mid['estimate'])} [{_num(mid['lo'])}, {_num(mid['hi'])}]")
    print(judges_line(report["judges"]))


def judges_line(status: dict) -> str:
    """Who decided the claims, and why a judge the world configures did not (its package is missing)."""
    used = [s.get("by", n) for n, s in status.items() if s["status"] == "used"]
    skipped = "".join(f"; the {n} judge is skipped: {s['why']}" for n, s in status.items()
                      if s["status"] == "skipped")
    return f"claims decided by: {', '.join(used)}{skipped}"


def main(argv: list[str] | None = None) -> int:

    args = _parser().parse_args(argv)
    start = time.perf_counter()
    try:
        check_bootstrap(args.bootstrap)
        if args.prompts is not None and args.prompts < 2:
            raise ValueError(f"--prompts {args.prompts}: the bootstrap resamples prompts, so it needs >= 2")
        gammas, lams = _parse_floats(args.gammas, "--gammas"), _parse_floats(args.lams, "--lams")
        if any(g < 0 for g in gammas):
            raise ValueError(f"--gammas must be >= 0, got {gammas}")
        if any(not 0 <= lam <= 1 for lam in lams):
            raise ValueError(f"--lams must lie in [0, 1], got {lams}")
        groups = dict(parse_group(g) for g in args.group)
        for d in args.multirun:
            for name, ckpts in multirun_groups(d).items():
                if name in groups:
                    raise ValueError(f"group {name!r} named twice (--group or --multirun {d})")
                groups[name] = ckpts
        merge_with = None if args.merge_with is None else [n.strip() for n in args.merge_with.split(",") if n.strip()]
        rows = evaluate(args.world, args.models, gammas, tuple(args.merge) if args.merge else None, lams,
                        args.prompts, args.samples, args.seed, groups=groups, batch=args.batch, merge_with=merge_with,
                        clap=args.clap, judge_workers=args.judge_workers)
        report = summarize(rows, args.bootstrap, seed=args.seed)
        report["command"] = "divcfg eval " + " ".join(sys.argv[2:] if argv is None else argv)
        report["wall_s"] = time.perf_counter() - start
        written = write_outputs(report, Path(args.out))
    except (ValueError, FileNotFoundError) as e:  # CheckpointError is a ValueError
        print(f"divcfg eval: error: {e}", file=sys.stderr)
        return 2
    _print_report(report)
    print(f"wrote {args.out}/{', '.join(written)}")
    return 0


def _num(v) -> str:
    return "n/a" if v is None or v != v else f"{v:.4g}"
