"""`divcfg world build --kind music --size tiny` end to end (several minutes on 2 shared cores: slow)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("music21", reason="the music extra is not installed (make installs it)")
pytest.importorskip("tinysoundfont", reason="the music extra is not installed (make installs it)")
pytest.importorskip("basic_pitch", reason="basic-pitch is not installed (make installs it with --no-deps)")


@pytest.mark.slow
def test_music_world_builds_end_to_end(tmp_path):
    import pyarrow.parquet as pq

    from divcfg.common.data.world_dir import STAGE_OUTPUTS
    from divcfg.reward.judges import Judges

    out = tmp_path / "music"
    cli = os.path.join(os.path.dirname(sys.executable), "divcfg")
    run = subprocess.run([cli, "world", "build", "--kind", "music", "--size", "tiny", "--out", str(out),
                          "--no-progress", "--threads", "1"], capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stderr[-3000:]
    for outputs in STAGE_OUTPUTS.values():
        for name in outputs:
            assert (out / name.rstrip("/")).exists(), name
    info = json.loads((out / "world.json").read_text())
    music = info["music"]
    assert len(music["collections"]) >= 5 and music["works"] == 65
    assert music["heldout_works_in_training"] == 0
    assert sum(c["clips"] for c in music["collections"].values()) == 260
    assert set(music["attribute_counts"]) == {"style", "mode", "meter", "instrument", "tempo", "register", "texture",
                                              "density"}
    # The corpus file agrees: no work has clips on both sides of the split.
    corpus = pq.read_table(out / "corpus.parquet").to_pydict()
    held = {w for w, h in zip(corpus["work"], corpus["heldout"]) if h}
    assert held and not held & {w for w, h in zip(corpus["work"], corpus["heldout"]) if not h}
    judge = info["pitch_judge_real"]
    assert judge["clips"] == 40 and set(judge["rendered"]) == {"mode", "register", "texture", "density"}
    # The ceiling is well above chance on the clips as rendered (register has three values, mode two).
    assert judge["rendered"]["register"] > 0.6 and judge["rendered"]["mode"] > 0.6, judge
    # What the round trip keeps of it, with the paired interval that decides the codec's target.
    assert set(judge["ratio"]) == set(judge["rendered"])
    for a, r in judge["ratio"].items():
        assert r["ratio"] == pytest.approx(judge["round_trip"][a] / judge["rendered"][a])
        assert r["low"] <= r["ratio"] <= r["high"] and r["high"] > r["low"], (a, r)
    # And per collection of the held-out clips (the Bach chorales' polyphony is where the codec fails the judge).
    held_collections = [c for c, h in zip(corpus["collection"], corpus["heldout"]) if h]
    assert {c: r["clips"] for c, r in judge["by_collection"].items()} == {
        c: held_collections.count(c) for c in set(held_collections)}
    assert all(set(r) == {"clips"} | set(judge["rendered"]) for r in judge["by_collection"].values())
    assert info["adherence_judge_cfg1"] is not None and info["adherence_judge_cfg3"] is not None
    assert info["adherence_judge_gap_se"] > 0  # paired over the measured prompts, as the scorer's gap is
    # The scorer counts only the attributes it reads above chance; world.json says which were dropped and why.
    chosen = info["scorer_attributes"]
    assert set(chosen["kept"]) | set(chosen["dropped"]) == set(music["attribute_counts"])
    assert all(chosen["by_attribute"][a]["accuracy"] >= chosen["by_attribute"][a]["bar"] for a in chosen["kept"]) \
        or "note" in chosen  # none above chance: all kept, and said so
    # The judges read the world's own schema: music captions parse to music attributes.
    judges = Judges.load(out)
    assert judges.schema.scored == tuple(chosen["kept"])
    assert judges.schema.parse("a slow Bach chorale for strings") == {"style": "bach-chorale",
                                                                       "instrument": "strings", "tempo": "slow"}
    # `divcfg world listen` shows the held-out clips as rendered above their round trip.
    from divcfg.world.listen import spectrogram_rows
    rows, _, _ = spectrogram_rows(out, {}, clips=2)
    assert list(rows)[:2] == ["original", "codec round trip"]
    assert np.array_equal(rows["original"], np.load(out / "heldout_rendered.npy")[:2])
    # The per-collection bench reads the world's own codec exactly as the build's measure did.
    from divcfg.experiments.codec_polyphony import main as codec_polyphony
    assert codec_polyphony(["--world", str(out), "--variant", "world", "--out", str(tmp_path / "poly.json")]) == 0
    poly = json.loads((tmp_path / "poly.json").read_text())
    assert poly["stft_distance"] == pytest.approx(info["codec_reconstruction"]["stft_distance"], abs=1e-4)
    for a, r in judge["ratio"].items():
        assert poly["judge"]["all"][a]["ratio"] == pytest.approx(r["ratio"])
    for c, r in judge["by_collection"].items():
        assert poly["judge"][c]["density"]["ratio"] == pytest.approx(r["density"]["ratio"], nan_ok=True)
    # Fresh works the world was not built from, through its codec (experiments/judge_fresh.py), leave the world as it was.
    from divcfg.experiments.judge_fresh import fresh_works
    from divcfg.experiments.judge_fresh import main as judge_fresh
    before = (out / "music_works.jsonl").read_bytes()
    assert judge_fresh(["--world", str(out), "--clips", "6", "--variants", "pghi:8", "--workers", "1",
                        "--out", str(tmp_path / "fresh" / "out.json")]) == 0
    fresh = json.loads((tmp_path / "fresh" / "out.json").read_text())
    assert fresh["clips"] == 6 and set(fresh["variants"]["pghi:8"]) == set(judge["rendered"])
    assert (out / "music_works.jsonl").read_bytes() == before
    works, _ = fresh_works(str(out), 6, str(tmp_path / "fresh" / "judge_fresh_cache"), workers=1)
    assert len(works) == 6 and not {w["id"] for w in works} & set(corpus["work"])
    # An evaluation measurement with Basic Pitch and madmom in worker processes gives the in-process figures
    # (bench/judges.py raises where any differs).
    from divcfg.bench.judges import run as bench_judges
    timed = bench_judges(str(out), prompts=2, samples=2, workers=2, repeats=1, verbose=False)
    assert timed[0]["same_figures"] and timed[0]["judges"] == ["pitch", "rhythm"] and timed[0]["clips"] == 4
    # Built from another kind: refused, as a world of another size or seed is.
    again = subprocess.run([cli, "world", "build", "--size", "tiny", "--out", str(out), "--no-progress"],
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 2 and "'kind': 'music'" in again.stderr


def test_a_missing_world_is_built_as_the_kind_the_job_asks(tmp_path, monkeypatch):
    """`divcfg train world.kind=music` builds a missing world as real music (what `make run` does)."""
    from divcfg.world import build
    from divcfg.world.ensure import ensure_world
    seen = {}

    def building(root, size, seed, progress=True, kind="procedural"):
        seen.update(root=str(root), size=size, kind=kind)
        raise build.WorldError("stopped before the build")
    monkeypatch.setattr(build, "build_world", building)
    with pytest.raises(build.WorldError, match="stopped before the build"):
        ensure_world(tmp_path / "w", "tiny", kind="music", progress=False)
    assert seen == {"root": str(tmp_path / "w"), "size": "tiny", "kind": "music"}


def test_a_scorer_that_reads_nothing_above_chance_keeps_every_attribute(tmp_path):
    import numpy as np

    from divcfg.common.data.caption_schema import load_schema
    from divcfg.common.data.world_dir import size_params
    from divcfg.world.music_clips import music_source
    src = music_source("tiny", size_params("tiny"), 0, tmp_path)
    names = list(src.attributes)
    labels = np.zeros((40, len(names)), np.int64)
    labels[::2] = 1  # two values half and half: chance 0.5, bar 0.74
    weak = src.keep_scored(dict.fromkeys(names, 0.5), labels)
    assert weak["kept"] == names and weak["dropped"] == [] and "note" in weak
    assert load_schema(tmp_path).scored == tuple(names)
    strong = src.keep_scored({**dict.fromkeys(names, 0.5), names[0]: 0.9}, labels)
    assert strong["kept"] == names[:1] and strong["dropped"] == names[1:] and "note" not in strong
    assert load_schema(tmp_path).scored == (names[0],)
