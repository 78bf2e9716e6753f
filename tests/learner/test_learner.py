import numpy as np
import pytest
import torch

from divcfg.common.record import RolloutBatch, new_group
from divcfg.job.books import Accounting, PromptStream
from divcfg.job.books import admit as _admit
from divcfg.learner.learner import Learner
from divcfg.model.policy import build_policy


def make_groups(policy, prompts, g, frames, version=0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    groups = []
    for i, p in enumerate(prompts):
        out = policy.generate(policy.encode_condition([p] * g), frames, generator=gen)
        b = new_group(prompt_id=i, prompt=p, group_id=i, codes=out.codes.numpy(), logprobs=out.logprobs.numpy(),
                      policy_version=version, generate_s=0.0)
        groups.append(b.with_fields(diversity_reward=np.random.default_rng(i).random(g).astype(np.float32)))
    return RolloutBatch.concat(groups)


def test_learner_step_reduces_kl_on_a_fixed_batch():
    beta = 0.0
    base = build_policy(seed=0)
    # Make the CFG teacher differ from the student: train the null condition apart a little.
    with torch.no_grad():
        base.null_cond.add_(torch.randn_like(base.null_cond))
    learner = Learner(base, beta=beta, guidance_scale=3.0, lr=3e-3, baseline="loo", is_clip=2.0, grad_clip=1.0)
    batch = make_groups(learner.student, ["a slow melody", "fast drums"], g=3, frames=6)
    first = learner.step(batch, 3)
    for _ in range(15):
        last = learner.step(batch, 3)
    assert learner.version == 16
    assert last["losses/distill_kl"] < 0.7 * first["losses/distill_kl"], (first, last)
    assert "losses/pg" not in last
    # The teacher is frozen.
    assert all(not p.requires_grad for p in learner.teacher.parameters())


def test_kl_reduction_sum_scales_the_distill_term_by_the_codes_per_sample():
    """algo.kl_reduction=sum: at β = 0 the loss is K·T times the per-code mean KL (the logged KL stays per code)."""
    frames = 6
    batch = None
    losses = {}
    for reduction in ("mean", "sum"):
        learner = Learner(build_policy(seed=0), beta=0.0, guidance_scale=3.0, lr=1e-3, baseline="loo", is_clip=2.0,
                          grad_clip=1.0, kl_reduction=reduction)
        batch = batch or make_groups(learner.student, ["a slow melody"], g=2, frames=frames)
        losses[reduction] = learner.step(batch, 2)
    codes_per_sample = learner.student.cfg.n_codebooks * frames
    assert losses["sum"]["losses/distill_kl"] == pytest.approx(losses["mean"]["losses/distill_kl"], rel=1e-5)
    assert losses["sum"]["losses/total"] == pytest.approx(codes_per_sample * losses["mean"]["losses/total"], rel=1e-4)


def test_nonfinite_loss_skips_update():
    learner = Learner(build_policy(seed=0), beta=1.0, guidance_scale=3.0, lr=1e-3, baseline="loo", is_clip=2.0,
                      grad_clip=1.0)
    batch = make_groups(learner.student, ["x"], g=2, frames=4)
    batch.diversity_reward[:] = np.nan
    before = {k: v.clone() for k, v in learner.student.state_dict().items()}
    m = learner.step(batch, 2)
    assert learner.version == 0 and learner.nonfinite_in_a_row == 1 and m["losses/nonfinite_skipped"] == 1
    assert all(torch.equal(before[k], v) for k, v in learner.student.state_dict().items())


def test_stale_groups_are_dropped_and_counted():
    policy = build_policy(seed=0)
    groups = [make_groups(policy, ["a"], 2, 3, version=v) for v in (5, 3, 2)]
    acct = Accounting()
    kept = _admit(groups, version=5, max_lag=2, acct=acct)
    assert [int(g.policy_version[0]) for g in kept] == [5, 3] and acct.stale == 1


def test_waiting_groups_that_an_update_made_too_old_are_dropped_and_lags_are_taken_at_training_time():
    from collections import deque

    from divcfg.job.books import expire as _expire
    from divcfg.job.books import take as _take
    policy = build_policy(seed=0)
    ready = deque(make_groups(policy, ["a"], 2, 3, version=v) for v in (4, 3, 5))  # admitted at version 5, lag <= 2
    acct = Accounting()
    _expire(ready, version=6, max_lag=2, acct=acct)  # one update later, version 3 is 3 behind
    assert [int(g.policy_version[0]) for g in ready] == [4, 5] and acct.stale == 1
    batch = _take(ready, 2, version=6, acct=acct)
    assert len(batch) == 2 and acct.used == 2 and acct.lags == [2, 1] and not ready


def test_prompt_stream_is_deterministic_and_resumable():
    a = PromptStream(["p0", "p1", "p2"], seed=1)
    seq = [a.next() for _ in range(7)]
    b = PromptStream(["p0", "p1", "p2"], seed=1, position=4)
    assert [b.next() for _ in range(3)] == seq[4:]
    assert sorted(p for _, p in seq[:3]) == ["p0", "p1", "p2"]  # each epoch is a permutation


def test_pg_step_raises_the_likelihood_of_the_more_diverse_sample():
    from divcfg.model.logprob import sequence_logprob
    learner = Learner(build_policy(seed=0), beta=10.0, guidance_scale=1.0, lr=1e-3, baseline="loo", is_clip=2.0,
                      grad_clip=10.0)
    batch = make_groups(learner.student, ["a"], g=2, frames=4)
    batch.diversity_reward[:] = [1.0, 0.0]

    def gap():
        with torch.no_grad():
            codes = torch.as_tensor(batch.codes, dtype=torch.long)
            lp = sequence_logprob(learner.student.logits(codes, learner.student.encode_condition(batch.prompt)), codes)
        return (lp[0] - lp[1]).item()

    before = gap()
    learner.step(batch, 2)
    assert gap() > before


def test_bf16_rollout_actor_logprobs_match_the_fp32_learner_and_its_is_weights_stay_near_one():
    """actors.dtype=bf16: the actor keeps a bf16 copy loaded from the learner's fp32 snapshot. The log-probs it stores
    must be the fp32 student's to bf16 precision, so the truncated importance weights it feeds stay close to 1."""
    from divcfg.actors.rollout import RolloutWorker
    from divcfg.learner.losses import truncated_importance_weights
    from divcfg.model.logprob import sequence_logprob

    learner = Learner(build_policy(seed=0), beta=1.0, guidance_scale=3.0, lr=1e-3, baseline="loo", is_clip=2.0,
                      grad_clip=1.0)
    actor = RolloutWorker(lambda: build_policy(seed=1), n_frames=8, group_size=4, seed=0, dtype="bf16")
    actor.set_weights(0, learner.weights())  # the fp32 snapshot, cast on load
    assert all(p.dtype == torch.bfloat16 for p in actor.policy.parameters())
    assert torch.equal(actor.policy.null_cond.float(), learner.student.null_cond.to(torch.bfloat16).float())
    [group] = actor.generate_groups([(0, "a slow melody in a minor key", 0)])
    assert group.logprobs.dtype == np.float32 and np.isfinite(group.logprobs).all()

    codes = torch.as_tensor(group.codes, dtype=torch.long)
    with torch.no_grad():
        lp32 = torch.log_softmax(learner.student.logits(codes, learner.student.encode_condition(group.prompt)), -1)
    per_token32 = lp32.gather(-1, codes[..., None]).squeeze(-1)
    per_token16 = torch.as_tensor(group.logprobs)
    # bf16 keeps 8 mantissa bits: per-token log-probs agree to a few hundredths of a nat, not exactly.
    assert 0 < (per_token16 - per_token32).abs().mean() < 0.05
    seq32 = sequence_logprob(learner.student.logits(codes, learner.student.encode_condition(group.prompt)), codes)
    w = truncated_importance_weights(seq32, per_token16.sum(dim=(1, 2)), clip=2.0)
    assert torch.all((w - 1).abs() < 0.5), w
    # fp32 actors reproduce the learner's log-probs to float rounding: the bf16 gap above is precision, not a bug.
    actor32 = RolloutWorker(lambda: build_policy(seed=1), n_frames=8, group_size=4, seed=0)
    actor32.set_weights(0, learner.weights())
    [g32] = actor32.generate_groups([(0, "a slow melody in a minor key", 0)])
    c32 = torch.as_tensor(g32.codes, dtype=torch.long)
    with torch.no_grad():
        ref = torch.log_softmax(learner.student.logits(c32, learner.student.encode_condition(g32.prompt)), -1)
    assert torch.allclose(torch.as_tensor(g32.logprobs), ref.gather(-1, c32[..., None]).squeeze(-1), atol=1e-4)


def test_generate_groups_keeps_each_group_with_its_own_prompt():
    """Two groups in one batch: each group's codes and stored log-probs are its own prompt's (recomputed by the
    learner from that prompt), and the call's time is shared between them."""
    from divcfg.actors.rollout import RolloutWorker

    learner = Learner(build_policy(seed=0), beta=1.0, guidance_scale=3.0, lr=1e-3, baseline="loo", is_clip=2.0,
                      grad_clip=1.0)
    actor = RolloutWorker(lambda: build_policy(seed=0), n_frames=6, group_size=3, seed=0)
    actor.set_weights(4, learner.weights())
    groups = actor.generate_groups([(7, "a slow melody in a minor key", 70), (9, "loud fast drums", 90)])
    assert [int(g.prompt_id[0]) for g in groups] == [7, 9] and [int(g.group_id[0]) for g in groups] == [70, 90]
    assert all(g.codes.shape == (3, 4, 6) and int(g.policy_version[0]) == 4 for g in groups)
    for g in groups:
        codes = torch.as_tensor(g.codes, dtype=torch.long)
        with torch.no_grad():
            own = torch.log_softmax(learner.student.logits(codes, learner.student.encode_condition(g.prompt)), -1)
            other = torch.log_softmax(learner.student.logits(
                codes, learner.student.encode_condition([groups[0].prompt[0] if g is groups[1] else
                                                         groups[1].prompt[0]] * 3)), -1)
        lp = torch.as_tensor(g.logprobs)
        assert torch.allclose(lp, own.gather(-1, codes[..., None]).squeeze(-1), atol=1e-4)
        assert not torch.allclose(lp, other.gather(-1, codes[..., None]).squeeze(-1), atol=1e-4)
    assert groups[0].generate_s[0] == groups[1].generate_s[0] and actor.groups_done == 2


def test_total_loss_is_the_kl_plus_beta_times_the_weighted_loo_policy_gradient():
    """``losses/total`` against ``L_distill + β · L_pg`` assembled by hand: importance weights chosen through the
    behaviour log-probs (one above the clip), the leave-one-out baseline written as a loop. Dropping the weights
    from either term, or the ``mean`` baseline, moves the total far beyond the tolerance (checked below)."""
    from divcfg.learner.losses import reverse_kl, truncated_importance_weights
    from divcfg.model.logprob import sequence_logprob
    beta, g, clip, gamma = 0.7, 3, 2.0, 3.0
    learner = Learner(build_policy(seed=0), beta=beta, guidance_scale=gamma, lr=1e-3, baseline="loo", is_clip=clip,
                      grad_clip=1.0)
    batch = make_groups(learner.student, ["a slow melody", "fast drums"], g=g, frames=5)
    codes = torch.as_tensor(batch.codes, dtype=torch.long)
    with torch.no_grad():
        student = learner.student.logits(codes, learner.student.encode_condition(batch.prompt))
        teacher = learner.teacher.guided_logits(codes, learner.teacher.encode_condition(batch.prompt), gamma)
    seq_lp = sequence_logprob(student, codes).double()
    chosen = np.array([0.5, 1.3, 3.0, 0.8, 1.0, 1.7])  # π_θ(y) / μ(y) per sample; 3.0 is clipped to 2.0
    n_codes = codes.shape[1] * codes.shape[2]
    batch.logprobs[:] = ((seq_lp.numpy() - np.log(chosen)) / n_codes)[:, None, None]  # log μ(y), spread evenly
    weights = truncated_importance_weights(seq_lp.float(), torch.as_tensor(batch.logprobs).sum(dim=(1, 2)), clip)
    assert np.allclose(weights.numpy(), np.minimum(chosen, clip), rtol=1e-4)

    rewards = batch.diversity_reward.astype(np.float64).reshape(-1, g)
    loo = np.array([[r[i] - np.mean(np.delete(r, i)) for i in range(g)] for r in rewards]).reshape(-1)
    w = weights.double()  # the chosen ones to float32 rounding, as the learner computes them
    kl = reverse_kl(student, teacher, weights)[0].item()
    pg = -(w * torch.as_tensor(loo) * seq_lp).mean().item()
    metrics = learner.step(batch, g)
    assert metrics["losses/total"] == pytest.approx(kl + beta * pg, rel=1e-5)
    assert metrics["losses/pg"] == pytest.approx(pg, rel=1e-5)

    # What the mutations would compute instead: each is far outside the tolerance above.
    mean_adv = (rewards - rewards.mean(1, keepdims=True)).reshape(-1)
    unweighted = reverse_kl(student, teacher)[0].item() - beta * (torch.as_tensor(loo) * seq_lp).mean().item()
    with_mean = kl - beta * (w * torch.as_tensor(mean_adv) * seq_lp).mean().item()
    for wrong in (unweighted, with_mean):
        assert abs(wrong - (kl + beta * pg)) > 1e-3 * abs(kl + beta * pg)


def test_learner_state_through_a_checkpoint_resumes_the_same_update(tmp_path):
    """``Learner.state`` -> ``save_train_state`` -> ``load_train_state`` -> ``Learner.load_state`` on a fresh learner:
    the next update is bit for bit the one the original learner makes (Adam's moments and step count came back)."""
    from divcfg.common.storage.checkpoint import atomic_dir
    from divcfg.common.storage.train_state import load_train_state, save_train_state
    from divcfg.model.loaders import snapshot_state

    def fresh():
        return Learner(build_policy(seed=0), beta=1.0, guidance_scale=3.0, lr=1e-2, baseline="loo", is_clip=2.0,
                       grad_clip=1.0)
    a = fresh()
    batch = make_groups(a.student, ["a slow melody"], g=2, frames=4)
    a.step(batch, 2)
    a.nonfinite_total = 2
    with atomic_dir(tmp_path / "ck") as tmp:
        save_train_state(tmp, a.state())
    b = fresh()
    b.load_state({k: v.clone() for k, v in snapshot_state(a.student).items()}, load_train_state(tmp_path / "ck"))
    assert b.version == 1 and b.nonfinite_total == 2
    b.nonfinite_in_a_row = 3  # a finite update resets the run of skipped ones
    batch.policy_version[:] = [0, 1]  # made one update ago, and at the version the learner now has
    ma, mb = a.step(batch, 2), b.step(batch, 2)
    assert b.nonfinite_in_a_row == 0 and mb["rollout/policy_lag_mean"] == 0.5 and mb["rollout/policy_lag_max"] == 1.0
    assert ma["losses/total"] == mb["losses/total"] and ma["losses/grad_norm"] == mb["losses/grad_norm"] > 0
    assert all(torch.equal(x, y) for x, y in zip(a.student.state_dict().values(), b.student.state_dict().values()))


def test_a_step_reports_each_metric_the_step_log_charts():
    """The metric names are read by the step log's TensorBoard layout (job/step_log.py) and the learner benchmark:
    the losses, the rollout statistics and the step's time split, each time non-negative."""
    learner = Learner(build_policy(seed=0), beta=1.0, guidance_scale=3.0, lr=1e-3, baseline="loo", is_clip=2.0,
                      grad_clip=1.0)
    batch = make_groups(learner.student, ["a slow melody"], g=2, frames=4)
    m = learner.step(batch, 2)
    times = {"time/teacher", "time/forward_backward", "time/update"}
    assert set(m) == {"losses/distill_kl", "losses/pg", "losses/total", "losses/grad_norm", "losses/lr",
                      "rollout/is_weight_mean", "rollout/policy_lag_mean", "rollout/policy_lag_max"} | times
    assert all(m[k] >= 0 for k in times)
    learner.beta = 0.0
    assert "losses/pg" not in learner.step(batch, 2)


class _Parallel:
    """The ``parallel`` interface of a learner-group worker (learner/group.py's DataParallel) in one process."""

    def __init__(self, fused_adam: bool):
        self.fused_adam, self.grad_scale, self.wrapped = fused_adam, 1.0, None

    def wrap(self, module):
        self.wrapped = module
        return module

    def reduce(self, sums, maxes):
        return sums, maxes


def test_adam_is_fused_unless_the_group_wrapper_says_it_cannot_be():
    """Fused Adam for one learner and a DDP worker; not where ``parallel.fused_adam`` is False (FSDP's shards)."""
    assert Learner(build_policy(seed=0), beta=1.0, guidance_scale=3.0, lr=1e-3, baseline="loo", is_clip=2.0,
                   grad_clip=1.0).opt.defaults["fused"] is True
    for fused in (True, False):
        parallel = _Parallel(fused)
        learner = Learner(build_policy(seed=0), beta=1.0, guidance_scale=3.0, lr=1e-3, baseline="loo", is_clip=2.0,
                          grad_clip=1.0, parallel=parallel)
        assert learner.opt.defaults["fused"] is fused
        assert learner.forward_student is parallel.wrapped and parallel.wrapped.student is learner.student


def test_beta_zero_trains_groups_of_one_without_rewards():
    """β = 0 (pure distillation) admits algo.group_size=1 (common/config/checks.py) and needs no reward: the policy
    gradient is skipped, not computed and multiplied by zero (the leave-one-out baseline refuses groups of one, and a
    NaN reward times zero is NaN, which would skip every update)."""
    learner = Learner(build_policy(seed=0), beta=0.0, guidance_scale=3.0, lr=1e-3, baseline="loo", is_clip=2.0,
                      grad_clip=1.0)
    batch = make_groups(learner.student, ["a slow melody", "fast drums"], g=1, frames=4)
    batch.diversity_reward[:] = np.nan  # not scored
    m = learner.step(batch, 1)
    assert learner.version == 1 and learner.nonfinite_total == 0 and "losses/pg" not in m
    assert np.isfinite(m["losses/total"]) and m["losses/total"] == pytest.approx(m["losses/distill_kl"], rel=1e-5)


def test_an_fsdp_worker_resumes_from_a_single_learners_checkpoint():
    """learner.shard=fsdp, one worker in this process: ``load_state`` lays the whole tensors of a single learner's
    checkpoint out as the worker's DTensors (parameters and Adam's moments), saves them back unchanged and makes the
    single learner's next update."""
    from divcfg.learner.group import LearnerGroupWorker, LearnerSpec, free_port
    if torch.distributed.is_initialized():
        pytest.skip("this process already belongs to a process group")
    spec = LearnerSpec(lambda: build_policy(seed=0), dict(beta=1.0, guidance_scale=3.0, lr=1e-2, baseline="loo",
                                                           is_clip=2.0, grad_clip=1.0))
    one = spec.build("cpu")
    batch = make_groups(one.student, ["a slow melody"], g=2, frames=4)
    one.step(batch, 2)
    saved = ({k: v.clone() for k, v in one.full_student_state().items()}, one.state())
    worker = LearnerGroupWorker(spec, 0, 1, f"tcp://127.0.0.1:{free_port()}", shard="fsdp")
    try:
        worker.load_state(*saved)
        assert type(next(iter(worker.learner.opt.state.values()))["exp_avg"]).__name__ == "DTensor"
        student, state = worker.state()
        assert student.keys() == saved[0].keys() and all(torch.equal(student[k], saved[0][k]) for k in student)
        for i, st in saved[1]["optimizer"]["state"].items():
            assert all(torch.equal(state["optimizer"]["state"][i][k], v) for k, v in st.items())
        assert worker.step(batch, 2, len(batch))["losses/total"] == one.step(batch, 2)["losses/total"]
        weights = worker.weights()
        for k, v in one.weights().items():
            np.testing.assert_allclose(weights[k], v, atol=1e-6, err_msg=k)
    finally:
        worker.close()
