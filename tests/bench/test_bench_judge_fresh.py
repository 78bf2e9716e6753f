import json

import pytest


def test_a_procedural_world_is_refused_naming_it(tmp_path):
    """The judge reads real music: a procedural world has no judge and no works to draw fresh ones after."""
    from divcfg.bench.judge_fresh import fresh_works
    (tmp_path / "state.json").write_text(json.dumps({"identity": {"version": 6, "size": "tiny", "seed": 0,
                                                                  "kind": "procedural"}}))
    with pytest.raises(ValueError, match=f"--world {tmp_path} is a procedural world"):
        fresh_works(str(tmp_path), 4, str(tmp_path / "cache"), workers=1)
    assert not (tmp_path / "cache").exists()  # refused before anything was written
