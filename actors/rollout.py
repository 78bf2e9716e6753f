"""Rollout actors: a copy of the student that turns a prompt into a group of G samples, without CFG.

:class:`RolloutWorker` is a plain class (tested without Ray); :func:`remote_rollout_worker` is its Ray shell.
A group is always generated under one policy version: weights are only swapped between calls.
"""
from __future__ import annotations

import time

import psutil

from divcfg.common.runtime.transport import ObjectStoreTransport

# A replacement actor's cold start, by timestamps it records itself (``stats()["startup"]``, `divcfg bench
# coldstart`): the imports below, torch above all, are the largest part of it (RELIABILITY.md, "Cold start").
_IMPORT_START = time.time()
import numpy as np  # noqa: E402
import torch  # noqa: E402

from divcfg.common.record import RolloutBatch, new_group  # noqa: E402
from divcfg.model.loaders import load_snapshot

_IMPORTED = time.time()


ROLLOUT_TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class RolloutWorker:
    def __init__(self, policy_factory, n_frames: int, group_size: int, temperature: float = 1.0, threads: int = 1,
                 seed: int = 0, device: str = "cpu", transport=None, dtype: str = "fp32"):

        self.startup = {"process_start": psutil.Process().create_time(), "import_start": _IMPORT_START,
                        "imported": _IMPORTED, "init_start": time.time()}
        torch.set_num_threads(threads)
        self.transport = transport or ObjectStoreTransport()  # must match the learner side's (common/runtime/transport.py)
        # bf16 (actors.dtype): only the actors' copy; set_weights casts each fp32 snapshot as it loads it.
        self.policy = policy_factory().to(device=device, dtype=ROLLOUT_TORCH_DTYPES[dtype]).eval()
        self.n_frames, self.group_size, self.temperature = n_frames, group_size, temperature
        self.version = -1
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.groups_done = 0
        self.busy_s = 0.0
        self.startup["built"] = time.time()

    def set_weights(self, version: int, weights) -> int:
        """Load a published snapshot: numpy arrays (read zero-copy from the object store) or a transport handle."""
        self.startup.setdefault("weights_start", time.time())
        weights = self.transport.receive(weights)
        state = {k: torch.from_numpy(np.asarray(v)) for k, v in weights.items()}
        load_snapshot(self.policy, state)  # the whole state dict, or only the trainable tensors (MusicGen)
        self.version = version
        self.startup.setdefault("weights_end", time.time())
        return version

    def generate_groups(self, items: list[tuple[int, str, int]]) -> list[RolloutBatch]:
        """``(prompt_id, prompt, group_id)`` items -> one group of G samples each, generated as one batch of
        ``len(items) · G`` rows under the current version. A KV-cached decoding step costs about as much for 8 rows
        as for 4 on a CPU (the weights are read once per step either way): two groups per call raised an actor's rate
        about 1.7× on the small world (``actors.groups_per_call``)."""
        if self.version < 0:
            raise RuntimeError("rollout worker has no weights yet: call set_weights first")
        self.startup.setdefault("first_call_start", time.time())
        start = time.perf_counter()
        g = self.group_size
        cond = self.policy.encode_condition([prompt for _, prompt, _ in items for _ in range(g)])
        out = self.policy.generate(cond, self.n_frames, temperature=self.temperature, generator=self.generator)
        codes, logprobs = out.codes.cpu().numpy(), out.logprobs.cpu().numpy()
        seconds = time.perf_counter() - start
        self.groups_done += len(items)
        self.busy_s += seconds
        self.startup.setdefault("first_call_end", time.time())
        # The CPU this process has used by its first result (all its threads): what a start costs the node.
        if "cpu_s_at_first_result" not in self.startup:  # once: not a clock read on every later call
            self.startup["cpu_s_at_first_result"] = time.process_time()
        share = seconds / len(items)  # each group's part of the call: a step's sum counts the call once
        return [new_group(prompt_id=pid, prompt=prompt, group_id=gid, codes=codes[i * g:(i + 1) * g],
                          logprobs=logprobs[i * g:(i + 1) * g], policy_version=self.version, generate_s=share)
                for i, (pid, prompt, gid) in enumerate(items)]

    def stats(self) -> dict:
        """Work done, and the startup timestamps (wall clock, ``time.time()``): process start, module imports
        (start, end), ``__init__`` (start, model built), first weights load and first call (start, end)."""
        return {"groups": self.groups_done, "busy_s": self.busy_s, "version": self.version,
                "startup": dict(self.startup)}


def remote_rollout_worker(num_cpus: float, num_gpus: float):
    """The Ray shell: placement only. Ray's restarts are off: the loop replaces a dead actor with a fresh one that
    receives the newest weights before it generates, so no group is ever made with stale boot-time weights. Task
    events are off: the GCS keeps the events of the calls reported to it, and grew by 32 KB a learner step (82 to
    241 MiB in a 30-minute soak, RELIABILITY.md), for a per-call trace that the job's own metrics already give."""
    import ray  # start-up: ray takes ~1.1 s to import; the plain classes here run without it
    return ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=0, enable_task_events=False)(RolloutWorker)
