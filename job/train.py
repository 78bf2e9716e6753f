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

# Steps and probe size a world gets when learner.steps=0: tiny is the < 5 minute smoke run.
WORLD_STEPS = {"tiny": 12, "small": 150}

# TensorBoard's CUSTOM SCALARS tab: the throughput charts side by side, and the rollout health charts together.
CUSTOM_SCALARS = {
    "throughput": {
        "samples and groups per s": ["Multiline", ["throughput/samples_per_s", "throughput/groups_per_s"]],
        "tokens per s": ["Multiline", ["throughput/tokens_per_s", "throughput/tokens_per_s_per_actor",
                                       "throughput/learner_tokens_per_s"]],
        "step time": ["Multiline", ["time/wait_rollouts", "time/generate", "time/reward", "time/teacher",
                                    "time/forward_backward", "time/update", "time/publish"]],
    },
    "rollout": {
        "actors": ["Multiline", ["rollout/actors", "rollout/actors_generating", "rollout/actors_retiring"]],
        "policy lag": ["Multiline", ["rollout/policy_lag_mean", "rollout/policy_lag_max"]],
        "groups": ["Multiline", ["rollout/groups_generated", "rollout/groups_stale", "rollout/groups_dropped",
                                 "rollout/groups_requeued", "rollout/queue_depth"]],
    },
}


def _system_metrics() -> dict[str, float]:
    import psutil
    out = {"system/rss_mb": psutil.Process().memory_info().rss / 2**20}
    try:
        import ray
        if ray.is_initialized():
            mem = ray.available_resources().get("object_store_memory")
            total = ray.cluster_resources().get("object_store_memory")
            if mem is not None and total:
                out["system/object_store_used_mb"] = (total - mem) / 2**20
    except Exception:
        pass
    return out


def _probe(learner, judges, prompts, cfg, n_frames: int, seed: int) -> dict[str, float]:
    """KL, diversity (held-out embedder) and adherence of the current student without CFG, on held-out prompts."""
    from divcfg.reward.judges import measure_policy
    learner.student.eval()
    m = measure_policy(learner.student, judges, prompts, cfg.probe.samples, 1.0, n_frames, seed=seed)
    learner.student.train()
    m["kl"] = learner.probe_kl(prompts, cfg.probe.samples, n_frames, seed)
    return m


def _save_checkpoint(run_dir: Path, learner, step: int, stream, acct, keep: int) -> None:
    from divcfg.common.checkpoint import atomic_dir, save_policy
    ckdir = run_dir / "checkpoints"
    with atomic_dir(ckdir / f"step_{step:06d}") as tmp:
        save_policy(learner.student, tmp / "student")
        torch.save({**learner.state(), "step": step, "stream_position": stream.position,
                    "torch_rng": torch.get_rng_state(),
                    "accounting": {k: v for k, v in vars(acct).items() if k != "lags"}}, tmp / "train_state.pt")
    complete = sorted(p for p in ckdir.glob("step_*") if (p / "COMPLETE").is_file())
    for old in complete[:-keep]:
        import shutil
        shutil.rmtree(old, ignore_errors=True)


def _complete_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    return sorted(p for p in (Path(run_dir) / "checkpoints").glob("step_*") if (p / "COMPLETE").is_file())


def _job_run_dir(cfg) -> Path:
    """``run.dir``; under ``--multirun`` each job gets its own ``run.dir/<job number>`` (Hydra's job directory), so
    the runs of a sweep never share checkpoints, TensorBoard files or summary.json."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        with open_dict(cfg):
            cfg.run.dir = HydraConfig.get().runtime.output_dir
    return Path(cfg.run.dir)


def resolve_resume(run_dir: Path, resume: str | None) -> Path | None:
    """The checkpoint to continue from, or None for a fresh start.

    ``run.resume=DIR`` continues DIR's newest complete checkpoint (an error when it has none). ``run.resume=auto``
    continues ``run.dir``'s own when it has one and starts fresh when it has none: what a retried or preempted job
    passes. A run never starts over a ``run.dir`` that already holds another run's checkpoints, since its own would
    replace them step by step.
    """
    holds = _complete_checkpoints(run_dir)
    if resume == "auto":
        resume_from = holds[-1] if holds else None
    else:
        resume_from = latest_checkpoint(resume) if resume else None
    if holds and (resume_from is None or resume_from.parent.parent.resolve() != run_dir.resolve()):
        raise ValueError(f"run.dir={run_dir} already holds a run (checkpoint {holds[-1].name}); writing to it would "
                         f"replace those checkpoints. Continue it with run.resume={run_dir} (or run.resume=auto), "
                         f"or pick a new run.dir")
    return resume_from


def latest_checkpoint(run_dir: str | os.PathLike) -> Path:
    """The newest complete checkpoint of a run; a clear error when there is none."""
    ckdir = Path(run_dir) / "checkpoints"
    if not Path(run_dir).is_dir():
        raise FileNotFoundError(f"run.resume={run_dir}: no such run directory (is it reachable from this node?)")
    complete = _complete_checkpoints(run_dir)
    if not complete:
        raise FileNotFoundError(f"run.resume={run_dir}: no complete checkpoint under {ckdir}")
    return complete[-1]


def _check_resume_config(resume_dir: Path, cfg) -> None:
    """The method's settings must match the run being resumed; anything else may change."""
    from omegaconf import OmegaConf
    saved = resume_dir / ".hydra" / "config.yaml"
    if not saved.is_file():
        return
    old = OmegaConf.load(saved)
    keys = ["algo.beta", "algo.guidance_scale", "algo.group_size", "algo.baseline", "algo.kl_reduction",
            "world.size", "world.seed", "model.family"]
    if cfg.model.family == "musicgen":
        keys += ["model.musicgen", "model.train_layers"]
    for key in keys:
        # Runs saved before model.family or algo.kl_reduction existed were divcfg runs with the mean KL.
        a = OmegaConf.select(old, key, default={"model.family": "divcfg", "algo.kl_reduction": "mean"}.get(key))
        b = OmegaConf.select(cfg, key)
        if a != b:
            raise ValueError(f"run.resume={resume_dir}: {key}={b!r} conflicts with the resumed run's {key}={a!r}")


def train(cfg) -> dict:
    """Run ``divcfg train``; a Ray instance it started is shut down when it returns or fails (a joined cluster is
    left as it was), so a caller in the same process can start another run."""
    import sys
    ray_up = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    try:
        return _train(cfg)
    finally:
        if not ray_up and "ray" in sys.modules and sys.modules["ray"].is_initialized():
            sys.modules["ray"].shutdown()


def _train(cfg) -> dict:
    from omegaconf import OmegaConf
    from torch.utils.tensorboard import SummaryWriter

    from divcfg.actors.rollout import RolloutWorker, remote_rollout_worker
    from divcfg.common.checkpoint import load_policy, load_weights
    from divcfg.common.config import validate_train
    from divcfg.common.tokens import read_tokens
    from divcfg.world.build import ensure_world
    from divcfg.learner.learner import Learner
    from divcfg.job.loop import PromptStream, RayTopology, run_local, run_ray
    from divcfg.reward.judges import Judges
    from divcfg.reward.worker import RewardWorker, remote_reward_worker

    validate_train(cfg)
    run_dir = _job_run_dir(cfg)
    resume_prompts = []
    resume_from = resolve_resume(run_dir, cfg.run.resume)
    if resume_from is not None:
        _check_resume_config(resume_from.parent.parent, cfg)
    if cfg.learner.mode != "local":
        _init_ray(cfg)  # joins or starts the cluster first: a resource request it can't meet fails before any work
    torch.set_num_threads(cfg.learner.threads)
    torch.manual_seed(cfg.run.seed)
    world = ensure_world(cfg.world.dir, cfg.world.size, cfg.world.seed, progress=cfg.logging.progress)
    world_dir = str(world.root.resolve())
    steps = cfg.learner.steps or WORLD_STEPS[cfg.world.size]
    heldout = read_tokens(world.path("heldout.parquet"))
    train_prompts = list(dict.fromkeys(read_tokens(world.path("tokens.parquet")).prompts))
    probe_prompts = world.heldout_prompts()[: cfg.probe.prompts]
    device = cfg.learner.device if cfg.learner.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    # The policy family decides where the base model and the codec come from; nothing downstream asks which it is.
    if cfg.model.family == "musicgen":
        # Every process builds the same model from the same source (the tiny random one from the run's seed).
        from divcfg.common.codec import load_codec
        from divcfg.common.musicgen import MusicGenLoadError, MusicGenSpec, check_codec_matches
        spec = MusicGenSpec.from_model_config(cfg.model, seed=cfg.run.seed)
        try:
            base_policy, codec = spec.build()
        except (MusicGenLoadError, ImportError) as e:  # the job's one-line error path takes ValueErrors
            raise ValueError(f"model.musicgen={spec.musicgen}: {e}") from None
        if cfg.codec.source == "world":  # checked below like the model's own: the world's 16 kHz codes never match
            codec = load_codec(world.path("codec"))
        check_codec_matches(codec, base_policy.model_config, spec.musicgen)  # the codec reward workers decode with
        policy_factory, codec_factory, codec_meta = spec, spec.codec, None
        # The world's clip length in seconds, at the model's own frame rate (MusicGen: 50 frames/s).
        clip_s = heldout.codes.shape[2] / float(heldout.meta["frame_rate"])
        n_frames = cfg.algo.n_frames or round(clip_s * codec.frame_rate)
    else:
        base_dir = str(world.path("base").resolve())
        base_policy, codec = load_policy(base_dir), None
        policy_factory, codec_factory, codec_meta = _PolicyFactory(base_dir), None, str(world.path("codec").resolve())
        n_frames = cfg.algo.n_frames or heldout.codes.shape[2]
    if n_frames > base_policy.cfg.max_frames:
        raise ValueError(f"algo.n_frames={n_frames} (0 = the world's clip length) is more frames than the model "
                         f"takes ({base_policy.cfg.max_frames}); set algo.n_frames lower")
    learner = Learner(base_policy, beta=cfg.algo.beta, guidance_scale=cfg.algo.guidance_scale,
                      lr=cfg.algo.lr, baseline=cfg.algo.baseline, is_clip=cfg.algo.is_clip,
                      grad_clip=cfg.learner.grad_clip, device=device, amp=cfg.learner.amp,
                      kl_reduction=cfg.algo.kl_reduction)
    stream = PromptStream(train_prompts, cfg.run.seed)
    start_step = 0
    if resume_from is not None:
        state = torch.load(resume_from / "train_state.pt", weights_only=False)
        student_state, _, _ = load_weights(resume_from / "student", "policy")
        learner.load_state(student_state, state)
        stream.position = int(state["stream_position"])
        resume_prompts = state.get("accounting", {}).get("outstanding", [])
        start_step = int(state["step"])
        torch.set_rng_state(state["torch_rng"])
    judges = Judges.load(world_dir, codec=codec)
    writer = SummaryWriter(str(run_dir / "tb"))
    writer.add_text("config", "```\n" + OmegaConf.to_yaml(cfg) + "\n```")
    writer.add_custom_scalars(CUSTOM_SCALARS)
    model = cfg.model.musicgen if cfg.model.family == "musicgen" else "world base"
    print(f"divcfg train: world={world_dir} model={model} steps={start_step}->{steps} mode={cfg.learner.mode} "
          f"beta={cfg.algo.beta} G={cfg.algo.group_size} actors={cfg.actors.count} run.dir={run_dir}", flush=True)
    probe_start = _probe(learner, judges, probe_prompts, cfg, n_frames, cfg.run.seed)
    t_start = time.perf_counter()
    totals = {"samples": 0, "tokens": 0, "lag_sum": 0.0, "first_step_at": None, "first_samples": 0,
              "last_step_at": None}
    remaining = steps - start_step

    def on_step(i: int, batch, metrics: dict, acct) -> None:
        step = start_step + i
        elapsed = time.perf_counter() - t_start
        if batch is not None:
            totals["samples"] += len(batch)
            totals["tokens"] += int(batch.codes[0].size) * len(batch)
            metrics["rewards/diversity_mean"] = float(np.mean(batch.diversity_reward))
            metrics["rewards/diversity_std"] = float(np.std(batch.diversity_reward))
            metrics["rewards/quality"] = float(np.nanmean(batch.quality)) if np.isfinite(batch.quality).any() else 0.0
            # Actor seconds spent generating this step's groups (each row carries its group's time): summed over a
            # window and divided by window × actors, it is the actors' busy fraction (bench/pipeline.py).
            _, first_rows = np.unique(batch.group_id, return_index=True)
            metrics["rollout/actor_generate_s"] = float(np.sum(batch.generate_s[first_rows]))
            if "rollout/policy_lag_mean" in metrics:
                totals["lag_sum"] += metrics["rollout/policy_lag_mean"] * len(batch)
            totals["last_step_at"] = elapsed
            if totals["first_step_at"] is None:
                # Actors start (seconds each) before the first batch: the steady rate leaves that out.
                totals["first_step_at"], totals["first_samples"] = elapsed, totals["samples"]
        actors = metrics.get("rollout/actors", float(cfg.actors.count))
        learner_s = sum(metrics.get(f"time/{k}", 0.0) for k in ("teacher", "forward_backward", "update"))
        if batch is not None and learner_s > 0:
            metrics["throughput/learner_tokens_per_s"] = int(batch.codes[0].size) * len(batch) / learner_s
        metrics.update({"throughput/samples_per_s": totals["samples"] / elapsed,
                        "throughput/tokens_per_s": totals["tokens"] / elapsed,
                        "throughput/tokens_per_s_per_actor": totals["tokens"] / elapsed / max(actors, 1.0),
                        "throughput/groups_per_s": acct.used / elapsed,
                        "rollout/groups_stale": float(acct.stale), "rollout/groups_dropped": float(acct.dropped),
                        "rollout/groups_generated": float(acct.generated), **_system_metrics()})
        metrics.setdefault("rollout/actors", float(cfg.actors.count))
        if step % cfg.logging.every == 0 or i == remaining - 1:
            for k, v in metrics.items():
                writer.add_scalar(k, v, step)
        if cfg.logging.audio_every and step % cfg.logging.audio_every == 0 and batch is not None:
            wav = judges.decode(batch.codes[:2])
            for j in range(len(wav)):
                writer.add_audio(f"samples/{j}", wav[j].clamp(-1, 1), step, sample_rate=judges.codec.sample_rate)
        if (step + 1) % cfg.checkpoint.every == 0 or i == remaining - 1:
            _save_checkpoint(run_dir, learner, step + 1, stream, acct, cfg.checkpoint.keep)
        if learner.nonfinite_in_a_row >= cfg.learner.max_nonfinite:
            raise RuntimeError(f"{learner.nonfinite_in_a_row} non-finite losses in a row at step {step}; stopping")
        if cfg.logging.progress:
            eta = elapsed / (i + 1) * (remaining - i - 1)
            print(f"step {step + 1}/{steps}  samples/s {metrics['throughput/samples_per_s']:.2f}  "
                  f"kl {metrics.get('losses/distill_kl', float('nan')):.4f}  "
                  f"diversity {metrics.get('rewards/diversity_mean', float('nan')):.4f}  eta {eta:.0f}s", flush=True)

    actors_final = 1
    common = dict(steps=remaining, batch_prompts=cfg.algo.batch_prompts, group_size=cfg.algo.group_size,
                  max_lag=cfg.algo.max_policy_lag, on_step=on_step, groups_per_call=cfg.actors.groups_per_call)
    judges_factory = _JudgesFactory(world_dir, codec_factory)
    if cfg.learner.mode == "local":
        rollout = RolloutWorker(policy_factory, n_frames, cfg.algo.group_size, cfg.algo.temperature,
                                threads=cfg.actors.threads, seed=cfg.run.seed, dtype=cfg.actors.dtype)
        reward = RewardWorker(judges_factory, cfg.reward.embedder, threads=cfg.reward.threads)
        acct = run_local(learner, rollout, reward, stream, **common)
    else:
        import ray

        from divcfg.job.control import start_control
        run_name = run_dir.name
        control = start_control(run_name, cfg.actors.count)
        scaling_step = {"step": start_step}

        def on_event(text: str) -> None:
            writer.add_text("rollout/events", text, scaling_step["step"])
            print(f"[{run_name}] {text}", flush=True)

        topo = RayTopology(
            remote_rollout_worker(cfg.actors.num_cpus, cfg.actors.num_gpus),
            remote_reward_worker(cfg.reward.num_cpus, cfg.reward.num_gpus), cfg.actors.count, cfg.reward.count,
            dict(policy_factory=policy_factory, n_frames=n_frames, group_size=cfg.algo.group_size,
                 temperature=cfg.algo.temperature, threads=cfg.actors.threads, dtype=cfg.actors.dtype,
                 device="cuda" if cfg.actors.num_gpus > 0 else "cpu"),
            dict(judges_factory=judges_factory, embedder=cfg.reward.embedder, threads=cfg.reward.threads))
        def track(i, batch, metrics, acct):
            scaling_step["step"] = start_step + i
            on_step(i, batch, metrics, acct)

        autoscale = None
        if cfg.autoscale.max:
            from divcfg.job.control import AutoscaleRequest
            autoscale = AutoscaleRequest(
                cfg.autoscale.min, cfg.autoscale.max, {"CPU": cfg.actors.num_cpus, "GPU": cfg.actors.num_gpus},
                [{"CPU": cfg.reward.num_cpus, "GPU": cfg.reward.num_gpus}] * cfg.reward.count, on_event=on_event)

        def target() -> int:
            n = ray.get(control.get_target.remote())
            return autoscale(n) if autoscale else n

        acct = run_ray(learner, topo, stream, mode=cfg.learner.mode, queue_groups=cfg.learner.queue_groups,
                       resume_prompts=resume_prompts, target=target, on_event=on_event,
                       max_role_failures=cfg.learner.max_role_failures, reward_batch=cfg.reward.batch_groups,
                       **{**common, "on_step": track})
        actors_final = len(topo.actors)
    wall = time.perf_counter() - t_start
    steady_s = (totals["last_step_at"] or 0.0) - (totals["first_step_at"] or 0.0)
    steady = (totals["samples"] - totals["first_samples"]) / steady_s if steady_s > 0 else totals["samples"] / wall
    from divcfg.common.checkpoint import save_policy
    # The finetuned student as a plain policy checkpoint: what `divcfg sample`, `merge` and `eval` take.
    # A MusicGen checkpoint records no codec: its own EnCodec comes with the model it names.
    save_policy(learner.student, run_dir / "student", meta={"codec": codec_meta, "beta": cfg.algo.beta, "steps": steps})
    probe_end = _probe(learner, judges, probe_prompts, cfg, n_frames, cfg.run.seed)
    summary = {
        "steps": steps, "samples": totals["samples"], "samples_per_s": steady,
        "samples_per_s_whole_run": totals["samples"] / wall, "startup_s": totals["first_step_at"],
        "tokens_per_s": steady * totals["tokens"] / max(totals["samples"], 1),
        "kl_start": probe_start["kl"], "kl_end": probe_end["kl"],
        "diversity_start": probe_start["diversity"], "diversity_end": probe_end["diversity"],
        "adherence_start": probe_start["adherence"], "adherence_end": probe_end["adherence"],
        "diversity_reward_embedder_start": probe_start["diversity_reward_embedder"],
        "diversity_reward_embedder_end": probe_end["diversity_reward_embedder"],
        "policy_lag_mean": totals["lag_sum"] / max(totals["samples"], 1),
        "groups_generated": acct.generated, "groups_used": acct.used, "groups_stale": acct.stale,
        "groups_dropped": acct.dropped, "actors_final": actors_final, "groups_requeued": acct.requeued,
        "nonfinite_skipped": learner.nonfinite_total, "wall_s": wall, "mode": cfg.learner.mode,
        "beta": cfg.algo.beta, "world": world_dir,
    }
    writer.add_hparams({"beta": cfg.algo.beta, "guidance_scale": cfg.algo.guidance_scale,
                        "group_size": cfg.algo.group_size, "lr": cfg.algo.lr, "actors": cfg.actors.count},
                       {"hparam/kl_end": summary["kl_end"], "hparam/diversity_end": summary["diversity_end"]},
                       run_name="hparams")
    writer.close()
    tmp = run_dir / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, run_dir / "summary.json")
    print(json.dumps({k: summary[k] for k in ("steps", "samples_per_s", "kl_start", "kl_end", "diversity_start",
                                               "diversity_end", "adherence_start", "adherence_end")}), flush=True)
    return summary


class _PolicyFactory:
    """Picklable: builds the base policy inside a Ray actor (weights then arrive through the weights loop)."""

    def __init__(self, path: str):
        self.path = path

    def __call__(self):
        from divcfg.common.checkpoint import load_policy
        return load_policy(self.path)


class _JudgesFactory:
    """Picklable: loads the world's judges inside a reward worker, decoding with the world's codec or with the one
    ``codec_factory`` builds (the policy's own: MusicGen's EnCodec)."""

    def __init__(self, world_dir: str, codec_factory=None):
        self.world_dir = world_dir
        self.codec_factory = codec_factory

    def __call__(self):
        from divcfg.reward.judges import Judges
        return Judges.load(self.world_dir, codec=self.codec_factory() if self.codec_factory is not None else None)


def _init_ray(cfg) -> None:
    """Join the cluster (``run.ray_address`` / ``RAY_ADDRESS``) or start a local one, then check its GPUs."""
    import ray
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
    import ray
    address = cfg.run.ray_address or os.environ.get("RAY_ADDRESS")
    # Workers import divcfg from this checkout even when it is not installed on their Python path.
    runtime_env = {"env_vars": {"OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}}
    if address:
        from divcfg.common.cluster import ClusterError, connect
        try:
            # connect() checks the address answers first: a bare ray.init retries a dead one for many minutes.
            connect(address, runtime_env=runtime_env, log_to_driver=False, namespace="divcfg")
        except (ClusterError, ConnectionError) as e:
            raise ValueError(f"run.ray_address / RAY_ADDRESS: {e}") from None
    else:
        need = cfg.actors.count * cfg.actors.num_cpus + cfg.reward.count * cfg.reward.num_cpus
        # address="local": always a fresh instance, never someone else's cluster that happens to run on this machine.
        ray.init(address="local", num_cpus=max(int(np.ceil(need)), os.cpu_count() or 1), runtime_env=runtime_env,
                 include_dashboard=False, log_to_driver=False, namespace="divcfg")


def main(argv: list[str] | None = None) -> int:
    from divcfg.common.hydra_app import run_hydra
    return run_hydra("train", train, argv)
