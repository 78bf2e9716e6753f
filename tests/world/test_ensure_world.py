"""What `divcfg train` does with `world.dir` (world/ensure.ensure_world): it builds a missing world of the default
family's kind, but never into the user's own files, never from a file, and never for a MusicGen job, whose world is a
folder of the user's music that only `divcfg world build --kind folder` makes."""
import pytest

from divcfg.world import build
from divcfg.world.build import WorldError
from divcfg.world.ensure import ensure_world


@pytest.fixture
def no_build(monkeypatch):
    """build_world replaced by one that records the call: a refusal must come before any build."""
    calls = []
    monkeypatch.setattr(build, "build_world", lambda *a, **k: calls.append((a, k)))
    return calls


def _music_folder(root):
    (root / "live").mkdir(parents=True)
    (root / "live" / "track00.wav").write_bytes(b"RIFF....WAVE")
    (root / "captions.jsonl").write_text('{"path": "live/track00.wav", "caption": "a calm piano melody"}\n')
    return sorted(p.relative_to(root) for p in root.rglob("*"))


def test_a_folder_of_the_users_files_is_never_built_into(tmp_path, no_build):
    held = _music_folder(tmp_path / "music")
    with pytest.raises(WorldError, match=r"world.dir=.*music holds no divcfg world but other files \(captions.jsonl, "
                                         r"live\), which train leaves alone"):
        ensure_world(tmp_path / "music", "small", progress=False)
    assert sorted(p.relative_to(tmp_path / "music") for p in (tmp_path / "music").rglob("*")) == held
    assert no_build == []


def test_a_file_is_not_a_world(tmp_path, no_build):
    f = tmp_path / "captions.jsonl"
    f.write_text("{}\n")
    with pytest.raises(WorldError, match="captions.jsonl is a file, not a world directory"):
        ensure_world(f, "small", progress=False)
    assert f.read_text() == "{}\n" and no_build == []


@pytest.mark.parametrize("make, there", [(None, "it does not exist"), ("empty", "it is empty"),
                                         ("files", "it holds captions.jsonl, live")])
def test_a_musicgen_job_names_the_folder_build_instead_of_building(tmp_path, no_build, make, there):
    root = tmp_path / "w"
    if make == "empty":
        root.mkdir()
    elif make == "files":
        _music_folder(root)
    with pytest.raises(WorldError) as e:
        ensure_world(root, "small", progress=False, build_missing=False)
    assert f"holds no built world ({there})" in str(e.value)
    assert f"divcfg world build --kind folder --audio MUSIC_DIR --captions FILE --model MUSICGEN_DIR --out {root}" \
        in str(e.value)
    assert no_build == [] and (make is not None or not root.exists())


def test_a_missing_or_empty_world_is_still_built_for_the_default_family(tmp_path, no_build):
    (tmp_path / "empty").mkdir()
    # a build stopped in its first stage: its files, and the state.json build_world writes before any stage
    (tmp_path / "stopped" / "clips").mkdir(parents=True)
    (tmp_path / "stopped" / "state.json").write_text('{"identity": {"version": %d}, "done": {}}' % build.WORLD_VERSION)
    for root in (tmp_path / "new", tmp_path / "empty", tmp_path / "stopped"):
        ensure_world(root, "tiny", progress=False)  # the recording build_world builds nothing; verify() has no stage
    assert [a[0] for a, _ in no_build] == [tmp_path / "new", tmp_path / "empty", tmp_path / "stopped"]


def test_a_build_writes_its_state_before_its_first_stage(tmp_path, monkeypatch):
    """So that one stopped during that stage is resumed, not taken for the user's own files."""
    def stop(self):
        assert (tmp_path / "w" / "state.json").is_file()
        raise KeyboardInterrupt
    monkeypatch.setattr(build._Builder, "corpus", stop)
    with pytest.raises(KeyboardInterrupt):
        build.build_world(tmp_path / "w", "tiny", progress=False)
    assert build.World(tmp_path / "w").state()["done"] == {}


def test_train_with_musicgen_and_no_world_says_how_to_build_one(tmp_path, capsys):
    pytest.importorskip("transformers")
    from divcfg.cli import main
    missing = tmp_path / "worlds" / "mine"
    assert main(["train", "model=musicgen_tiny", "learner.mode=local", f"world.dir={missing}",
                 f"run.dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert "holds no built world (it does not exist)" in err and "--kind folder" in err
    assert not missing.exists()
