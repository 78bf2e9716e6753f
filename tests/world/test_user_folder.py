"""A user's folder read for a folder world (world/user_folder.py) and the clips cut from it (common/data/folder.py):
caption formats, bad rows named, clips cut, tracks split, held-out prompts checked."""
from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import soundfile as sf

from divcfg.common.data.audio import write_wav
from divcfg.common.data.folder import SILENCE_RMS, cut_clips, find_audio, split_by_track
from divcfg.world.user_folder import read_captions, read_folder, read_heldout_prompts

SR = 16000


def tone(seconds=1.0, hz=440.0, sr=SR, amp=0.5):
    t = np.arange(round(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def touch_wav(path, seconds=1.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    write_wav(path, tone(seconds), SR)
    return path


def write_lines(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ---- finding audio --------------------------------------------------------------------------------------------------

def test_find_audio_nested_sorted_relative_no_hidden(tmp_path):
    touch_wav(tmp_path / "b.wav")
    touch_wav(tmp_path / "a" / "z.wav")
    (tmp_path / "a" / "deep").mkdir()
    sf.write(tmp_path / "a" / "deep" / "c.flac", tone(), SR)
    touch_wav(tmp_path / "LOUD.WAV")  # suffixes match in any case
    touch_wav(tmp_path / ".hidden.wav")
    touch_wav(tmp_path / ".cache" / "x.wav")  # a file in a hidden folder is hidden
    (tmp_path / "notes.txt").write_text("not audio")
    (tmp_path / "folder.wav").mkdir()  # a folder named like audio is not a file
    found = [p.as_posix() for p in find_audio(tmp_path)]
    assert found == ["LOUD.WAV", "a/deep/c.flac", "a/z.wav", "b.wav"]
    with pytest.raises(ValueError, match="audio folder not found: .*nowhere"):
        find_audio(tmp_path / "nowhere")


# ---- caption formats ------------------------------------------------------------------------------------------------

def test_audiocraft_manifest_with_sidecars(tmp_path):
    root = tmp_path / "music"
    touch_wav(root / "a.wav")
    touch_wav(root / "sub" / "b.wav")
    touch_wav(root / "sub" / "c.wav")
    (root / "a.json").write_text(json.dumps({"description": "calm piano", "title": "A"}))
    (root / "sub" / "b.json").write_text(json.dumps({"description": ["fast drums", "loud drums"]}))
    # c.wav has no sidecar; paths are absolute (as audiocraft writes them) or relative to the audio root
    write_lines(root / "data.jsonl", [
        json.dumps({"path": str(root / "a.wav"), "duration": 1.0, "sample_rate": SR}),
        json.dumps({"path": "sub/b.wav", "duration": 1.0, "sample_rate": SR}),
        json.dumps({"path": "sub/c.wav", "duration": 1.0, "sample_rate": SR}),
    ])
    egs = tmp_path / "egs" / "data.jsonl.gz"  # audiocraft keeps manifests apart from the audio, often gzipped
    egs.parent.mkdir()
    egs.write_bytes(gzip.compress((root / "data.jsonl").read_bytes()))
    # the audio root holding data.jsonl, the manifest itself, or a gzipped one elsewhere
    for captions, name in ((root, "data.jsonl"), (root / "data.jsonl", "data.jsonl"), (egs, "data.jsonl.gz")):
        caps = read_captions(root, captions)
        assert caps.format == "audiocraft"
        assert caps.by_file == {"a.wav": ["calm piano"], "sub/b.wav": ["fast drums", "loud drums"]}
        assert set(caps.skipped) == {f"{name}:3", "sub/c.wav"}
        assert "no sidecar c.json" in caps.skipped[f"{name}:3"]
        assert caps.skipped["sub/c.wav"] == f"no caption in {name} (see {name}:3)"


def test_audiofolder_csv_relative_to_its_folder(tmp_path):
    touch_wav(tmp_path / "train" / "x.wav")
    touch_wav(tmp_path / "train" / "y.wav")
    write_lines(tmp_path / "train" / "metadata.csv", [
        "file_name,text,license",
        'x.wav,"a dog, barking",cc-by',
        "x.wav,a cat,cc-by",  # a second caption for the same file
        "y.wav,birds,cc0",
    ])
    caps = read_captions(tmp_path, tmp_path / "train" / "metadata.csv")
    assert caps.format == "audiofolder-csv"
    assert caps.by_file == {"train/x.wav": ["a dog, barking", "a cat"], "train/y.wav": ["birds"]}
    assert caps.skipped == {}


def test_audiofolder_jsonl_with_caption_lists(tmp_path):
    touch_wav(tmp_path / "x.wav")
    touch_wav(tmp_path / "y.flac.wav")
    write_lines(tmp_path / "metadata.jsonl", [
        json.dumps({"file_name": "x.wav", "text": ["rain", "soft rain"]}),
        json.dumps({"file_name": "y.flac.wav", "text": "  wind  "}),  # captions are stripped
    ])
    caps = read_captions(tmp_path, tmp_path)
    assert caps.format == "audiofolder-jsonl"
    assert caps.by_file == {"x.wav": ["rain", "soft rain"], "y.flac.wav": ["wind"]}
    assert caps.skipped == {}


def test_plain_csv_and_jsonl(tmp_path):
    touch_wav(tmp_path / "a.wav")
    touch_wav(tmp_path / "d" / "b.wav")
    write_lines(tmp_path / "caps.csv", ["path,caption", "a.wav,jazz", "d/b.wav,rock", "a.wav,smooth jazz"])
    caps = read_captions(tmp_path, tmp_path / "caps.csv")
    assert caps.format == "csv"
    assert caps.by_file == {"a.wav": ["jazz", "smooth jazz"], "d/b.wav": ["rock"]}
    assert caps.skipped == {}

    write_lines(tmp_path / "caps.jsonl", [json.dumps({"path": "./a.wav", "caption": ["jazz", "bebop"]}),
                                          json.dumps({"path": str(tmp_path / "d" / "b.wav"), "caption": "rock"})])
    caps = read_captions(tmp_path, tmp_path / "caps.jsonl")
    assert caps.format == "jsonl"
    assert caps.by_file == {"a.wav": ["jazz", "bebop"], "d/b.wav": ["rock"]}
    assert caps.skipped == {}


def test_bad_rows_are_named_and_not_fatal(tmp_path):
    touch_wav(tmp_path / "a.wav")
    touch_wav(tmp_path / "lonely.wav")  # no row names it
    (tmp_path / "notes.txt").write_text("x")
    write_lines(tmp_path / "caps.csv", [
        "path,caption",
        "a.wav,jazz",        # line 2: kept
        "gone.wav,rock",     # line 3: no such file
        "a.wav,jazz",        # line 4: duplicate of line 2
        "a.wav,   ",         # line 5: empty caption
        "notes.txt,words",   # line 6: not audio
        "../a.wav,escape",   # line 7: outside the audio root
        "a.wav,Jazz",        # line 8: a different caption (case counts): kept
    ])
    caps = read_captions(tmp_path, tmp_path / "caps.csv")
    assert caps.by_file == {"a.wav": ["jazz", "Jazz"]}
    assert set(caps.skipped) == {"caps.csv:3", "caps.csv:4", "caps.csv:5", "caps.csv:6", "caps.csv:7", "lonely.wav"}
    assert caps.skipped["caps.csv:3"].startswith("caption for a missing audio file 'gone.wav'")
    assert caps.skipped["caps.csv:4"] == "duplicate caption 'jazz' for a.wav (first at caps.csv:2)"
    assert caps.skipped["caps.csv:5"] == "empty caption for a.wav"
    assert "'notes.txt' is not a" in caps.skipped["caps.csv:6"]
    assert "'../a.wav' is outside the audio folder" in caps.skipped["caps.csv:7"]
    assert caps.skipped["lonely.wav"] == "no caption in caps.csv"


def test_bad_jsonl_lines_are_named(tmp_path):
    touch_wav(tmp_path / "a.wav")
    write_lines(tmp_path / "caps.jsonl", [
        json.dumps({"path": "a.wav", "caption": "jazz"}),
        "{not json",
        "[1, 2]",
        json.dumps({"path": "a.wav", "caption": 7}),
        json.dumps({"path": "a.wav"}),  # no caption key: an empty caption
    ])
    caps = read_captions(tmp_path, tmp_path / "caps.jsonl")
    assert caps.by_file == {"a.wav": ["jazz"]}
    assert caps.skipped["caps.jsonl:2"].startswith("not valid JSON")
    assert caps.skipped["caps.jsonl:3"] == "a JSON list, not an object"
    assert "caption 7 is not text" in caps.skipped["caps.jsonl:4"]
    assert caps.skipped["caps.jsonl:5"] == "empty caption for a.wav"
    assert len(caps.skipped) == 4


def test_unknown_formats_name_the_file_and_the_known_formats(tmp_path):
    touch_wav(tmp_path / "a.wav")
    known = "audiocraft: .*audiofolder-csv: .*audiofolder-jsonl: .*csv: .*jsonl: "
    cases = {
        "caps.txt": "a.wav jazz\n",
        "odd.csv": "file,description\na.wav,jazz\n",
        "odd.jsonl": json.dumps({"name": "a.wav", "caption": "jazz"}) + "\n",
        "empty.jsonl": "\n\n",
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=f"caption file .*{name}.*known formats: {known}"):
            read_captions(tmp_path, tmp_path / name)
    # A JSONL whose one line is broken: the error says which line and why, not only that no line parsed
    (tmp_path / "broken.jsonl").write_text('{"path": "a.wav", "caption": "jazz"\n')
    with pytest.raises(ValueError, match=r"broken.jsonl holds no JSON object lines \(broken.jsonl:1: not valid JSON"):
        read_captions(tmp_path, tmp_path / "broken.jsonl")
    with pytest.raises(ValueError, match=f"no caption file in .*expected exactly one of .*known formats: {known}"):
        read_captions(tmp_path, tmp_path)
    with pytest.raises(ValueError, match="caption file not found: .*gone.csv"):
        read_captions(tmp_path, tmp_path / "gone.csv")
    with pytest.raises(ValueError, match="audio folder not found: .*nowhere"):
        read_captions(tmp_path / "nowhere", tmp_path / "caps.txt")


# ---- clips ----------------------------------------------------------------------------------------------------------

def test_cut_clips_count_length_and_remainder():
    x = tone(2.5)
    clips = cut_clips(x, SR, SR, 1.0)
    assert len(clips) == 2  # the trailing 0.5 s is dropped
    assert all(c.shape == (SR,) and c.dtype == np.float32 for c in clips)
    np.testing.assert_array_equal(clips[0], x[:SR])
    np.testing.assert_array_equal(clips[1], x[SR:2 * SR])
    # round(0.1234 * 16000) = round(1974.4) = 1974 samples; 2.5 s / 1974 = 20 whole clips
    clips = cut_clips(x, SR, SR, 0.1234)
    assert len(clips) == 20 and {len(c) for c in clips} == {1974}


def test_cut_clips_drops_silence_short_and_empty():
    x = np.concatenate([tone(1.0), np.zeros(SR, np.float32), tone(1.0, hz=220.0)])
    clips = cut_clips(x, SR, SR, 1.0)
    assert len(clips) == 2
    np.testing.assert_array_equal(clips[0], x[:SR])
    np.testing.assert_array_equal(clips[1], x[2 * SR:])
    # the threshold itself: a constant signal's RMS is its value
    assert cut_clips(np.full(SR, SILENCE_RMS * 0.5, np.float32), SR, SR, 1.0) == []
    assert len(cut_clips(np.full(SR, SILENCE_RMS * 2, np.float32), SR, SR, 1.0)) == 1
    assert cut_clips(np.zeros(3 * SR, np.float32), SR, SR, 1.0) == []
    assert cut_clips(tone(0.99), SR, SR, 1.0) == []
    assert cut_clips(np.zeros(0, np.float32), SR, SR, 1.0) == []
    with pytest.raises(ValueError, match=r"mono audio \[N\], got shape \(2, 16000\)"):
        cut_clips(np.zeros((2, SR), np.float32), SR, SR, 1.0)
    with pytest.raises(ValueError, match="clip_s=0"):
        cut_clips(tone(), SR, SR, 0)


def test_cut_clips_resampling_keeps_frequency_and_length():
    x = tone(2.0, hz=440.0)
    clips = cut_clips(x, SR, 32000, 1.0)
    assert len(clips) == 2 and all(c.shape == (32000,) for c in clips)
    for c in clips:
        spectrum = np.abs(np.fft.rfft(c))
        assert np.argmax(spectrum) * 32000 / len(c) == 440.0  # 1 Hz bins over a 1 s clip
        assert abs(np.sqrt(np.mean(c ** 2)) - 0.5 / np.sqrt(2)) < 0.01  # the amplitude survives too


# ---- a folder -------------------------------------------------------------------------------------------------------

def test_read_folder_nested_wav_flac_and_skips(tmp_path):
    touch_wav(tmp_path / "good.wav", seconds=2.5)
    (tmp_path / "sub").mkdir()
    sf.write(tmp_path / "sub" / "good.flac", tone(1.0, hz=330.0), SR)
    sf.write(tmp_path / "sub" / "corrupt.flac", tone(1.0), SR)
    (tmp_path / "sub" / "corrupt.flac").write_bytes((tmp_path / "sub" / "corrupt.flac").read_bytes()[:30])
    write_wav(tmp_path / "silent.wav", np.zeros(2 * SR), SR)
    touch_wav(tmp_path / "short.wav", seconds=0.5)
    touch_wav(tmp_path / "lonely.wav")
    write_lines(tmp_path / "caps.csv", ["path,caption", "good.wav,piano", "good.wav,calm piano", "sub/good.flac,harp",
                                        "sub/corrupt.flac,x", "silent.wav,y", "short.wav,z"])
    out = read_folder(tmp_path, tmp_path / "caps.csv", SR, 1.0)
    assert out.clips.shape == (3, SR) and out.clips.dtype == np.float32
    assert out.track == ["good.wav", "good.wav", "sub/good.flac"]
    assert out.captions == [["piano", "calm piano"], ["piano", "calm piano"], ["harp"]]
    assert abs(out.clips[2] - tone(1.0, hz=330.0)).max() < 1e-4  # FLAC is lossless to 16 bits
    assert out.seconds == 3.0
    assert set(out.skipped) == {"sub/corrupt.flac", "silent.wav", "short.wav", "lonely.wav"}
    assert out.skipped["sub/corrupt.flac"].startswith("unreadable: cannot decode audio file ")
    assert "corrupt.flac" in out.skipped["sub/corrupt.flac"]
    assert out.skipped["silent.wav"].startswith("silent")
    assert out.skipped["short.wav"] == "shorter than one clip (0.50 s < 1 s)"
    assert out.skipped["lonely.wav"] == "no caption in caps.csv"
    summary = out.summary()
    assert {k: summary[k] for k in ("clips", "tracks", "seconds", "skipped")} == \
        {"clips": 3, "tracks": 2, "seconds": 3.0, "skipped": 4}
    assert summary["skipped_reasons"] == out.skipped
    json.dumps(summary)  # JSON-ready for world.json


def test_read_folder_resamples_and_refuses_a_folder_with_no_clip(tmp_path):
    touch_wav(tmp_path / "a.wav", seconds=2.0)
    write_lines(tmp_path / "caps.csv", ["path,caption", "a.wav,piano"])
    out = read_folder(tmp_path, tmp_path / "caps.csv", 32000, 0.5)
    assert out.clips.shape == (4, 16000) and out.seconds == 2.0
    with pytest.raises(ValueError, match=r"audio folder .* gives no 3 s clip; 1 skipped, first: a.wav: shorter.*; a shorter --clip-s keeps shorter files"):
        read_folder(tmp_path, tmp_path / "caps.csv", SR, 3.0)


def test_read_folder_mp3(tmp_path):
    if "MPEG_LAYER_III" not in sf.available_subtypes("MP3"):
        pytest.skip(f"this libsndfile ({sf.__libsndfile_version__}) cannot write MP3")
    (tmp_path / "mp3s").mkdir()
    sf.write(tmp_path / "mp3s" / "a.mp3", tone(2.0), SR, format="MP3", subtype="MPEG_LAYER_III")
    write_lines(tmp_path / "caps.jsonl", [json.dumps({"path": "mp3s/a.mp3", "caption": "sine"})])
    out = read_folder(tmp_path, tmp_path / "caps.jsonl", SR, 1.0)
    assert out.clips.shape == (2, SR) and out.track == ["mp3s/a.mp3"] * 2 and out.skipped == {}
    assert np.corrcoef(out.clips[0], tone(1.0))[0, 1] > 0.99


# ---- splits and held-out prompts ------------------------------------------------------------------------------------

def test_split_by_track_keeps_tracks_whole_and_is_deterministic():
    tracks = ["a", "b", "a", "c", "d", "c", "e", "f", "a", "g", "h", "b", "i", "j"]
    splits = set()
    for seed in range(10):
        train, held = split_by_track(tracks, 0.3, seed)
        assert sorted([*train, *held]) == list(range(len(tracks)))
        assert not {tracks[i] for i in train} & {tracks[i] for i in held}
        assert len({tracks[i] for i in held}) == 3  # round(0.3 * 10 tracks)
        again = split_by_track(tracks, 0.3, seed)
        np.testing.assert_array_equal(train, again[0])
        np.testing.assert_array_equal(held, again[1])
        splits.add(tuple(held))
    assert len(splits) > 1  # the seed matters
    # clip order does not change which tracks a seed holds out
    train, held = split_by_track(tracks[::-1], 0.3, 0)
    assert {tracks[::-1][i] for i in held} == {tracks[i] for i in split_by_track(tracks, 0.3, 0)[1]}


def test_split_by_track_one_track_each_side_at_least():
    for fraction in (0.01, 0.99):
        train, held = split_by_track(["x", "x", "y"], fraction, 0)
        assert len(train) >= 1 and len(held) >= 1
    # Two held out wherever three tracks allow it (an evaluation resamples two prompts at least), one with two
    tracks = [f"t{i:02d}" for i in range(14)]
    assert len({tracks[i] for i in split_by_track(tracks, 0.1, 0)[1]}) == 2  # round(0.1 · 14) = 1
    assert len({t for t in np.array(["x", "y", "z"])[split_by_track(["x", "y", "z"], 0.1, 0)[1]]}) == 2
    assert len(split_by_track(["x", "y"], 0.1, 0)[1]) == 1
    assert len({tracks[i] for i in split_by_track(tracks, 0.3, 0)[1]}) == 4  # above two, the fraction decides
    with pytest.raises(ValueError, match=r"at least 2 tracks .*got 1 \(only.wav\)"):
        split_by_track(["only.wav"] * 5, 0.2, 0)
    with pytest.raises(ValueError, match="got 0"):
        split_by_track([], 0.2, 0)
    with pytest.raises(ValueError, match="heldout_fraction must be in \\(0, 1\\), got 1.0"):
        split_by_track(["x", "y"], 1.0, 0)


def test_read_heldout_prompts(tmp_path):
    path = write_lines(tmp_path / "heldout.txt", ["calm piano", "", "  fast drums  ", "   "])
    assert read_heldout_prompts(path, ["jazz", "rock"]) == ["calm piano", "fast drums"]
    with pytest.raises(ValueError, match=r"heldout.txt: 1 prompt\(s\) are also training prompts: 'fast drums'"):
        read_heldout_prompts(path, ["jazz", "fast drums"])
