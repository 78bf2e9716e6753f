"""The learner: the student, its optimizer, and the frozen CFG teacher. One update = ``L_distill + β · L_pg``.

A plain class: the training loop (``job/loop.py``) hosts one in the driver process, and each worker of a
data-parallel learner group (``learner/group.py``) runs one on its share of the batch.
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from contextlib import nullcontext

import numpy as np
import torch

from divcfg.common.record import RolloutBatch
from divcfg.learner.losses import group_advantages, reinforce_loss, reverse_kl, truncated_importance_weights
from divcfg.model.loaders import load_snapshot, snapshot_state
from divcfg.model.logprob import sequence_logprob


class StudentForward(torch.nn.Module):
    """The student's training forward as one module call, ``(codes [N, K, T], prompts) -> logits [N, K, T, V]``:
    DDP and FSDP hook a module's ``forward``, and the policy's training pass is ``encode_condition`` + ``logits``."""

    def __init__(self, student: torch.nn.Module):
        super().__init__()
        self.student = student

    def forward(self, codes: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return self.student.logits(codes, self.student.encode_condition(prompts))


class Learner:
    """``parallel`` (None: one process) joins a data-parallel learner group (:mod:`divcfg.learner.group`): it has
    ``wrap(module) -> module`` (DDP or FSDP around :class:`StudentForward`, applied before the optimizer is built),
    ``grad_scale`` (the factor the wrapper divides the summed gradients by) and ``reduce(sums, maxes)`` (all-reduce
    of two float64 metric vectors)."""

    def __init__(self, base_policy, *, beta: float, guidance_scale: float, lr: float, baseline: str, is_clip: float,
                 grad_clip: float, device: str = "cpu", amp: bool = True, kl_reduction: str = "mean", parallel=None,
                 lr_schedule: Callable[[int], float] | None = None):
        self.device = torch.device(device)
        self.student = base_policy.to(self.device).train()
        # The teacher is the frozen base model; CFG is applied on its logits at every scored position. Parameters
        # the student never trains (MusicGen's T5) are shared, not copied: deepcopy reuses what its memo holds.
        # It is copied before any sharding, so each worker keeps a whole teacher.
        frozen = {id(p): p for p in base_policy.parameters() if not p.requires_grad}
        self.teacher = copy.deepcopy(base_policy, frozen).to(self.device).eval().requires_grad_(False)
        self.beta, self.guidance_scale, self.baseline = beta, guidance_scale, baseline
        self.is_clip, self.grad_clip, self.kl_reduction = is_clip, grad_clip, kl_reduction
        self.parallel = parallel
        self.lr_schedule = lr_schedule  # the rate at each version; None keeps lr (learner/schedule.py)
        self.forward_student = StudentForward(self.student) if parallel is None else parallel.wrap(
            StudentForward(self.student))
        # Fused Adam: one kernel over all parameters instead of a pass per op, on CPU as on CUDA (clip + step of the
        # small model on one CPU thread: 12 against 32 ms). Same update and state dict as the default Adam. FSDP's
        # sharded parameters replace the student's, so the optimizer is built after the wrap.
        self.opt = torch.optim.Adam([p for p in self.student.parameters() if p.requires_grad], lr=lr,
                                    fused=getattr(parallel, "fused_adam", True))
        self.version = 0
        self.nonfinite_in_a_row = 0
        self.nonfinite_total = 0
        use_amp = amp and self.device.type == "cuda"
        self.autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_amp else nullcontext

    # ---- one update ---------------------------------------------------------------------------------------------
    def step(self, batch: RolloutBatch, group_size: int, total_samples: int | None = None) -> dict[str, float]:
        """One update on a batch of whole groups (rows ordered group by group). Returns metrics; a non-finite loss
        skips the update and is counted.

        In a learner group ``batch`` is this worker's share and ``total_samples`` the whole batch's sample count:
        each loss is the share's sum over ``total_samples``, so the workers' gradients add up to one worker's on the
        whole batch, and the metrics are reduced to the whole batch's values."""
        times = {}
        t0 = time.perf_counter()
        codes = torch.as_tensor(batch.codes, dtype=torch.long, device=self.device)
        with torch.no_grad(), self.autocast():
            teacher_logits = self.teacher.guided_logits(codes, self.teacher.encode_condition(batch.prompt),
                                                        self.guidance_scale)
        times["teacher"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        loss, sums = self._loss(batch, codes, teacher_logits, group_size, total_samples)
        metrics = self._metrics(batch, sums, total_samples or len(batch))
        if not math.isfinite(metrics["losses/total"]):  # the reduced total: every worker skips, or none does
            self.nonfinite_in_a_row += 1
            self.nonfinite_total += 1
            metrics["losses/nonfinite_skipped"] = float(self.nonfinite_total)
            return metrics
        self.nonfinite_in_a_row = 0
        self.opt.zero_grad(set_to_none=True)
        # DDP and FSDP average the workers' gradients; the losses are already shares of one sum, so undo the mean.
        (loss * self.parallel.grad_scale if self.parallel is not None else loss).backward()
        times["forward_backward"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.student.parameters(), self.grad_clip)
        if self.lr_schedule is not None:
            for group in self.opt.param_groups:  # from the version, so a resumed run continues the same curve
                group["lr"] = self.lr_schedule(self.version)
        self.opt.step()
        self.version += 1
        times["update"] = time.perf_counter() - t0
        metrics["losses/lr"] = self.opt.param_groups[0]["lr"]
        metrics["losses/grad_norm"] = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor")
                                            else grad_norm)
        metrics.update({f"time/{k}": v for k, v in times.items()})
        return metrics

    def _loss(self, batch: RolloutBatch, codes: torch.Tensor, teacher_logits: torch.Tensor, group_size: int,
              total_samples: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``L_distill + β · L_pg`` of these rows, and the float64 sums the metrics are made of:
        ``[Σ per-code KL, Σ importance weight, Σ policy lag, L_pg, L]`` (the losses are already shares)."""
        with self.autocast():
            student_logits = self.forward_student(codes, batch.prompt)
        behaviour_lp = torch.as_tensor(batch.logprobs, device=self.device).sum(dim=(1, 2))
        seq_lp = sequence_logprob(student_logits, codes)
        weights = truncated_importance_weights(seq_lp, behaviour_lp, self.is_clip)
        loss, m_kl = reverse_kl(student_logits, teacher_logits, weights, self.kl_reduction, total_samples)
        pg_value = 0.0
        if self.beta > 0:
            # Advantages compare samples within a group; shares hold whole groups, so they need no other share.
            rewards = torch.as_tensor(batch.diversity_reward, device=self.device).view(-1, group_size)
            adv = group_advantages(rewards, self.baseline).reshape(-1)
            pg, m_pg = reinforce_loss(seq_lp, adv, weights, total_samples)
            loss = loss + self.beta * pg
            pg_value = m_pg["pg"]
        lag = self.version - batch.policy_version  # versions behind the weights this update starts from
        sums = torch.tensor([m_kl["kl"] * len(batch), weights.sum().item(), float(lag.sum()), pg_value, loss.item()],
                            dtype=torch.float64)
        return loss, sums

    def _metrics(self, batch: RolloutBatch, sums: torch.Tensor, total: int) -> dict[str, float]:
        """The whole batch's metrics from this share's sums (all-reduced across a learner group)."""
        lag_max = torch.tensor([float((self.version - batch.policy_version).max())], dtype=torch.float64)
        if self.parallel is not None:
            sums, lag_max = self.parallel.reduce(sums, lag_max)
        kl, w, lag, pg, loss = sums.tolist()
        metrics = {"losses/distill_kl": kl / total, "rollout/is_weight_mean": w / total,
                   "rollout/policy_lag_mean": lag / total, "rollout/policy_lag_max": lag_max.item()}
        if self.beta > 0:
            metrics["losses/pg"] = pg
        metrics["losses/total"] = loss
        return metrics

    # ---- weights and state --------------------------------------------------------------------------------------
    def full_student_state(self) -> dict[str, torch.Tensor]:
        """The student's snapshot state (:func:`~divcfg.common.storage.checkpoint.snapshot_state`) as whole tensors: FSDP's
        shards are gathered, a collective every worker of the group must join."""
        return {k: _full(v) for k, v in snapshot_state(self.student).items()}

    def weights(self) -> dict[str, np.ndarray]:
        """A CPU numpy snapshot of the student, to be published once per version: the whole state dict, or only the
        trainable tensors of a policy with frozen parts (:func:`~divcfg.common.storage.checkpoint.snapshot_state`)."""
        return {k: v.detach().to("cpu").numpy().copy() for k, v in self.full_student_state().items()}

    def state(self) -> dict:
        """Optimizer state, version and counters; the optimizer's tensors whole (FSDP's shards gathered), so that the
        checkpoint is the same whatever the number of workers that wrote it."""
        opt = self.opt.state_dict()
        opt["state"] = {i: {k: _full(v) for k, v in st.items()} for i, st in opt["state"].items()}
        return {"optimizer": opt, "version": self.version, "nonfinite_total": self.nonfinite_total}

    def load_state(self, student_state: dict, state: dict) -> None:
        current = snapshot_state(self.student)
        load_snapshot(self.student, {k: _like(v, current.get(k)) for k, v in student_state.items()})
        self.opt.load_state_dict(state["optimizer"])
        for p, st in self.opt.state.items():  # whole tensors back into the parameter's shards (FSDP)
            for k, v in st.items():
                if torch.is_tensor(v) and v.shape == p.shape and v.dim() > 0:
                    st[k] = _like(v, p)
        self.version = int(state["version"])
        self.nonfinite_total = int(state.get("nonfinite_total", 0))

    @torch.no_grad()
    def probe_kl(self, prompts: list[str], samples: int, n_frames: int, seed: int) -> float:
        """Mean exact KL(student ‖ CFG teacher) on the student's own samples for held-out prompts."""
        self.student.eval()
        all_prompts = [p for p in prompts for _ in range(samples)]
        out = self.student.generate(self.student.encode_condition(all_prompts), n_frames,
                                    generator=torch.Generator(device=self.device).manual_seed(seed))
        s = self.student.logits(out.codes, self.student.encode_condition(all_prompts))
        t = self.teacher.guided_logits(out.codes, self.teacher.encode_condition(all_prompts), self.guidance_scale)
        self.student.train()
        return reverse_kl(s, t)[1]["kl"]


def _full(t):
    """A whole tensor from an FSDP-sharded one (a DTensor; gathering is a collective), else ``t`` itself."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _like(value: torch.Tensor, ref) -> torch.Tensor:
    """``value`` (a whole tensor) laid out as ``ref``: sharded the same way when ``ref`` is a DTensor."""
    if ref is None or not hasattr(ref, "device_mesh"):
        return value
    from torch.distributed.tensor import distribute_tensor  # start-up: ~2 s to import, for sharded groups only

    return distribute_tensor(value.to(ref.device_mesh.device_type), ref.device_mesh, ref.placements)
