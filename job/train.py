"""``divcfg train``: diversity-rewarded CFG distillation, the main job (a Hydra app).

With no cluster address it starts a local Ray instance (the embedded default); with ``RAY_ADDRESS`` set, or inside a
Ray job, it joins that cluster. ``learner.mode=local`` runs everything in this process without Ray.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from divcfg.common.config.checks import WORLD_EMBEDDERS, ConfigError, refuse_unknown_keys, validate_train
from divcfg.common.config.hydra_app import run_hydra
from divcfg.common.config.schema import TrainConfig
from divcfg.common.data.tokens import read_tokens
from divcfg.job.books import PromptStream
from divcfg.job.policy_source import load_policy_source
from divcfg.job.run_dir import check_resume, job_run_dir, newest_checkpoint, resolve_resume, restore, restore_run
from divcfg.job.step_log import StepLogger
from divcfg.job.topology import build_learner, build_topology
from divcfg.model.loaders import save_policy
from divcfg.reward.embedder import check_embedder_dir
from divcfg.reward.judges import Judges, measure_policy
from divcfg.world.ensure import ensure_world

# Steps and probe size a world gets when learner.steps=0: tiny is the < 5 minute smoke run.
WORLD_STEPS = {"tiny": 12, "small": 150}


def _probe(learner, judges, prompts, cfg, n_frames: int, seed: int) -> dict[str, float]:
    """KL, diversity (held-out embedder) and adherence of the current student without CFG, on held-out prompts."""
    learner.student.eval()
    m = measure_policy(learner.student, judges, prompts, cfg.probe.samples, 1.0, n_frames, seed=seed)
    learner.student.train()
    m["kl"] = learner.probe_kl(prompts, cfg.probe.samples, n_frames, seed)
    return m


def train(cfg) -> dict:
    """Run ``divcfg train``; a Ray instance it started is shut down when it returns or fails (a joined cluster is
    left as it was), so a caller in the same process can start another run."""
    ray_up = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    try:
        return _train(cfg)
    finally:
        if not ray_up and "ray" in sys.modules and sys.modules["ray"].is_initialized():
            sys.modules["ray"].shutdown()


def _train(cfg) -> dict:
    """The job as named steps: check, load the policy source, restore, build the topology, run, summarise."""
    # The job's time outside the training loop, by part (summary.json's setup_s, probe_start_s, finish_s, job_s).
    clock = {"start": time.perf_counter()}
    refuse_unknown_keys(cfg, TrainConfig)
    validate_train(cfg)
    check_reward_embedder(cfg)
    run_dir = job_run_dir(cfg)
    resume_from = resolve_resume(run_dir, cfg.run.resume)
    if resume_from is not None:
        check_resume(resume_from, run_dir, cfg)
    if cfg.learner.mode != "local":
        _init_ray(cfg)  # joins or starts the cluster first: a resource request it can't meet fails before any work
    torch.set_num_threads(cfg.learner.threads)
    torch.manual_seed(cfg.run.seed)
    # A MusicGen job's world holds the user's music, which train can't make: missing, it is an error.
    world = ensure_world(cfg.world.dir, cfg.world.size, cfg.world.seed, progress=cfg.logging.progress,
                         kind=cfg.world.kind, build_missing=cfg.model.family != "musicgen")
    world_dir = str(world.root.resolve())
    steps = cfg.learner.steps or WORLD_STEPS[cfg.world.size]
    # The policy source: where the base model and the codec come from.
    source = load_policy_source(cfg, world, read_tokens(world.path("heldout.parquet")))
    # The learner: in this process, or a learner group on Ray (learner.placement=group).
    learner = build_learner(cfg, source, _device(cfg), steps)
    stream = PromptStream(list(dict.fromkeys(read_tokens(world.path("tokens.parquet")).prompts)), cfg.run.seed)
    # Restore: the learner, the stream and the generators from the checkpoint; its unused prompts go first.
    start_step, resume_prompts = 0, []
    if resume_from is not None:
        start_step, resume_prompts = restore(resume_from, learner, stream, allow_pickle=cfg.run.allow_pickle)
    judges = Judges.load(world_dir, codec=source.codec).with_reward_embedder(cfg.reward.embedder)
    log = StepLogger(cfg, run_dir, learner, stream, judges, start_step, steps)
    model = cfg.model.musicgen if cfg.model.family == "musicgen" else "world base"
    print(f"divcfg train: world={world_dir} model={model} steps={start_step}->{steps} mode={cfg.learner.mode} "
          f"beta={cfg.algo.beta} G={cfg.algo.group_size} actors={cfg.actors.count} learner={_placement(cfg)} "
          f"run.dir={run_dir}", flush=True)
    probe_prompts = world.heldout_prompts()[: cfg.probe.prompts]
    clock["probe_start"] = time.perf_counter()
    probe_start = _probe(learner, judges, probe_prompts, cfg, source.n_frames, cfg.run.seed)
    clock["loop"] = time.perf_counter()
    # Build the topology and run it (the clock starts first: startup_s includes the roles' start).
    log.start()
    recover = _recovery(cfg, run_dir, learner, stream, resume_from, start_step, resume_prompts)
    topology = build_topology(cfg, learner, source, world_dir, stream, resume_prompts, on_event=log.event,
                              recover=recover)
    acct = topology.run(steps - start_step, log)
    rates = log.rates()
    clock["finish"] = time.perf_counter()
    probe_end = _finish(cfg, run_dir, learner, source, judges, probe_prompts, steps)
    if hasattr(learner, "shutdown"):
        learner.shutdown()  # a joined cluster keeps running: the group's actors and reservation go now
    clock["end"] = time.perf_counter()
    return _summarise(cfg, run_dir, log, rates, probe_start, probe_end, acct, learner, topology, steps, world_dir,
                      _time_split(clock))


def _time_split(clock: dict[str, float]) -> dict[str, float]:
    """Seconds of each part of the job: setup (checks, Ray, world, models, judges), the first probe, the finish (save,
    last probe, the learner group's shutdown) and the whole job; the loop itself is wall_s."""
    return {"setup_s": clock["probe_start"] - clock["start"], "probe_start_s": clock["loop"] - clock["probe_start"],
            "finish_s": clock["end"] - clock["finish"], "job_s": clock["end"] - clock["start"]}


def check_reward_embedder(cfg) -> None:
    """reward.embedder, when it names a directory, must hold a saved embedder: refused here, before any work, rather
    than in every reward worker (validate_train checks only that the directory exists: common/ knows no format)."""
    if cfg.reward.embedder in WORLD_EMBEDDERS:
        return
    try:
        check_embedder_dir(cfg.reward.embedder)
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(f"reward.embedder={cfg.reward.embedder!r}: {e}") from None


def _recovery(cfg, run_dir: Path, learner, stream, resume_from, start_step: int, resume_prompts):
    """What a lost learner group comes back from (None: a learner in the driver dies with it): a rebuilt group,
    restored from this run's newest complete checkpoint, else the one it resumed from, else the start. Returns the
    run's step to go on from, the prompts drawn but not used then, and the books then."""
    if not hasattr(learner, "rebuild"):
        return None

    def recover() -> tuple[int, list[int], dict]:
        learner.rebuild()
        checkpoint = newest_checkpoint(run_dir) or resume_from
        if checkpoint is None:
            stream.position = 0
            return 0, list(resume_prompts), {}
        step, outstanding, books = restore_run(checkpoint, learner, stream, allow_pickle=cfg.run.allow_pickle)
        # A checkpoint from the run this one resumed: its books belong to that run, and this run counts from 0.
        return step - start_step, outstanding, books if checkpoint != resume_from else {}
    return recover


def _placement(cfg) -> str:
    """Where the learner runs, for the start line: in this process, or a group of N workers on Ray."""
    if cfg.learner.mode == "local" or cfg.learner.placement == "driver":
        return "driver"
    return f"group of {cfg.learner.workers}"


def _device(cfg) -> str:
    return cfg.learner.device if cfg.learner.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")


def _finish(cfg, run_dir: Path, learner, source, judges, probe_prompts, steps: int) -> dict:
    """Save the finetuned student as a plain policy checkpoint (what `divcfg sample`, `merge` and `eval` take) and
    probe it. A MusicGen checkpoint records no codec: its own EnCodec comes with the model it names."""
    save_policy(learner.student, run_dir / "student",
                meta={"codec": source.codec_meta, "beta": cfg.algo.beta, "steps": steps})
    return _probe(learner, judges, probe_prompts, cfg, source.n_frames, cfg.run.seed)


def _summarise(cfg, run_dir: Path, log, rates: dict, probe_start: dict, probe_end: dict, acct, learner, topology,
               steps: int, world_dir: str, time_split: dict[str, float]) -> dict:
    """summary.json (written atomically), the hparams in TensorBoard, and a one-line digest on stdout."""
    summary = {"steps": steps, **{k: rates[k] for k in ("samples", "samples_redone", "samples_per_s",
                                                       "samples_per_s_whole_run", "startup_s", "tokens_per_s")}}
    for key in ("kl", "diversity", "adherence", "diversity_reward_embedder"):
        summary[f"{key}_start"], summary[f"{key}_end"] = probe_start[key], probe_end[key]
    summary.update({
        "policy_lag_mean": rates["policy_lag_mean"],
        "groups_generated": acct.generated, "groups_used": acct.used, "groups_stale": acct.stale,
        "groups_dropped": acct.dropped, "actors_final": topology.actors_final(), "groups_requeued": acct.requeued,
        "nonfinite_skipped": learner.nonfinite_total, "learner_restarts": acct.failures.get("learner", 0),
        "wall_s": rates["wall_s"], **time_split, "mode": cfg.learner.mode,
        "beta": cfg.algo.beta, "world": world_dir,
    })
    log.close({"beta": cfg.algo.beta, "guidance_scale": cfg.algo.guidance_scale, "group_size": cfg.algo.group_size,
               "lr": cfg.algo.lr, "actors": cfg.actors.count},
              {"hparam/kl_end": summary["kl_end"], "hparam/diversity_end": summary["diversity_end"]})
    tmp = run_dir / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, run_dir / "summary.json")
    print(json.dumps({k: summary[k] for k in ("steps", "samples_per_s", "samples_per_s_whole_run", "kl_start", "kl_end",
                                               "diversity_start", "diversity_end", "adherence_start",
                                               "adherence_end")}), flush=True)
    return summary


def _init_ray(cfg) -> None:
    """Join the cluster (``run.ray_address`` / ``RAY_ADDRESS``) or start a local one, then check its GPUs."""
    import ray  # start-up: ray takes ~1.1 s to import; the plain classes here run without it
    started = not ray.is_initialized()
    if started:
        _start_ray(cfg)
    gpus = ray.cluster_resources().get("GPU", 0)
    for role in ("actors", "reward"):
        if cfg[role].num_gpus > gpus:
            if started:
                ray.shutdown()
            raise ValueError(f"{role}.num_gpus={cfg[role].num_gpus} is more GPUs per worker than the cluster has "
                             f"({gpus:g})")


def _start_ray(cfg) -> None:
    import ray  # start-up: ray takes ~1.1 s to import; the plain classes here run without it
    address = cfg.run.ray_address or os.environ.get("RAY_ADDRESS")
    # Workers import divcfg from this checkout even when it is not installed on their Python path.
    runtime_env = {"env_vars": {"OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}}
    if address:
        from divcfg.common.runtime.cluster import ClusterError, connect
        try:
            # connect() checks the address answers first: a bare ray.init retries a dead one for many minutes.
            connect(address, runtime_env=runtime_env, log_to_driver=False, namespace="divcfg")
        except (ClusterError, ConnectionError) as e:
            raise ValueError(f"run.ray_address / RAY_ADDRESS: {e}") from None
    else:
        need = ((cfg.actors.count + cfg.actors.spares) * cfg.actors.num_cpus
                + (cfg.reward.count + cfg.reward.spares) * cfg.reward.num_cpus
                + (cfg.learner.workers * cfg.learner.num_cpus if cfg.learner.placement == "group" else 0))
        # address="local": always a fresh instance, never someone else's cluster that happens to run on this machine.
        ray.init(address="local", num_cpus=max(int(np.ceil(need)), os.cpu_count() or 1), runtime_env=runtime_env,
                 include_dashboard=False, log_to_driver=False, namespace="divcfg")


def main(argv: list[str] | None = None) -> int:
    return run_hydra("train", train, argv)
