"""``reward.embedder=DIR``: a directory holding an embedder saved by save_embedder is accepted, and the reward worker
scores diversity with it; "reward" and "eval" stay the world's own; a directory that is not an embedder is refused
at start-up, naming it and saying what it is."""
import os

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from divcfg.common.config.checks import ConfigError, validate_train
from divcfg.common.config.schema import TrainConfig
from divcfg.common.record import new_group
from divcfg.common.storage.checkpoint import save_weights
from divcfg.job.topology import reward_embedder
from divcfg.job.train import check_reward_embedder, train
from divcfg.reward.diversity import diversity_reward
from divcfg.reward.embedder import MusicEmbedder, embedder_config, load_embedder, save_embedder
from divcfg.reward.worker import RewardWorker

torch.set_num_threads(1)
SR = 16000


def cfg(embedder: str):
    c = OmegaConf.structured(TrainConfig)
    OmegaConf.update(c, "reward.embedder", embedder)
    return c


@pytest.fixture
def saved(tmp_path):
    model = MusicEmbedder(embedder_config("tiny", seed=5, sample_rate=SR)).eval()
    save_embedder(model, tmp_path / "my_embedder")
    return tmp_path / "my_embedder"


class WaveCodec:
    """Codes 'decode' to a sine per sample, its pitch set by the codes."""

    sample_rate = SR

    def decode(self, codes):
        t = torch.arange(SR) / SR
        hz = 200 + 10 * torch.as_tensor(np.asarray(codes)).float().mean(dim=(1, 2))
        return 0.3 * torch.sin(2 * torch.pi * hz[:, None] * t)


class Refuse:
    """A world embedder that must not be asked when reward.embedder names a directory."""

    def __init__(self, which):
        self.which = which

    def embed(self, wav, sample_rate):
        raise AssertionError(f"the world's {self.which} embedder was asked, not reward.embedder's directory")


def WaveJudges():  # noqa: N802 (a judges factory, as reward workers take one)
    """The world's judges, as far as a reward worker uses them, with world embedders that refuse to embed."""
    from divcfg.reward.judges import Judges
    return Judges(WaveCodec(), Refuse("reward"), Refuse("eval"), scorer=None)


def test_a_saved_embedder_is_accepted_and_the_worker_scores_with_it(saved):
    c = cfg(str(saved))
    validate_train(c)
    check_reward_embedder(c)
    worker = RewardWorker(WaveJudges, reward_embedder(c))
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 32, (4, 2, 10))
    group = new_group(prompt_id=0, prompt="p", group_id=0, codes=codes, logprobs=np.zeros((4, 2, 10), np.float32),
                      policy_version=0, generate_s=0.0)
    [scored] = worker.score([group])
    assert scored is not None and worker.dropped == 0
    want = diversity_reward(load_embedder(saved).embed(WaveCodec().decode(codes), SR)[None])[0]
    np.testing.assert_allclose(scored.diversity_reward, want.numpy(), rtol=1e-5, atol=1e-6)


def test_the_worlds_own_embedders_keep_their_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "reward").mkdir()  # a directory named like the world's embedder does not shadow it
    for name in ("reward", "eval"):
        validate_train(cfg(name))
        check_reward_embedder(cfg(name))
        assert reward_embedder(cfg(name)) == name
        worker = RewardWorker(WaveJudges, name)  # the world's own, by name: nothing is loaded
        assert isinstance(worker.judges.reward_embedder, Refuse) and worker.judges.reward_embedder.which == name


def test_a_relative_directory_reaches_the_workers_absolute(saved, monkeypatch):
    monkeypatch.chdir(saved.parent)
    assert reward_embedder(cfg("my_embedder")) == os.path.abspath("my_embedder") == str(saved)


def test_a_directory_that_is_not_an_embedder_is_refused_naming_it(tmp_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "readme.txt").write_text("not a model")
    with pytest.raises(ConfigError, match=rf"reward.embedder='{notes}': .*{notes} is not a divcfg checkpoint"):
        check_reward_embedder(cfg(str(notes)))
    # A complete checkpoint of another kind (a scorer, a policy) says what it holds.
    save_weights(tmp_path / "scorer", "attribute_scorer", {"w": torch.zeros(2)}, {})
    with pytest.raises(ConfigError, match=rf"{tmp_path / 'scorer'} holds a 'attribute_scorer' checkpoint, not a "
                                          r"music embedder"):
        check_reward_embedder(cfg(str(tmp_path / "scorer")))
    # A world: its embedders are inside it.
    (tmp_path / "world" / "embedder_reward").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"is a divcfg world directory, not an embedder: its embedders are "
                                          rf"{tmp_path / 'world' / 'embedder_reward'}"):
        check_reward_embedder(cfg(str(tmp_path / "world")))
    # divcfg train refuses it before any work.
    with pytest.raises(ConfigError, match=rf"reward.embedder='{notes}'"):
        train(cfg(str(notes)))


def test_a_name_that_is_neither_the_worlds_nor_a_directory_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"reward.embedder='rewrad': must be reward or eval \(the world's "
                                          r"embedders\) or the directory of a saved embedder"):
        validate_train(cfg("rewrad"))
    with pytest.raises(ConfigError, match="no such directory"):
        validate_train(cfg(str(tmp_path / "missing")))


def test_the_probe_judges_take_the_reward_embedder_that_reward_embedder_names(monkeypatch):
    """job/train.py's probe reports diversity by the embedder the reward uses: the world's reward one, its eval one,
    or the directory given."""
    from divcfg.reward import judges as judges_mod
    base = judges_mod.Judges(codec=None, reward_embedder="world reward", eval_embedder="world eval", scorer=None)
    monkeypatch.setattr(judges_mod, "load_embedder", lambda d: f"loaded {d}")
    assert base.with_reward_embedder("reward") is base
    assert base.with_reward_embedder("eval").reward_embedder == "world eval"
    own = base.with_reward_embedder("/my/embedder")
    assert own.reward_embedder == "loaded /my/embedder" and own.eval_embedder == "world eval"
