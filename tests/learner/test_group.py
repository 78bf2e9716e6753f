"""The data-parallel learner group: N workers on shares of whole groups make exactly the one-worker update.

The equivalence tests run two worker processes with gloo (``spawn_workers``, no Ray) and compare them with a single
:class:`Learner` on the whole batch, which is the reference: same weights after the step, same optimizer state, same
reduced metrics.
"""
import numpy as np
import pytest
import torch

from divcfg.common.record import RolloutBatch, new_group
from divcfg.learner.group import (
    LearnerGroupError,
    LearnerGroupWorker,
    LearnerSpec,
    check_resources,
    check_shard,
    spawn_workers,
    split_groups,
)
from divcfg.model.policy import build_policy

G = 2


class TinyPolicy:
    """The base policy every worker builds (picklable): the tiny preset with a null condition moved away from the
    conditional one, so that the CFG teacher and the student differ and the KL has a gradient."""

    def __call__(self):
        policy = build_policy(seed=0)
        with torch.no_grad():
            policy.null_cond.add_(torch.randn(policy.null_cond.shape, generator=torch.Generator().manual_seed(1)))
        return policy


def make_batch(n_groups: int, frames: int = 4, seed: int = 0) -> RolloutBatch:
    """``n_groups`` groups sampled from the base policy, with log-probs perturbed (so the importance weights vary,
    some clipped at 2), policy versions 0 and -1 (lags 0 and 1), and random rewards."""
    policy, gen, rng = TinyPolicy()(), torch.Generator().manual_seed(seed), np.random.default_rng(seed)
    groups = []
    with torch.no_grad():
        for i in range(n_groups):
            prompt = ["a slow melody", "fast drums", "a bright synth line"][i % 3]
            out = policy.generate(policy.encode_condition([prompt] * G), frames, generator=gen)
            lp = out.logprobs.numpy() + rng.normal(0, 0.15, out.logprobs.shape).astype(np.float32)
            groups.append(new_group(prompt_id=i, prompt=prompt, group_id=i, codes=out.codes.numpy(), logprobs=lp,
                                    policy_version=-(i % 2), generate_s=0.0)
                          .with_fields(diversity_reward=rng.uniform(0, 2, G).astype(np.float32)))
    return RolloutBatch.concat(groups)


def spec(beta: float, kl_reduction: str) -> LearnerSpec:
    return LearnerSpec(TinyPolicy(), dict(beta=beta, guidance_scale=3.0, lr=1e-2, baseline="loo", is_clip=2.0,
                                          grad_clip=1.0, kl_reduction=kl_reduction))


def numpy_state(student, state):
    opt = {i: {k: v.numpy().copy() for k, v in st.items()} for i, st in state["optimizer"]["state"].items()}
    return {k: v.numpy().copy() for k, v in student.items()}, opt, state["version"]


# ---- what each worker process runs -----------------------------------------------------------------------------------
def _worker_main(rank, workers, init_method, cases, first, checkpoint, second):
    """For each case: a fresh worker (one process group for all) takes one step on its share of ``first`` and reports
    the reduced metrics, the published weights and the checkpoint state (both from worker 0 only). Then the two
    checkpoint directions, each continued on ``second`` from one state on both sides: a group saves after its step
    on ``first`` and steps on; a group loads a single learner's ``checkpoint``, saves it back and steps. One spawn
    for all: starting processes is the slow part."""
    out = []
    for beta, reduction, shard in cases:
        worker = LearnerGroupWorker(spec(beta, reduction), rank, workers, init_method, shard=shard)
        metrics = worker.step(split_groups(first, G, workers)[rank], G, len(first))
        weights, state = worker.weights(), worker.state()
        out.append((metrics, weights, numpy_state(*state) if state else None))
    saver = LearnerGroupWorker(spec(2.0, "sum"), rank, workers, init_method)
    saver.step(split_groups(first, G, workers)[rank], G, len(first))
    saved = saver.state()
    saver.step(split_groups(second, G, workers)[rank], G, len(second))
    loader = LearnerGroupWorker(spec(2.0, "sum"), rank, workers, init_method)
    loader.load_state(*checkpoint)
    loaded = loader.state()
    loader.step(split_groups(second, G, workers)[rank], G, len(second))
    return out, (saved, saver.weights()), (loaded, loader.weights())


def reference_step(beta, reduction, batch):
    learner = spec(beta, reduction).build("cpu")
    metrics = learner.step(batch, G)
    return learner, metrics


def assert_same_weights(learner, weights, lr=1e-2, atol=2e-6):
    """Adam's steps are about ``lr · g / (|g| + ε)``, ε = 1e-8: where ``|g|`` is small, float rounding of the gradient
    (summed in another order across workers) moves the step by up to ``lr · δg / |g|``, and near 0 flips it. So
    entries with ``|g| > 1e-4`` (first moment ``0.1 g`` above 1e-5) are held to float rounding, the others to the
    size of the steps taken."""
    trained = {name: p for name, p in learner.student.named_parameters() if p.requires_grad}
    state = {k: learner.opt.state.get(p, {}) for k, p in trained.items()}  # .get: the state is a defaultdict
    moments = {k: st["exp_avg"] for k, st in state.items() if "exp_avg" in st}
    for k, v in learner.weights().items():
        settled = np.abs(moments[k].numpy()) > 1e-5 if k in moments else np.ones(v.shape, bool)
        np.testing.assert_allclose(weights[k][settled], v[settled], atol=atol, rtol=1e-5, err_msg=k)
        assert np.abs(weights[k] - v).max() <= 2.01 * lr * max(1, learner.version), k


def assert_same_state(learner, state):
    ref_student, ref_opt, ref_version = numpy_state(learner.full_student_state(), learner.state())
    student, opt, version = state
    assert version == ref_version == 1 and opt.keys() == ref_opt.keys() and student.keys() == ref_student.keys()
    for i in ref_opt:  # the moments are the gradients: held to float rounding
        for k in ref_opt[i]:
            # Rounding is relative to the summands, not to their sum: where a gradient entry nearly cancels (an
            # AMD EPYC run saw 2.6e-6 off by 1.5e-9), its error is float rounding of the tensor's own scale.
            scale = float(np.abs(ref_opt[i][k]).max()) if np.size(ref_opt[i][k]) else 0.0
            np.testing.assert_allclose(opt[i][k], ref_opt[i][k], atol=max(1e-9, 1e-5 * scale), rtol=1e-4,
                                       err_msg=f"{i}/{k}")


CASES = [(0.0, "mean", "none"), (0.0, "sum", "none"), (2.0, "mean", "none"), (2.0, "sum", "none"),
         (2.0, "sum", "fsdp")]


@pytest.fixture(scope="module")
def two_workers():
    """Two gloo workers (:func:`_worker_main`) on ``first`` and ``second``, 3 groups each (shares of 2 and 1)."""
    first, second = make_batch(3, seed=0), make_batch(3, seed=1)
    reference, _ = reference_step(2.0, "sum", first)
    checkpoint = (reference.full_student_state(), reference.state())
    return first, second, spawn_workers(_worker_main, 2, CASES, first, checkpoint, second)


def test_two_workers_make_the_one_worker_update_on_an_odd_number_of_groups(two_workers):
    """β = 0 and β > 0, KL mean and sum, DDP and FSDP: the step, the optimizer state and every reduced metric equal
    one learner's on the whole batch."""
    batch, _, [(out0, *_), (out1, *_)] = two_workers
    for (beta, reduction, shard), (metrics, weights, state), (metrics1, weights1, state1) in zip(CASES, out0, out1):
        learner, ref = reference_step(beta, reduction, batch)
        assert weights1 is None and state1 is None  # only worker 0 publishes and checkpoints
        assert_same_state(learner, state)
        assert_same_weights(learner, weights)
        assert 0.5 < ref["rollout/is_weight_mean"] < 2.0 and ref["rollout/policy_lag_max"] == 1.0
        for key, value in ref.items():
            if key.startswith(("losses/", "rollout/")):
                assert metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-7), (beta, reduction, shard, key)
                assert metrics1[key] == metrics[key]  # every worker holds the reduced value
        assert ("losses/pg" in metrics) == (beta > 0)


def test_checkpoints_move_between_one_and_two_workers(two_workers):
    """N = 2 -> N = 1: the state worker 0 saves, loaded into one learner, makes the step the two workers make next.
    N = 1 -> N = 2: one learner's checkpoint, loaded into two workers, is what they save back, and they make the
    step that learner makes next."""
    first, second, [(_, (saved, after_two), (loaded, continued_by_two)), _] = two_workers
    one = spec(2.0, "sum").build("cpu")
    one.load_state(*saved)
    assert_same_state_exactly(one.full_student_state(), one.state(), *saved)
    one.step(second, G)
    assert one.version == 2
    assert_same_weights(one, after_two)

    reference, _ = reference_step(2.0, "sum", first)
    assert_same_state_exactly(*loaded, reference.full_student_state(), reference.state())
    reference.step(second, G)
    assert_same_weights(reference, continued_by_two)


def assert_same_state_exactly(student, state, ref_student, ref_state):
    assert student.keys() == ref_student.keys() and all(torch.equal(student[k], ref_student[k]) for k in student)
    assert state["version"] == ref_state["version"] and state["nonfinite_total"] == ref_state["nonfinite_total"]
    opt, ref_opt = state["optimizer"], ref_state["optimizer"]
    assert opt["param_groups"] == ref_opt["param_groups"] and opt["state"].keys() == ref_opt["state"].keys()
    for i, st in ref_opt["state"].items():
        assert st.keys() == opt["state"][i].keys() and all(torch.equal(opt["state"][i][k], v) for k, v in st.items())


# ---- splitting and bad input -----------------------------------------------------------------------------------------
def test_split_keeps_whole_groups_in_order_and_the_first_shares_larger():
    batch = make_batch(5, frames=2)
    shares = split_groups(batch, G, 3)
    assert [list(s.group_id) for s in shares] == [[0, 0, 1, 1], [2, 2, 3, 3], [4, 4]]
    assert RolloutBatch.concat(shares) == batch
    with pytest.raises(ValueError, match="learner.workers=6"):
        split_groups(batch, G, 6)
    with pytest.raises(ValueError, match="algo.group_size=3"):
        split_groups(batch, 3, 2)


def test_bad_group_settings_are_refused_naming_the_key():
    nodes = [{"Alive": True, "Resources": {"CPU": 8.0, "GPU": 4.0}}, {"Alive": False, "Resources": {"GPU": 8.0}}]
    check_resources(2, 4.0, nodes)
    with pytest.raises(LearnerGroupError, match=r"learner.workers=0"):
        check_resources(0, 0.0, nodes)
    with pytest.raises(LearnerGroupError, match=r"learner.num_gpus=8.*the most on one node is 4"):
        check_resources(1, 8.0, nodes)
    with pytest.raises(LearnerGroupError, match=r"learner.num_gpus=0.5 with learner.workers=2"):
        check_resources(2, 0.5, nodes)
    # Custom resources pin the bundles to a node type: one live node must advertise them (the dead one does not count)
    nodes[0]["Resources"]["learner_node"] = 1.0
    nodes[1]["Resources"]["big_node"] = 1.0
    check_resources(2, 1.0, nodes, {"learner_node": 1.0})
    with pytest.raises(LearnerGroupError, match=r"learner.resources.big_node=1 per worker: no live node"):
        check_resources(1, 1.0, nodes, {"big_node": 1.0})
    with pytest.raises(LearnerGroupError, match=r"learner.resources.GPU=1.0: custom resources only"):
        check_resources(1, 1.0, nodes, {"GPU": 1.0})
    with pytest.raises(LearnerGroupError, match=r"learner.shard='zero3'"):
        check_shard("zero3", "divcfg")
    check_shard("fsdp", "musicgen")  # both families shard
    with pytest.raises(LearnerGroupError, match=r"learner.shard=fsdp with model.family=jax: FSDP sharding is "
                                                r"implemented for \['divcfg', 'musicgen'\] only"):
        check_shard("fsdp", "jax")


def test_config_refuses_bad_group_settings_naming_the_field():
    from omegaconf import OmegaConf

    from divcfg.common.config.checks import ConfigError, validate_train
    from divcfg.common.config.schema import TrainConfig

    def validate(**changes):
        c = OmegaConf.structured(TrainConfig)
        for k, v in changes.items():
            OmegaConf.update(c, k, v)
        validate_train(c)

    validate(**{"learner.workers": 4, "algo.batch_prompts": 4, "learner.shard": "fsdp"})
    validate(**{"learner.shard": "fsdp", "model.family": "musicgen", "model.musicgen": "tiny-random"})
    for changes, message in [({"learner.workers": 0}, "learner.workers=0: must be >= 1"),
                             ({"learner.workers": 5}, "algo.batch_prompts=4: must be >= learner.workers=5"),
                             ({"learner.shard": "zero3"}, "learner.shard='zero3': must be none or fsdp"),
                             ({"learner.num_gpus": -1.0}, "learner.num_gpus=-1.0: must be >= 0")]:
        with pytest.raises(ConfigError, match=message):
            validate(**changes)


@pytest.mark.ray
def test_learner_group_on_ray_steps_and_checkpoints_as_one_learner():
    """Two worker actors in a placement group: the step, the published weights and the checkpoint of one learner."""
    import sys

    import ray

    from divcfg.learner.group import LearnerGroup
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with pytest.raises(LearnerGroupError, match="learner.num_gpus=1"):
            LearnerGroup(spec(2.0, "mean"), workers=2, num_gpus=1.0)  # this cluster has no GPU
        group = LearnerGroup(spec(2.0, "mean"), workers=2, num_cpus=1.0)
        batch = make_batch(3)
        learner, ref = reference_step(2.0, "mean", batch)
        metrics = group.step(batch, G)
        assert group.version == 1 and metrics["losses/total"] == pytest.approx(ref["losses/total"], rel=1e-5)
        assert_same_weights(learner, group.weights())
        student, state = group.state_dict()
        assert_same_state(learner, numpy_state(student, state))
        group.shutdown()
    finally:
        ray.shutdown()
