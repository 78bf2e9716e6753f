"""Which checkpoint a run continues from, and that a fresh start never overwrites another run's checkpoints."""
import pytest

from divcfg.learner.train import resolve_resume


def _checkpoint(run, step, complete=True):
    d = run / "checkpoints" / f"step_{step:06d}"
    d.mkdir(parents=True)
    if complete:
        (d / "COMPLETE").write_text("ok")
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
