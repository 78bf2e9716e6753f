"""``divcfg bench tokenize``: the folder path against the codec's own encode, on the tiny world's codec."""
import pytest

from divcfg.bench.run import main
from divcfg.bench.tokenize import TARGET, decided, repeat_ratios, run


def test_entries_time_both_sides_on_the_same_clips(tiny_world, tmp_path):
    folder, direct = run(str(tiny_world / "codec"), files=4, seconds=0.5, repeats=1, verbose=False)
    assert folder["name"] == "tokenize/clips_per_s" and direct["name"] == "tokenize/codec_clips_per_s"
    assert folder["value"] == pytest.approx(4 / folder["folder_s"][0])  # one repeat: its median is itself
    assert folder["baseline_value"] == pytest.approx(4 / folder["codec_s"][0]) == pytest.approx(direct["value"])
    assert folder["ratio"] == pytest.approx(folder["value"] / folder["baseline_value"])
    assert folder["target"] == TARGET and folder["met"] == (folder["ratio"] >= TARGET)
    # Files at another rate are resampled by the folder path, and the direct side gets the same clips resampled
    resampled, _ = run(str(tiny_world / "codec"), files=2, seconds=0.5, rate=8000, repeats=1, verbose=False)
    assert resampled["rate"] == 8000 and resampled["codec_rate"] != 8000
    # Files longer than the clip, in WAV: the clip is each file's start on both sides
    long_wav, _ = run(str(tiny_world / "codec"), files=2, seconds=0.5, file_seconds=2.0, fmt="wav", repeats=1,
                      verbose=False)
    assert (long_wav["file_seconds"], long_wav["format"], long_wav["seconds"]) == (2.0, "wav", 0.5)


def test_the_target_is_decided_by_the_per_repeat_interval_by_hand():
    # repeats: folder 10, 10, 10 s against the codec's 9, 10, 11 s: ratios 0.9, 1.0, 1.1, mean 1.0, sd 0.1
    got = repeat_ratios([10.0, 10.0, 10.0], [9.0, 10.0, 11.0])
    assert got["per_repeat"] == pytest.approx([0.9, 1.0, 1.1]) and got["mean_of_repeats"] == pytest.approx(1.0)
    half = 4.303 * 0.1 / 3 ** 0.5  # t(0.975, 2 df)
    assert got["lo"] == pytest.approx(1.0 - half) and got["hi"] == pytest.approx(1.0 + half)
    assert not decided(1.0, got)  # the median meets 0.9 but the interval's lower end (0.75) does not
    steady = repeat_ratios([10.0, 10.0], [9.5, 9.51])
    assert decided(0.9505, steady) and steady["lo"] > TARGET
    one = repeat_ratios([10.0], [9.5])
    assert decided(0.95, one) and not decided(0.85, one)  # one repeat: no interval, the ratio decides


def test_bad_input_is_refused_by_name(tmp_path, capsys):
    assert main(["tokenize", "--codec", str(tmp_path / "nowhere"), "--files", "2"]) == 2
    assert "divcfg bench tokenize: error:" in capsys.readouterr().err
    with pytest.raises(ValueError, match="must be positive"):
        run(str(tmp_path), files=0)
    with pytest.raises(ValueError, match="--file-seconds at least --seconds, got 2, 3.0, 3, 1.0"):
        run(str(tmp_path), files=2, file_seconds=1.0)
    with pytest.raises(ValueError, match="--format must be flac or wav, got 'mp3'"):
        run(str(tmp_path), files=2, fmt="mp3")


def test_musicgens_encodec_shape_makes_four_codebooks_of_2048_at_50_frames_a_second():
    pytest.importorskip("transformers")
    from divcfg.bench.tokenize import encodec_32khz_shape

    codec = encodec_32khz_shape()
    assert (codec.sample_rate, codec.frame_rate, codec.n_codebooks, codec.card) == (32_000, 50.0, 4, 2048)
    import numpy as np
    codes = codec.encode(np.random.default_rng(0).standard_normal((2, 16_000)).astype(np.float32) * 0.1)
    assert tuple(codes.shape) == (2, 4, 25) and int(codes.max()) < 2048
    assert len({tuple(c) for c in codes[0].T.tolist()}) > 1  # random codebooks: the codes follow the audio
