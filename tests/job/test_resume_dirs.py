"""Which checkpoint a run continues from, and that a fresh start never overwrites another run's checkpoints."""
import pytest

from divcfg.common.storage.checkpoint import atomic_dir
from divcfg.common.storage.train_state import save_train_state
from divcfg.job.run_dir import resolve_resume


def _checkpoint(run, step, complete=True):
    """A checkpoint as a run writes it (a train state and a student, under a COMPLETE manifest), or one that a crash
    cut short before its marker."""
    d = run / "checkpoints" / f"step_{step:06d}"
    if not complete:
        d.mkdir(parents=True)
        return d
    with atomic_dir(d) as tmp:
        save_train_state(tmp, {"step": step})
        (tmp / "student").mkdir()
        (tmp / "student" / "config.json").write_text("{}")
    return d


def test_fresh_start_in_an_empty_or_new_dir(tmp_path):
    assert resolve_resume(tmp_path / "new", None) is None
    assert resolve_resume(tmp_path / "new", "auto") is None
    _checkpoint(tmp_path / "half", 3, complete=False)  # a crash mid-write is not a checkpoint
    assert resolve_resume(tmp_path / "half", None) is None


def test_auto_continues_the_newest_complete_checkpoint_of_run_dir(tmp_path):
    run = tmp_path / "run"
    _checkpoint(run, 2)
    newest = _checkpoint(run, 4)
    _checkpoint(run, 5, complete=False)
    assert resolve_resume(run, "auto") == newest
    assert resolve_resume(run, str(run)) == newest


def test_a_fresh_start_over_a_run_is_refused(tmp_path):
    run = tmp_path / "run"
    _checkpoint(run, 7)
    with pytest.raises(ValueError, match=r"run.dir=.*run already holds a run \(checkpoint step_000007\).*"
                                         r"run.resume="):
        resolve_resume(run, None)


def test_resuming_another_run_into_a_dir_that_holds_a_third_is_refused(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _checkpoint(a, 3)
    _checkpoint(b, 1)
    with pytest.raises(ValueError, match="already holds a run"):
        resolve_resume(b, str(a))
    assert resolve_resume(tmp_path / "c", str(a)) == a / "checkpoints" / "step_000003"


def test_resume_from_a_dir_without_a_checkpoint_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such run directory"):
        resolve_resume(tmp_path / "r", str(tmp_path / "gone"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        resolve_resume(tmp_path / "r", str(tmp_path / "empty"))


def test_resume_config_check_on_kl_reduction(tmp_path):
    """algo.kl_reduction is one of the method's settings; a run saved before it existed used the mean."""
    from omegaconf import OmegaConf

    from divcfg.job.run_dir import check_resume_config as _check_resume_config

    def saved(algo):
        (tmp_path / ".hydra").mkdir(exist_ok=True)
        cfg = {"algo": {"beta": 15.0, "guidance_scale": 3.0, "group_size": 4, "baseline": "loo", **algo},
               "world": {"size": "small", "seed": 0}, "model": {"family": "divcfg"}}
        OmegaConf.save(OmegaConf.create(cfg), tmp_path / ".hydra" / "config.yaml")
        return OmegaConf.create(cfg)

    old = saved({})  # no kl_reduction key: an older run
    _check_resume_config(tmp_path, OmegaConf.merge(old, {"algo": {"kl_reduction": "mean"}}))
    with pytest.raises(ValueError, match="algo.kl_reduction='sum' conflicts with the resumed run's "
                                         "algo.kl_reduction='mean'"):
        _check_resume_config(tmp_path, OmegaConf.merge(old, {"algo": {"kl_reduction": "sum"}}))
    new = saved({"kl_reduction": "sum"})
    _check_resume_config(tmp_path, new)


def test_auto_skips_a_newest_checkpoint_that_fails_to_verify_and_says_why(tmp_path, capsys):
    run = tmp_path / "run"
    good = _checkpoint(run, 2)
    bad = _checkpoint(run, 4)
    (bad / "train_state.json").write_text("{")  # overwritten after its manifest was written
    assert resolve_resume(run, "auto") == good
    assert resolve_resume(tmp_path / "other", str(run)) == good
    err = capsys.readouterr().err
    assert "skipping checkpoint step_000004" in err and "train_state.json" in err


def test_resume_keeps_the_rate_schedule_and_a_cosine_runs_length(tmp_path):
    """A cosine rate decays over learner.steps: a resume may not switch the schedule or change a cosine run's length
    on its command line, and takes both from the resumed run when the command line does not set them; a constant
    run may be extended, and a run saved before the key existed had a constant rate."""
    from omegaconf import OmegaConf

    from divcfg.job.run_dir import check_resume_config

    def saved(algo, steps):
        (tmp_path / ".hydra").mkdir(exist_ok=True)
        cfg = {"algo": {"beta": 0.0, "guidance_scale": 3.0, "group_size": 4, "baseline": "loo", "kl_reduction": "sum",
                        **algo},
               "learner": {"steps": steps}, "world": {"size": "small", "seed": 0}, "model": {"family": "divcfg"}}
        OmegaConf.save(OmegaConf.create(cfg), tmp_path / ".hydra" / "config.yaml")
        return OmegaConf.create(cfg)

    def resumed(old, **algo_steps):
        steps = algo_steps.pop("steps", old.learner.steps)
        return OmegaConf.merge(old, {"algo": algo_steps, "learner": {"steps": steps}})

    old = saved({}, 500)  # no lr_schedule key: an older run, constant
    assert not check_resume_config(tmp_path, resumed(old, lr_schedule="constant", steps=900))  # extended
    with pytest.raises(ValueError, match="algo.lr_schedule='cosine' conflicts with the resumed run's "
                                         "algo.lr_schedule='constant'"):
        check_resume_config(tmp_path, resumed(old, lr_schedule="cosine"), {"algo.lr_schedule"})
    cfg = resumed(old, lr_schedule="cosine")  # cosine by default, not on the command line: the old run keeps its own
    assert check_resume_config(tmp_path, cfg, set()) and cfg.algo.lr_schedule == "constant"
    cos = saved({"lr_schedule": "cosine"}, 500)
    assert not check_resume_config(tmp_path, cos)
    with pytest.raises(ValueError, match=r"learner.steps=900 conflicts with the resumed run's learner.steps=500.*"
                                         r"keep learner.steps=500"):
        check_resume_config(tmp_path, resumed(cos, steps=900), {"learner.steps"})
    cfg = resumed(cos, steps=900)  # a length from the defaults, not the command line: the resumed run's is kept
    assert check_resume_config(tmp_path, cfg, {"run.resume"}) and cfg.learner.steps == 500


def test_a_resume_in_place_is_checked_against_the_checkpoints_own_config(tmp_path):
    """`run.resume=auto` in the run's own directory: Hydra has already rewritten .hydra/config.yaml with this
    invocation's config, so only the checkpoint's copy still says what the resumed steps trained with."""
    from omegaconf import OmegaConf

    from divcfg.job.run_dir import RUN_CONFIG, check_resume_config

    def cfg(beta, steps):
        return OmegaConf.create({"algo": {"beta": beta, "guidance_scale": 3.0, "group_size": 4, "baseline": "loo",
                                          "kl_reduction": "sum", "lr_schedule": "cosine"},
                                 "learner": {"steps": steps}, "world": {"size": "small", "seed": 0},
                                 "model": {"family": "divcfg"}})
    ckpt = _checkpoint(tmp_path, 500)
    OmegaConf.save(cfg(15.0, 500), ckpt / RUN_CONFIG)
    (tmp_path / ".hydra").mkdir()
    for new in (cfg(15.0, 900), cfg(5.0, 500)):
        OmegaConf.save(new, tmp_path / ".hydra" / "config.yaml")  # what this invocation's Hydra wrote
        assert not check_resume_config(tmp_path, new)  # the run directory's copy alone can't tell
        with pytest.raises(ValueError, match="conflicts with the resumed run's"):
            check_resume_config(tmp_path, new, checkpoint=ckpt)
    assert not check_resume_config(tmp_path, cfg(15.0, 500), checkpoint=ckpt)
    # A checkpoint saved without its config falls back to the run directory's.
    (ckpt / RUN_CONFIG).unlink()
    with pytest.raises(ValueError, match="algo.beta=15.0 conflicts with the resumed run's algo.beta=5.0"):
        check_resume_config(tmp_path, cfg(15.0, 500), checkpoint=ckpt)
