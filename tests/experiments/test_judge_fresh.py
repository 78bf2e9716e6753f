import json

import pytest


def test_a_procedural_world_is_refused_naming_it(tmp_path):
    """The judge reads real music: a procedural world has no judge and no works to draw fresh ones after."""
    from divcfg.experiments.judge_fresh import fresh_works
    (tmp_path / "state.json").write_text(json.dumps({"identity": {"version": 6, "size": "tiny", "seed": 0,
                                                                  "kind": "procedural"}}))
    with pytest.raises(ValueError, match=f"--world {tmp_path} is a procedural world"):
        fresh_works(str(tmp_path), 4, str(tmp_path / "cache"), workers=1)
    assert not (tmp_path / "cache").exists()  # refused before anything was written


def test_a_directory_without_a_world_is_refused_naming_it(tmp_path):
    from divcfg.experiments.judge_fresh import fresh_works
    with pytest.raises(ValueError, match=f"--world {tmp_path} holds no built world"):
        fresh_works(str(tmp_path), 4, str(tmp_path / "cache"), workers=1)
    assert not (tmp_path / "cache").exists()


def test_the_per_collection_bench_refuses_a_procedural_world(tiny_world):
    from divcfg.experiments.codec_polyphony import main
    with pytest.raises(ValueError, match="is a procedural world"):
        main(["--world", str(tiny_world)])
