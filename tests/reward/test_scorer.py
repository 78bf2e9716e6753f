"""The quality scorer: adherence against hand-computed values, shapes, a short training run on labelled tones, and
checkpoints."""
import math
import os

import numpy as np
import pytest
import torch

from divcfg.reward.scorer import (
    AttributeScorer,
    adherence,
    attributes_above_chance,
    load_scorer,
    save_scorer,
    scorer_accuracy,
    scorer_config,
    tempogram,
    train_scorer,
)

torch.set_num_threads(1)
SR = 16000
ATTRIBUTES = {"register": ("low", "high"), "waveform": ("sine", "square")}


def labelled_tones(n: int, seconds: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Clips float32 ``[n, samples]`` and labels int64 ``[n, 2]``: register (110-220 Hz or 880-1760 Hz) and
    waveform (sine or square), with random pitch, phase, gain and a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    labels = rng.integers(0, 2, (n, 2))
    clips = np.zeros((n, t.size), np.float32)
    for i, (register, waveform) in enumerate(labels):
        f = rng.uniform(110, 220) if register == 0 else rng.uniform(880, 1760)
        s = np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
        clips[i] = rng.uniform(0.1, 0.5) * (np.sign(s) if waveform else s) + 0.01 * rng.standard_normal(t.size)
    return clips, labels.astype(np.int64)


def test_adherence_hand_computed():
    table = {"register": ("low", "high"), "waveform": ("sine", "square", "saw")}
    probs = {"register": torch.tensor([[0.9, 0.1], [0.3, 0.7], [0.5, 0.5]]),
             "waveform": torch.tensor([[0.2, 0.2, 0.6], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]])}
    requested = [{"register": "low", "waveform": "saw"}, {"waveform": "square"}, {}]
    score = adherence(probs, requested, table)
    torch.testing.assert_close(score[:2], torch.tensor([(0.9 + 0.6) / 2, 0.8]))
    assert math.isnan(score[2])
    with pytest.raises(ValueError, match="'triangle'"):
        adherence(probs, [{"waveform": "triangle"}, {}, {}], table)
    with pytest.raises(ValueError, match="tempo"):
        adherence(probs, [{"tempo": "fast"}, {}, {}], table)


def test_attributes_above_chance_hand_computed():
    # 100 clips. register: 80 low / 20 high, so chance is 0.8 and the bar 0.8 + 3·sqrt(0.8·0.2/100) = 0.92.
    # waveform: 50 / 50, chance 0.5, bar 0.5 + 3·0.05 = 0.65.
    labels = np.zeros((100, 2), np.int64)
    labels[80:, 0] = 1
    labels[50:, 1] = 1
    kept, report = attributes_above_chance({"register": 0.91, "waveform": 0.66}, labels, ATTRIBUTES)
    assert kept == ["waveform"]
    assert report["register"] == {"accuracy": 0.91, "chance": 0.8, "bar": 0.92, "kept": False}
    assert report["waveform"]["bar"] == pytest.approx(0.65) and report["waveform"]["kept"] is True
    kept, _ = attributes_above_chance({"register": 0.93, "waveform": 0.64}, labels, ATTRIBUTES)
    assert kept == ["register"]
    # One value only: nothing to read, whatever the accuracy.
    kept, _ = attributes_above_chance({"register": 1.0, "waveform": 1.0}, np.zeros((10, 2), np.int64), ATTRIBUTES)
    assert kept == []
    with pytest.raises(ValueError, match=r"labels: expected \[N >= 1, 2\]"):
        attributes_above_chance({}, np.zeros((3, 1), np.int64), ATTRIBUTES)


def test_tempogram_peaks_at_the_beat_period():
    onsets = torch.zeros(2, 8, 200)
    onsets[0, :, ::25] = 1.0  # a click every 25 frames
    onsets[1, :, ::40] = 1.0
    tg = tempogram(onsets, max_lag=60)
    assert tg.shape == (2, 60)
    assert tg[0].argmax() + 1 == 25 and tg[1].argmax() + 1 == 40
    assert tempogram(onsets[:, :, :20], max_lag=60)[:, 18:].abs().max() == 0  # lags 19+ lie beyond the clip


def test_shapes_seeds_and_validation():
    cfg = scorer_config("tiny")
    table = {"register": ("low", "high"), "mood": ("calm", "tense", "sad")}
    model = AttributeScorer(cfg, table).eval()
    probs = model.predict_proba(torch.randn(4, 22050), 22050)  # resampled to 16 kHz
    assert {k: tuple(v.shape) for k, v in probs.items()} == {"register": (4, 2), "mood": (4, 3)}
    torch.testing.assert_close(probs["mood"].sum(-1), torch.ones(4))

    assert all(torch.equal(a, b) for a, b in zip(AttributeScorer(cfg, table).state_dict().values(),
                                                 model.state_dict().values()))
    other = AttributeScorer(scorer_config("tiny", seed=1), table)
    assert not torch.equal(other.head.weight, model.head.weight)

    with pytest.raises(ValueError, match="'small', 'tiny'"):
        scorer_config("medium")
    with pytest.raises(ValueError, match="mood"):
        train_scorer(np.zeros((2, SR), np.float32), np.array([[0, 3], [1, 0]]), table, SR, cfg, steps=1,
                     batch_size=2, lr=1e-3, progress=False)


def test_short_training_beats_chance():
    cfg = scorer_config("tiny", crop_s=0.5)
    train_x, train_y = labelled_tones(64, 1.0, seed=0)
    test_x, test_y = labelled_tones(32, 1.0, seed=1)
    model = train_scorer(train_x, train_y, ATTRIBUTES, SR, cfg, steps=150, batch_size=16, lr=3e-3, progress=False)
    accuracy = scorer_accuracy(model, test_x, test_y, SR)
    assert set(accuracy) == set(ATTRIBUTES)
    assert all(acc >= 0.8 for acc in accuracy.values()), accuracy  # chance is 0.5

    requested = [{"register": ATTRIBUTES["register"][r], "waveform": ATTRIBUTES["waveform"][w]} for r, w in test_y]
    score = adherence(model.predict_proba(torch.from_numpy(test_x), SR), requested, ATTRIBUTES)
    wrong = [{"register": ATTRIBUTES["register"][1 - r]} for r, _ in test_y]
    assert score.mean() > 0.7 > adherence(model.predict_proba(torch.from_numpy(test_x), SR), wrong, ATTRIBUTES).mean()


def test_save_load_round_trip_and_bad_files(tmp_path):
    model = AttributeScorer(scorer_config("tiny", seed=2), ATTRIBUTES).eval()
    save_scorer(model, tmp_path / "s")
    loaded = load_scorer(tmp_path / "s")
    assert loaded.attributes == ATTRIBUTES and loaded.cfg == model.cfg
    wav = torch.from_numpy(labelled_tones(3, 0.5, seed=3)[0])
    for name, p in model.predict_proba(wav, SR).items():
        torch.testing.assert_close(loaded.predict_proba(wav, SR)[name], p, atol=0, rtol=0)

    weights = tmp_path / "s" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match="model.safetensors"):
        load_scorer(tmp_path / "s")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_scorer(tmp_path / "nowhere")
    os.remove(weights)
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_scorer(tmp_path / "s")
