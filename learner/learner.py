"""The learner: the student, its optimizer, and the frozen CFG teacher. One update = ``L_distill + β · L_pg``.

A plain class; the training loop (``job/loop.py``) hosts it in the driver process.
"""
from __future__ import annotations

import copy
import time
from contextlib import nullcontext

import numpy as np
import torch

from divcfg.common.checkpoint import load_snapshot, snapshot_state
from divcfg.common.record import RolloutBatch
from divcfg.learner.losses import (group_advantages, reinforce_loss, reverse_kl, sequence_logprob,
                                   truncated_importance_weights)


class Learner:
    def __init__(self, base_policy, *, beta: float, guidance_scale: float, lr: float, baseline: str, is_clip: float,
                 grad_clip: float, device: str = "cpu", amp: bool = True, kl_reduction: str = "mean"):
        self.device = torch.device(device)
        self.student = base_policy.to(self.device).train()
        # The teacher is the frozen base model; CFG is applied on its logits at every scored position. Parameters
        # the student never trains (MusicGen's T5) are shared, not copied: deepcopy reuses what its memo holds.
        frozen = {id(p): p for p in base_policy.parameters() if not p.requires_grad}
        self.teacher = copy.deepcopy(base_policy, frozen).to(self.device).eval().requires_grad_(False)
        self.beta, self.guidance_scale, self.baseline = beta, guidance_scale, baseline
        self.is_clip, self.grad_clip, self.kl_reduction = is_clip, grad_clip, kl_reduction
        # Fused Adam: one kernel over all parameters instead of a pass per op, on CPU as on CUDA (clip + step of the
        # small model on one CPU thread: 12 against 32 ms). Same update and state dict as the default Adam.
        self.opt = torch.optim.Adam([p for p in self.student.parameters() if p.requires_grad], lr=lr, fused=True)
        self.version = 0
        self.nonfinite_in_a_row = 0
        self.nonfinite_total = 0
        use_amp = amp and self.device.type == "cuda"
        self.autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_amp else nullcontext

    # ---- one update ---------------------------------------------------------------------------------------------
    def step(self, batch: RolloutBatch, group_size: int) -> dict[str, float]:
        """One update on a batch of whole groups (rows ordered group by group). Returns metrics; a non-finite loss
        skips the update and is counted."""
        times = {}
        t0 = time.perf_counter()
        codes = torch.as_tensor(batch.codes, dtype=torch.long, device=self.device)
        behaviour_lp = torch.as_tensor(batch.logprobs, device=self.device).sum(dim=(1, 2))
        with torch.no_grad(), self.autocast():
            teacher_logits = self.teacher.guided_logits(codes, self.teacher.encode_condition(batch.prompt),
                                                        self.guidance_scale)
        times["teacher"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        with self.autocast():
            student_logits = self.student.logits(codes, self.student.encode_condition(batch.prompt))
        seq_lp = sequence_logprob(student_logits, codes)
        weights = truncated_importance_weights(seq_lp, behaviour_lp, self.is_clip)
        distill, m_kl = reverse_kl(student_logits, teacher_logits, weights, self.kl_reduction)
        loss = distill
        lag = self.version - batch.policy_version  # versions behind the weights this update starts from
        metrics = {"losses/distill_kl": m_kl["kl"], "rollout/is_weight_mean": weights.mean().item(),
                   "rollout/policy_lag_mean": float(lag.mean()), "rollout/policy_lag_max": float(lag.max())}
        if self.beta > 0:
            rewards = torch.as_tensor(batch.diversity_reward, device=self.device).view(-1, group_size)
            adv = group_advantages(rewards, self.baseline).reshape(-1)
            pg, m_pg = reinforce_loss(seq_lp, adv, weights)
            loss = loss + self.beta * pg
            metrics["losses/pg"] = m_pg["pg"]
        metrics["losses/total"] = loss.item()
        if not torch.isfinite(loss):
            self.nonfinite_in_a_row += 1
            self.nonfinite_total += 1
            metrics["losses/nonfinite_skipped"] = float(self.nonfinite_total)
            return metrics
        self.nonfinite_in_a_row = 0
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        times["forward_backward"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.student.parameters(), self.grad_clip)
        self.opt.step()
        self.version += 1
        times["update"] = time.perf_counter() - t0
        metrics["losses/grad_norm"] = float(grad_norm)
        metrics.update({f"time/{k}": v for k, v in times.items()})
        return metrics

    # ---- weights and state --------------------------------------------------------------------------------------
    def weights(self) -> dict[str, np.ndarray]:
        """A CPU numpy snapshot of the student, to be published once per version: the whole state dict, or only the
        trainable tensors of a policy with frozen parts (:func:`~divcfg.common.checkpoint.snapshot_state`)."""
        return {k: v.detach().to("cpu").numpy().copy() for k, v in snapshot_state(self.student).items()}

    def state(self) -> dict:
        return {"optimizer": self.opt.state_dict(), "version": self.version, "nonfinite_total": self.nonfinite_total}

    def load_state(self, student_state: dict, state: dict) -> None:
        load_snapshot(self.student, student_state)
        self.opt.load_state_dict(state["optimizer"])
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
