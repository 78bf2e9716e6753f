"""What happens after each learner step: metrics, TensorBoard, checkpoints, the stop rule and the progress line."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import psutil
from omegaconf import OmegaConf
from torch.utils.tensorboard import SummaryWriter

from divcfg.job.run_dir import save_checkpoint

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
        "actors": ["Multiline", ["rollout/actors", "rollout/actors_generating", "rollout/actors_retiring",
                                       "rollout/actors_spare"]],
        "policy lag": ["Multiline", ["rollout/policy_lag_mean", "rollout/policy_lag_max"]],
        "groups": ["Multiline", ["rollout/groups_generated", "rollout/groups_stale", "rollout/groups_dropped",
                                 "rollout/groups_requeued", "rollout/queue_depth"]],
    },
}


def system_metrics() -> dict[str, float]:
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


class StepLogger:
    """The loops' ``on_step(i, batch, metrics, acct)`` for ``divcfg train``, and its ``on_event(text)``.

    Step ``i`` of this run is step ``start_step + i`` of the job (a resumed run goes on counting); the last step
    always logs and checkpoints. ``totals`` (samples, tokens, when the first and last batches came) feed the summary.
    """

    def __init__(self, cfg, run_dir: Path, learner, stream, judges, start_step: int, steps: int):
        self.cfg, self.run_dir, self.learner, self.stream, self.judges = cfg, run_dir, learner, stream, judges
        self.start_step, self.steps, self.remaining = start_step, steps, steps - start_step
        self.step = start_step  # the job's step that events are logged at: the last one done
        self.writer = SummaryWriter(str(run_dir / "tb"))
        self.writer.add_text("config", "```\n" + OmegaConf.to_yaml(cfg) + "\n```")
        self.writer.add_custom_scalars(CUSTOM_SCALARS)
        self.totals = {"samples": 0, "tokens": 0, "lag_sum": 0.0, "first_step_at": None, "first_samples": 0,
                       "last_step_at": None}
        # Samples per step of this run: after a lost learner goes back to its last checkpoint the steps since are
        # trained again, so the kept count overwrites them while ``totals`` (throughput: work done) adds them.
        self.samples_by_step: dict[int, int] = {}
        self.t_start = time.perf_counter()

    def start(self) -> None:
        """The clock of the throughput figures starts here (after the start-of-run probe)."""
        self.t_start = time.perf_counter()

    def event(self, text: str) -> None:
        self.writer.add_text("rollout/events", text, self.step)
        print(f"[{self.run_dir.name}] {text}", flush=True)

    def __call__(self, i: int, batch, metrics: dict, acct) -> None:
        self.step = step = self.start_step + i
        elapsed = time.perf_counter() - self.t_start
        if batch is not None:
            self.count(batch, metrics, elapsed)
            self.samples_by_step[i] = len(batch)
        self.add_rates(batch, metrics, acct, elapsed)
        last = i == self.remaining - 1
        if step % self.cfg.logging.every == 0 or last:
            for k, v in metrics.items():
                self.writer.add_scalar(k, v, step)
        if self.cfg.logging.audio_every and step % self.cfg.logging.audio_every == 0 and batch is not None:
            wav = self.judges.decode(batch.codes[:2])
            for j in range(len(wav)):
                self.writer.add_audio(f"samples/{j}", wav[j].clamp(-1, 1), step,
                                      sample_rate=self.judges.codec.sample_rate)
        if (step + 1) % self.cfg.checkpoint.every == 0 or last:
            save_checkpoint(self.run_dir, self.learner, step + 1, self.stream, acct, self.cfg.checkpoint.keep,
                            self.cfg)
        if self.learner.nonfinite_in_a_row >= self.cfg.learner.max_nonfinite:
            raise RuntimeError(f"{self.learner.nonfinite_in_a_row} non-finite losses in a row at step {step}; "
                               "stopping")
        if self.cfg.logging.progress:
            eta = elapsed / (i + 1) * (self.remaining - i - 1)
            # since the start, start-up included; the summary's samples_per_s is the steady rate after the first step
            print(f"step {step + 1}/{self.steps}  samples/s since start {metrics['throughput/samples_per_s']:.2f}  "
                  f"kl {metrics.get('losses/distill_kl', float('nan')):.4f}  "
                  f"diversity {metrics.get('rewards/diversity_mean', float('nan')):.4f}  eta {eta:.0f}s", flush=True)

    def count(self, batch, metrics: dict, elapsed: float) -> None:
        """The batch's rewards into ``metrics``, its samples and tokens into the totals."""
        t = self.totals
        t["samples"] += len(batch)
        t["tokens"] += int(batch.codes[0].size) * len(batch)
        metrics["rewards/diversity_mean"] = float(np.mean(batch.diversity_reward))
        metrics["rewards/diversity_std"] = float(np.std(batch.diversity_reward))
        metrics["rewards/quality"] = float(np.nanmean(batch.quality)) if np.isfinite(batch.quality).any() else 0.0
        # Actor seconds spent generating this step's groups (each row carries its group's time): summed over a
        # window and divided by window × actors, it is the actors' busy fraction (bench/pipeline.py).
        _, first_rows = np.unique(batch.group_id, return_index=True)
        metrics["rollout/actor_generate_s"] = float(np.sum(batch.generate_s[first_rows]))
        if "rollout/policy_lag_mean" in metrics:
            t["lag_sum"] += metrics["rollout/policy_lag_mean"] * len(batch)
        t["last_step_at"] = elapsed
        if t["first_step_at"] is None:
            # Actors start (seconds each) before the first batch: the steady rate leaves that out.
            t["first_step_at"], t["first_samples"] = elapsed, t["samples"]

    def add_rates(self, batch, metrics: dict, acct, elapsed: float) -> None:
        t, actors = self.totals, metrics.get("rollout/actors", float(self.cfg.actors.count))
        learner_s = sum(metrics.get(f"time/{k}", 0.0) for k in ("teacher", "forward_backward", "update"))
        if batch is not None and learner_s > 0:
            metrics["throughput/learner_tokens_per_s"] = int(batch.codes[0].size) * len(batch) / learner_s
        metrics.update({"throughput/samples_per_s": t["samples"] / elapsed,
                        "throughput/tokens_per_s": t["tokens"] / elapsed,
                        "throughput/tokens_per_s_per_actor": t["tokens"] / elapsed / max(actors, 1.0),
                        "throughput/groups_per_s": acct.used / elapsed,
                        "rollout/groups_stale": float(acct.stale), "rollout/groups_dropped": float(acct.dropped),
                        "rollout/groups_generated": float(acct.generated), **system_metrics()})
        metrics.setdefault("rollout/actors", float(self.cfg.actors.count))

    def rates(self) -> dict:
        """The run's throughput for the summary: steady (after the first batch) and over the whole run."""
        t, wall = self.totals, time.perf_counter() - self.t_start
        steady_s = (t["last_step_at"] or 0.0) - (t["first_step_at"] or 0.0)
        steady = (t["samples"] - t["first_samples"]) / steady_s if steady_s > 0 else t["samples"] / wall
        kept = sum(self.samples_by_step.values())
        return {"samples": kept, "samples_redone": t["samples"] - kept, "samples_per_s": steady,
                "samples_per_s_whole_run": t["samples"] / wall,
                "startup_s": t["first_step_at"], "tokens_per_s": steady * t["tokens"] / max(t["samples"], 1),
                "policy_lag_mean": t["lag_sum"] / max(t["samples"], 1), "wall_s": wall}

    def close(self, hparams: dict, results: dict) -> None:
        self.writer.add_hparams(hparams, results, run_name="hparams")
        self.writer.close()
