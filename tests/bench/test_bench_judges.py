"""The judges benchmark's refusals (its run on a music world is in tests/world/test_music_build.py, slow)."""
from divcfg.bench.judges import _figures, main


def test_a_world_without_pooled_judges_or_a_bad_count_is_refused(tiny_world, tmp_path, capsys):
    assert main(["--world", str(tmp_path / "none")]) == 2
    assert "no complete world" in capsys.readouterr().err
    assert main(["--world", str(tiny_world), "--workers", "0"]) == 2
    assert "--workers" in capsys.readouterr().err
    assert main(["--world", str(tiny_world)]) == 2  # the procedural world has neither judge
    assert "no Basic Pitch or madmom judge" in capsys.readouterr().err


def test_figures_compare_all_but_the_speed():
    a = {"adherence": 0.5, "frames_per_s": 10.0, "adherence_judge_by_prompt": [None, float("nan")]}
    assert _figures(a) == _figures({**a, "frames_per_s": 11.0})
    assert _figures(a) != _figures({**a, "adherence": 0.51})
