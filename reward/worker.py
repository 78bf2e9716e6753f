"""Reward workers: decode each group's codes to audio, embed, and fill in the diversity reward and quality score.

A group whose decode or embed fails (or gives non-finite values) is dropped whole and counted; it never gets
zero rewards. :class:`RewardWorker` is plain; the Ray shell only places it.
"""
from __future__ import annotations

import time

import psutil

# Cold-start timestamps (``stats()["startup"]``, `divcfg bench coldstart`): the imports below, torch above all.
_IMPORT_START = time.time()
import numpy as np  # noqa: E402
import torch  # noqa: E402

from divcfg.common.record import RolloutBatch  # noqa: E402
from divcfg.reward.diversity import diversity_reward  # noqa: E402

_IMPORTED = time.time()


class RewardWorker:
    def __init__(self, judges_factory, embedder: str = "reward", threads: int = 1):
        """``embedder``: reward.embedder, the world's ``reward`` or ``eval`` embedder, or a saved embedder's
        directory (loaded here, in the worker: a model does not travel to it)."""
        self.startup = {"process_start": psutil.Process().create_time(), "import_start": _IMPORT_START,
                        "imported": _IMPORTED, "init_start": time.time()}
        torch.set_num_threads(threads)
        # The judges with reward.embedder as their reward embedder (loaded here when it is a directory), the one
        # choice the driver's probe makes too, so that the probe reports the diversity the reward is
        self.judges = judges_factory().with_reward_embedder(embedder)
        self.dropped = 0
        self.startup["built"] = time.time()

    def stats(self) -> dict:
        """Groups dropped, and the startup timestamps (wall clock): process start, module imports (start, end),
        ``__init__`` (start, judges loaded) and the first scoring call (start, end)."""
        return {"dropped": self.dropped, "startup": dict(self.startup)}

    def score(self, groups: list[RolloutBatch]) -> list[RolloutBatch | None]:
        """Score several groups in one batch; a failed group comes back as None."""
        self.startup.setdefault("first_call_start", time.time())
        start = time.perf_counter()
        try:
            out = self._score_batched(groups, start)
        except Exception:
            # One bad group must not sink the others: fall back to scoring them one at a time.
            out = [self._score_one(g) for g in groups]
        self.startup.setdefault("first_call_end", time.time())
        # The CPU this process has used by its first result (all its threads): what a start costs the node.
        if "cpu_s_at_first_result" not in self.startup:  # once: not a clock read on every later call
            self.startup["cpu_s_at_first_result"] = time.process_time()
        return out

    def _score_one(self, group: RolloutBatch) -> RolloutBatch | None:
        try:
            return self._score_batched([group], time.perf_counter())[0]
        except Exception:
            self.dropped += 1
            return None

    def _score_batched(self, groups: list[RolloutBatch], start: float) -> list[RolloutBatch | None]:
        sizes = {len(g) for g in groups}
        if len(sizes) != 1:
            raise ValueError(f"groups of different sizes {sorted(sizes)} cannot be scored in one batch")
        g = sizes.pop()
        codes = np.concatenate([b.codes for b in groups])
        prompts = [p for b in groups for p in b.prompt]
        with torch.inference_mode():
            wav = self.judges.decode(codes)
            emb = self.judges.embed(wav, "reward").view(len(groups), g, -1)
            rewards = diversity_reward(emb) if g >= 2 else torch.zeros(len(groups), g)
            quality = self.judges.adherence(wav, prompts).view(len(groups), g)
        seconds = (time.perf_counter() - start) / len(groups)
        out = []
        for i, b in enumerate(groups):
            r, q = rewards[i].numpy(), quality[i].numpy()
            if not np.isfinite(r).all():
                self.dropped += 1
                out.append(None)
                continue
            out.append(b.with_fields(diversity_reward=r.astype(np.float32), quality=q.astype(np.float32),
                                     reward_s=np.full(g, seconds, np.float32)))
        return out


def remote_reward_worker(num_cpus: float, num_gpus: float):
    """The Ray shell, as actors/rollout.py's (no restarts, no task events: see there why)."""
    import ray  # start-up: ray takes ~1.1 s to import; the plain classes here run without it
    return ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=0, enable_task_events=False)(RewardWorker)
