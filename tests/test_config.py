import pytest
from omegaconf import OmegaConf

from divcfg.common.config.checks import ConfigError, validate_train
from divcfg.common.config.schema import TrainConfig


def cfg(**changes):
    c = OmegaConf.structured(TrainConfig)
    for k, v in changes.items():
        OmegaConf.update(c, k, v)
    return c


def test_defaults_validate():
    validate_train(cfg())


@pytest.mark.parametrize("key,value,message", [
    ("algo.beta", -1.0, "algo.beta=-1.0: must be >= 0"),
    ("algo.guidance_scale", 0.5, "algo.guidance_scale=0.5: the CFG teacher needs γ >= 1"),
    ("algo.baseline", "median", "algo.baseline='median': must be none, mean or loo"),
    ("algo.kl_reduction", "max", "algo.kl_reduction='max': must be mean or sum"),
    ("algo.lr_schedule", "linear", "algo.lr_schedule='linear': must be constant or cosine"),
    ("world.size", "huge", "world.size='huge': must be tiny or small"),
    ("world.kind", "jazz", "world.kind='jazz': must be procedural or music"),
    ("learner.mode", "fast", "learner.mode='fast'"),
    ("model.family", "jax", "model.family='jax': must be divcfg or musicgen"),
    ("model.family", "musicgen", "model.musicgen=None: model.family=musicgen needs a Hub id"),
    ("model.train_layers", -1, "model.train_layers=-1: must be >= 0"),
    ("autoscale.max", -1, "autoscale.max=-1: must be >= 0 (0 turns autoscaling off)"),
    ("actors.groups_per_call", 0, "actors.groups_per_call=0: must be >= 1"),
    ("actors.dtype", "fp16", "actors.dtype='fp16': must be one of ('fp32', 'bf16')"),
    ("run.dir", "s3://bucket/runs/a", "run.dir='s3://bucket/runs/a': object-storage URIs are not supported"),
    ("run.resume", "gs://bucket/runs/a", "run.resume='gs://bucket/runs/a': object-storage URIs are not supported"),
])
def test_bad_values_name_the_field(key, value, message):
    with pytest.raises(ConfigError, match=message.replace("(", "\\(").replace(")", "\\)")):
        validate_train(cfg(**{key: value}))


def test_autoscale_min_above_max():
    with pytest.raises(ConfigError, match="autoscale.min=3: must be <= autoscale.max=2"):
        validate_train(cfg(**{"autoscale.min": 3, "autoscale.max": 2}))


def test_group_of_one_with_beta():
    with pytest.raises(ConfigError, match="algo.group_size=1: must be >= 2 when algo.beta=15.0 > 0"):
        validate_train(cfg(**{"algo.beta": 15.0, "algo.group_size": 1}))
    validate_train(cfg(**{"algo.beta": 0.0, "algo.group_size": 1}))


def test_unknown_key_is_refused_by_the_schema():
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError
    c = cfg()
    with pytest.raises((ConfigAttributeError, ConfigKeyError)):
        OmegaConf.update(c, "algo.nonsense", 1, merge=True)


@pytest.mark.parametrize("name", ["musicgen_tiny", "musicgen_small", "musicgen_medium", "musicgen_large"])
def test_musicgen_model_entries_compose(name):
    from hydra import compose, initialize_config_dir

    from divcfg.common.config.checks import validate_model
    from divcfg.common.config.schema import CONF_DIR, register_configs
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        m = compose("pretrain", overrides=["data=x", "out=y", f"model={name}"]).model
    validate_model(m)
    assert m.family == "musicgen" and m.musicgen


def test_default_kl_reduction_is_the_per_sequence_sum():
    """METHOD.md's objective is the sequence-level reverse KL: summed over a sample's codes."""
    from hydra import compose, initialize_config_dir

    from divcfg.common.config.schema import CONF_DIR, AlgoConfig, register_configs
    assert AlgoConfig().kl_reduction == "sum" and cfg().algo.kl_reduction == "sum"
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        for algo in ("distill", "diverse"):
            assert compose("train", overrides=[f"algo={algo}"]).algo.kl_reduction == "sum"


def _saved_run(tmp_path, algo):
    (tmp_path / ".hydra").mkdir(exist_ok=True)
    saved = {"algo": {"beta": 15.0, "guidance_scale": 3.0, "group_size": 4, "baseline": "loo", **algo},
             "world": {"size": "small", "seed": 0}, "model": {"family": "divcfg"}}
    OmegaConf.save(OmegaConf.create(saved), tmp_path / ".hydra" / "config.yaml")


@pytest.mark.parametrize("saved_algo", [{}, {"kl_reduction": "mean"}])
def test_resume_of_an_old_run_keeps_mean(tmp_path, saved_algo):
    """A run saved before algo.kl_reduction existed ({}), or under the old default (mean), resumes with mean when
    the command line does not set the key; set there, a different value is a conflict."""
    from divcfg.job.run_dir import check_resume_config as _check_resume_config
    _saved_run(tmp_path, saved_algo)
    new = cfg(**{"algo.beta": 15.0})  # the new default: sum
    assert _check_resume_config(tmp_path, new, set_on_command_line={"algo.beta"}) is True
    assert new.algo.kl_reduction == "mean"
    explicit = cfg(**{"algo.beta": 15.0, "algo.kl_reduction": "sum"})
    with pytest.raises(ValueError, match="algo.kl_reduction='sum' conflicts with the resumed run's "
                                         "algo.kl_reduction='mean'"):
        _check_resume_config(tmp_path, explicit, set_on_command_line={"algo.kl_reduction"})
    with pytest.raises(ValueError, match="conflicts"):  # outside Hydra every key counts as set
        _check_resume_config(tmp_path, cfg(**{"algo.beta": 15.0}))


def test_resume_of_a_sum_run_keeps_sum(tmp_path):
    from divcfg.job.run_dir import check_resume_config as _check_resume_config
    _saved_run(tmp_path, {"kl_reduction": "sum", "lr_schedule": "cosine"})
    new = cfg(**{"algo.beta": 15.0})
    assert _check_resume_config(tmp_path, new, set_on_command_line=set()) is False
    assert new.algo.kl_reduction == "sum"


def test_a_key_no_schema_declares_is_refused_at_any_depth():
    from divcfg.common.config.checks import refuse_unknown_keys
    refuse_unknown_keys(cfg(), TrainConfig)
    c = cfg()
    OmegaConf.set_struct(c, False)
    c.prompts = "my_prompts.txt"  # what `divcfg train +prompts=FILE` composes
    with pytest.raises(ConfigError, match=r"prompts: unknown config key \(added with '\+'\?\); nothing reads it. "
                                          r"Known keys: actors, algo, "):
        refuse_unknown_keys(c, TrainConfig)
    c = cfg()
    OmegaConf.set_struct(c.reward, False)
    c.reward.embeder = "DIR"
    with pytest.raises(ConfigError, match=r"reward.embeder: unknown config key .* Known keys of reward: .*embedder"):
        refuse_unknown_keys(c, TrainConfig)


def test_train_refuses_a_plus_key_before_any_work(tmp_path, capsys):
    from divcfg.job.train import main
    code = main([f"run.dir={tmp_path / 'run'}", "+prompts=prompts.txt", "world.size=tiny", f"world.dir={tmp_path / 'w'}"])
    assert code == 2
    assert "prompts: unknown config key" in capsys.readouterr().err
    assert not (tmp_path / "w").exists() and not (tmp_path / "run" / "checkpoints").exists()
