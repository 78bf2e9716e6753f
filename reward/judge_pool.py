"""The independent judges in worker processes, so that an evaluation uses every core while they judge.

Basic Pitch (ONNX, one intra-op thread) and madmom (numpy BLSTMs and a Cython DBN) judge one clip at a time on one
core each, and together they were 69% of an evaluation measurement's time on the real-music world (24 prompts × 4
samples: madmom 47%, Basic Pitch 22%, with the codec's decoding 19% and generation 5%). The clips are independent,
so :class:`JudgePool` hands contiguous chunks of each measurement's clips to ``workers`` processes, each of which
loaded the world's judges once when the pool started, and puts the per-clip figures back in order: the same figures
as judging in this process (tests/reward/test_judge_pool.py holds them equal).

Workers are spawned, not forked: the parent has torch's thread pools running, which a fork does not carry safely.
"""
from __future__ import annotations

import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np

POOLED = ("pitch", "rhythm")
"""The judges that run in the pool (CLAP is torch, already multi-threaded, and stays in the evaluating process)."""

_worker_judges: dict = {}  # a worker's own judges, by name, loaded by _start_worker


def usable_cores() -> int:
    """Cores this process may run on (its affinity, which a container's CPU set narrows), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _start_worker(world_dir: str) -> None:
    # One thread per worker: the pool's processes are the parallelism (before torch is imported by the judges).
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    import torch

    from divcfg.reward.independent_judges import load_independent

    torch.set_num_threads(1)
    judges, _ = load_independent(world_dir)
    _worker_judges.update({n: j for n, j in judges.items() if n in POOLED})


def _judge_chunk(name: str, clips: np.ndarray, sample_rate: int, requested: list[dict]) -> np.ndarray:
    from divcfg.reward.independent_judges import RULES

    return RULES[name](_worker_judges[name], clips, sample_rate, requested)


class JudgePool:
    """``workers`` processes, each holding the independent judges of ``world_dir`` (those of :data:`POOLED`)."""

    def __init__(self, world_dir: str | os.PathLike, workers: int):
        if workers < 1:
            raise ValueError(f"judge workers must be >= 1, got {workers}")
        self.workers = workers
        self._executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_start_worker, initargs=(os.fspath(world_dir),))

    def submit(self, names: list[str], clips: np.ndarray, sample_rate: int, requested: list[dict]) -> "Judging":
        """Start judging: per judge of ``names`` (each in :data:`POOLED`), what its module's ``judge_adherence``
        gives for ``clips [N, samples]`` and ``requested`` (the attributes each clip's prompt asks for). Every
        judge's chunks are queued at once, so the workers stay busy across judges; the caller may work meanwhile."""
        clips = np.asarray(clips, np.float32)
        # About 4 chunks per worker: small enough to balance clips that take unequal time, large enough that
        # sending them costs little beside judging them.
        size = max(1, math.ceil(len(clips) / (4 * self.workers)))
        return Judging({name: [self._executor.submit(_judge_chunk, name, clips[i:i + size], sample_rate,
                                                     requested[i:i + size]) for i in range(0, len(clips), size)]
                        for name in names})

    def judge_adherence(self, names: list[str], clips: np.ndarray, sample_rate: int,
                        requested: list[dict]) -> dict[str, np.ndarray]:
        """:meth:`submit`, waited for."""
        return self.submit(names, clips, sample_rate, requested).result()

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "JudgePool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Judging:
    """Chunks queued by :meth:`JudgePool.submit`; :meth:`result` puts each judge's back in order."""

    def __init__(self, futures: dict[str, list]):
        self._futures = futures

    def result(self) -> dict[str, np.ndarray]:
        """Per judge, float64 ``[N]``, the chunks' figures in the clips' order."""
        try:
            return {name: np.concatenate([f.result() for f in fs]) if fs else np.zeros(0)
                    for name, fs in self._futures.items()}
        except BrokenProcessPool as e:
            raise RuntimeError(f"a judge worker process died ({e}); run with --judge-workers 0 to judge in this "
                               f"process and see its error") from None
