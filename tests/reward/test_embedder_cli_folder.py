"""``divcfg embedder train --audio DIR``: every file resampled to one rate (--sample-rate, else the most common) and
cut into consecutive clips of the embedder's clip length; undecodable, silent and too-short files named and counted;
recall@1 on whole held-out tracks, at least 32 clips of them once the folder gives 64, with its chance level."""
import json

import numpy as np
import pytest
import soundfile as sf
import torch

from divcfg.reward.embedder import embedder_config, load_embedder
from divcfg.reward.embedder_cli import MIN_HELDOUT, heldout_split, main

torch.set_num_threads(1)
TINY_CLIP_S = 1.0  # the tiny preset's clip: two 0.5 s chunks


def music(seconds: float, sr: int, seed: int) -> np.ndarray:
    """A few notes of one timbre: loud enough to be music, different enough between seeds to tell apart."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    notes = rng.uniform(150, 900, 4)[(t * 4).astype(int) % 4]
    return (0.3 * np.sin(2 * np.pi * notes * t) + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


@pytest.fixture
def run(tmp_path, capsys):
    def run(folder, *extra):
        rc = main(["train", "--audio", str(folder), "--out", str(tmp_path / "emb"), "--size", "tiny", "--steps", "2",
                   "--batch-size", "4", *extra])
        out = capsys.readouterr()
        assert rc == 0, out.err
        return json.loads(out.out), out.err
    return run


@pytest.fixture
def mixed(tmp_path):
    """Four usable tracks at two rates (16 kHz the most common), and one of each kind of file to skip."""
    d = tmp_path / "audio"
    (d / "sub").mkdir(parents=True)
    sf.write(d / "a.wav", music(3.5, 16000, 0), 16000)  # 3 clips, 0.5 s dropped
    sf.write(d / "sub" / "b.flac", music(2.2, 22050, 1), 22050)  # 2 clips
    sf.write(d / "f.wav", music(2.0, 16000, 2), 16000)  # 2 clips
    gap = np.concatenate([music(1.0, 16000, 3), np.zeros(16000, np.float32), music(1.0, 16000, 4)])
    sf.write(d / "gap.wav", gap, 16000)  # 2 clips; its silent middle second dropped
    sf.write(d / "short.wav", music(0.6, 16000, 5), 16000)
    sf.write(d / "zeros.wav", np.zeros(2 * 16000, np.float32), 16000)
    (d / "bad.mp3").write_bytes(b"ID3 not really")
    return d


def test_a_folder_is_resampled_to_its_most_common_rate_and_cut_into_clips(mixed, run, tmp_path):
    summary, err = run(mixed)
    assert summary["sample_rate"] == 16000 and "the most common rate" in summary["sample_rate_from"]
    assert "every file resampled to 16000 Hz (the most common rate among the files (5 of 6); also 22050 Hz: 1)" in err
    assert summary["clips"] == 3 + 2 + 2 + 2 and summary["clip_s"] == pytest.approx(TINY_CLIP_S)
    assert load_embedder(tmp_path / "emb").cfg.sample_rate == 16000


def test_silent_short_and_undecodable_files_are_named_and_counted(mixed, run):
    _, err = run(mixed)
    assert f"skipped audio file {mixed / 'short.wav'}: shorter than one clip (0.60 s < 1 s)" in err
    assert f"skipped silent audio file {mixed / 'zeros.wav'}" in err
    assert "skipped cannot decode audio file" in err and "bad.mp3" in err
    assert f"dropped 1 silent clip(s) of 1 s from {mixed / 'gap.wav'}" in err
    assert f"skipped 1 undecodable file(s), 1 too-short file(s), 1 silent file(s) in {mixed}" in err


def test_sample_rate_option_sets_the_one_rate(mixed, run, tmp_path):
    summary, err = run(mixed, "--sample-rate", "22050")
    assert summary["sample_rate"] == 22050 and summary["sample_rate_from"] == "--sample-rate"
    assert "every file resampled to 22050 Hz (--sample-rate)" in err
    assert summary["clips"] == 9  # the same seconds, so the same clips, at the other rate
    assert load_embedder(tmp_path / "emb").cfg.sample_rate == 22050


def test_recall_is_measured_on_held_out_tracks_with_its_chance(mixed, run):
    summary, err = run(mixed)
    n = summary["heldout_clips"]
    assert n >= 3  # a quarter of 9 clips, rounded up
    assert summary["train_clips"] + n == summary["clips"]
    assert summary["recall_at_1_chance"] == pytest.approx(1 / (2 * n - 1))
    assert f"on N={n} held-out clips of {summary['heldout_tracks']} track(s)" in err


def test_a_folder_of_64_clips_holds_out_at_least_32_by_track(tmp_path, run):
    d = tmp_path / "many"
    d.mkdir()
    for i in range(20):  # 80 clips of 1 s at 8 kHz, 4 per track
        sf.write(d / f"t{i:02d}.wav", music(4.3, 8000, i), 8000)
    summary, _ = run(d)
    assert summary["clips"] == 80 and summary["heldout_clips"] >= MIN_HELDOUT
    assert summary["heldout_tracks"] == summary["heldout_clips"] // 4


def test_heldout_split_keeps_tracks_whole():
    tracks = [f"t{i}" for i in range(30) for _ in range(i % 4 + 1)]  # 75 clips, 1 to 4 per track
    train_idx, heldout_idx = heldout_split(tracks, 0.1, seed=3)
    assert len(heldout_idx) >= MIN_HELDOUT and len(train_idx) + len(heldout_idx) == len(tracks)
    assert not {tracks[i] for i in train_idx} & {tracks[i] for i in heldout_idx}
    # Fewer than 64 clips: a quarter, at least 2.
    assert len(heldout_split(tracks[:20], 0.1, seed=3)[1]) >= 5
    assert len(heldout_split(["a", "b", "c", "d"], 0.0, seed=0)[1]) >= 2
    # The same tracks and seed give the same split.
    assert np.array_equal(heldout_split(tracks, 0.1, seed=3)[1], heldout_idx)


def test_the_clip_is_two_chunks_of_the_preset():
    cfg = embedder_config("tiny", sample_rate=16000)
    assert cfg.clip_samples == 2 * cfg.chunk_samples == int(TINY_CLIP_S * 16000)
