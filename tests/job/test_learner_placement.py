"""Where `divcfg train` puts the learner (job/topology.py: build_learner): a group of Ray actors by default, with the
GPU choice made before any actor starts."""
import pytest
from omegaconf import OmegaConf

from divcfg.common.config.schema import TrainConfig
from divcfg.job.policy_source import PolicySource
from divcfg.job.topology import GroupTrainee, build_learner
from divcfg.learner.learner import Learner
from divcfg.model.policy import build_policy


class RecordedGroup:
    """Stands in for learner.group.LearnerGroup: records what the job asked of Ray instead of starting actors."""

    asked: list[dict] = []
    failure = (RuntimeError,)

    def __init__(self, spec, **kwargs):
        RecordedGroup.asked.append(kwargs)


def _build(monkeypatch, resolved, **learner):
    import divcfg.job.topology as topology
    monkeypatch.setattr(topology, "LearnerGroup", RecordedGroup)
    RecordedGroup.asked = []
    cfg = OmegaConf.structured(TrainConfig)
    for k, v in learner.items():
        OmegaConf.update(cfg, f"learner.{k}", v)
    policy = build_policy(seed=0)
    return build_learner(cfg, PolicySource(policy, None, lambda: build_policy(seed=0), None, None, n_frames=8),
                         resolved, steps=10)


def test_the_learner_is_a_group_by_default_and_auto_gives_each_worker_the_gpu(monkeypatch):
    on_cpu = _build(monkeypatch, "cpu")
    assert isinstance(on_cpu, GroupTrainee) and RecordedGroup.asked[-1]["num_gpus"] == 0
    # learner.device=auto on a driver that sees a GPU: each worker reserves one (it would otherwise train on CPU)
    _build(monkeypatch, "cuda", workers=2)
    assert RecordedGroup.asked[-1]["num_gpus"] == 1.0 and RecordedGroup.asked[-1]["workers"] == 2
    _build(monkeypatch, "cuda", num_gpus=0.5)
    assert RecordedGroup.asked[-1]["num_gpus"] == 0.5  # an explicit reservation is kept
    with pytest.raises(ValueError, match="learner.device=cuda and learner.num_gpus=0: give each worker a GPU"):
        _build(monkeypatch, "cuda", device="cuda")
    in_driver = _build(monkeypatch, "cpu", placement="driver")
    assert isinstance(in_driver, Learner) and RecordedGroup.asked == []
