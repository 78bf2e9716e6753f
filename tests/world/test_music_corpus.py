"""Work selection, the split by work, and the music world's bad-input errors."""
import sys

import pytest

from divcfg.world.music_clips import plan_clips
from divcfg.world.music_corpus import COLLECTIONS, MusicConfig, WorkSet, usable


def _work(i: int) -> dict:
    return {"id": f"w{i}", "collection": "essen", "style": "european-folk", "key_mode": "major",
            "key_confidence": 0.9, "time_signature": "3/4", "notes": [[0.0, 1.0, 60, 0]]}


def test_no_heldout_work_is_in_training():
    works = WorkSet([_work(i) for i in range(65)])
    plan, n_train = plan_clips(works, 260, 40, seed=0)
    assert len(plan) == 260 and n_train == 220
    train, heldout = {w["id"] for w in plan[:n_train]}, {w["id"] for w in plan[n_train:]}
    assert not train & heldout
    assert len(heldout) == 10 and len(train) == 55  # 4 excerpts a work: 40 held-out clips from 10 works
    assert plan_clips(works, 260, 40, seed=1)[0][n_train:] != plan[n_train:]  # the seed draws the split


def test_usable_counts_why_a_work_is_left_out():
    assert usable(_work(0), 0.8) is None
    assert usable({"id": "x", "error": "boom"}, 0.8) == "parse_failed"
    assert usable({**_work(0), "key_confidence": 0.7}, 0.8) == "low_key_confidence"
    assert usable({**_work(0), "time_signature": "5/8"}, 0.8) == "no_meter"
    assert usable({**_work(0), "notes": []}, 0.8) == "no_notes"


def test_unknown_collection_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown music collection\(s\) \['bachh'\]; known: bach, essen"):
        MusicConfig(collections=("bachh", "essen"))
    assert {"bach", "essen", "oneills", "ryans", "airds", "palestrina"} <= set(COLLECTIONS)


def test_missing_music21_says_how_to_install(monkeypatch):
    from divcfg.world.music_corpus import require_music21

    monkeypatch.setitem(sys.modules, "music21", None)  # import music21 now raises ImportError
    with pytest.raises(ImportError, match=r"needs music21.*make"):
        require_music21()


def test_cli_rejects_bad_kind_collection_and_soundfont_before_any_work(tmp_path, capsys):
    from divcfg.world.build import main

    assert main(["build", "--kind", "jazz", "--size", "tiny", "--out", str(tmp_path / "a")]) == 2
    assert "unknown world kind 'jazz'; known kinds: procedural, music" in capsys.readouterr().err
    pytest.importorskip("music21", reason="the music extra is not installed (make installs it)")
    pytest.importorskip("pretty_midi", reason="the music extra is not installed (make installs it)")
    assert main(["build", "--kind", "music", "--size", "tiny", "--out", str(tmp_path / "b"),
                 "--collections", "bach,motown"]) == 2
    assert "unknown music collection(s) ['motown']; known: bach, essen" in capsys.readouterr().err
    not_sf2 = tmp_path / "x.sf2"
    not_sf2.write_text("hello")
    for path, why in ((tmp_path / "none.sf2", "no such file"), (not_sf2, "not a SoundFont")):
        assert main(["build", "--kind", "music", "--size", "tiny", "--out", str(tmp_path / "c"),
                     "--soundfont", str(path)]) == 2
        err = capsys.readouterr().err
        assert str(path) in err and why in err
    assert not (tmp_path / "c" / "music_works.jsonl").exists()  # refused before parsing anything
