"""The training loops: prompts -> rollout actors -> reward workers -> learner -> weights back.

Three modes run the same plain classes:
  local  one process, no Ray (debugging and unit tests): :func:`run_local`;
  sync   on Ray: generate a batch, score it, learn, publish, repeat (the reference);
  async  on Ray: actors keep generating while the learner trains; admission keeps policy lag bounded.
The Ray modes are :class:`~divcfg.job.scheduler.Scheduler` over a :class:`~divcfg.job.pool.RayTopology`;
:func:`run_ray` is its one-call form.
"""
from __future__ import annotations

import time
from collections import deque

from divcfg.common.record import RolloutBatch
from divcfg.job.books import Accounting, PromptStream, admit, take
from divcfg.job.pool import RayTopology
from divcfg.job.scheduler import Scheduler


def run_local(learner, rollout, reward, stream: PromptStream, steps: int, batch_prompts: int, group_size: int,
              max_lag: int, on_step, groups_per_call: int = 1) -> Accounting:
    """Synchronous loop in one process: the reference that the Ray modes must match. It keeps the same books and
    applies the same admission rule as the scheduler."""
    acct = Accounting()
    rollout.set_weights(learner.version, learner.weights())
    for step in range(steps):
        t0 = time.perf_counter()
        items = [(pid, prompt, pid) for pid, prompt in (stream.next() for _ in range(batch_prompts))]
        groups = [g for i in range(0, len(items), groups_per_call)
                  for g in rollout.generate_groups(items[i:i + groups_per_call])]
        acct.generated += len(groups)
        t_gen = time.perf_counter() - t0
        t0 = time.perf_counter()
        scored = reward.score(groups)
        t_rew = time.perf_counter() - t0
        acct.dropped += sum(g is None for g in scored)
        ready = deque(admit([g for g in scored if g is not None], learner.version, max_lag, acct))
        ready = take(ready, len(ready), learner.version, acct)
        metrics = learner.step(RolloutBatch.concat(ready), group_size) if ready else {}
        t0 = time.perf_counter()
        rollout.set_weights(learner.version, learner.weights())
        metrics.update({"time/generate": t_gen, "time/reward": t_rew, "time/publish": time.perf_counter() - t0})
        on_step(step, RolloutBatch.concat(ready) if ready else None, metrics, acct)
    return acct


def run_ray(learner, topo: RayTopology, stream: PromptStream, steps: int, batch_prompts: int, group_size: int,
            max_lag: int, mode: str, queue_groups: int, on_step, target=None, on_event=None,
            max_role_failures: int = 5, reward_batch: int = 8, resume_prompts=(),
            groups_per_call: int = 1) -> Accounting:
    """Sync or async training over a :class:`RayTopology`: a :class:`Scheduler` run for ``steps`` steps."""
    scheduler = Scheduler(learner, topo, stream, batch_prompts=batch_prompts, group_size=group_size, max_lag=max_lag,
                          mode=mode, queue_groups=queue_groups, target=target, on_event=on_event,
                          max_role_failures=max_role_failures, reward_batch=reward_batch,
                          resume_prompts=resume_prompts, groups_per_call=groups_per_call)
    return scheduler.run(steps, on_step)
