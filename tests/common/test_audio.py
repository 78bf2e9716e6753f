"""Reading WAV, FLAC, OGG and MP3 through soundfile; corrupt, empty and unsupported files named."""
import json

import numpy as np
import pytest
import soundfile as sf

from divcfg.common.data.audio import AudioError, read_audio, read_audio_folder, read_wav, write_wav

SR = 16000


def tone(seconds=1.0, hz=440.0, sr=SR):
    t = np.arange(int(seconds * sr)) / sr
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


# (suffix, soundfile format, subtype, max abs error). Lossless formats keep 16-bit samples (1/32768 per step); the
# lossy ones (Vorbis, MPEG layer III) only keep the waveform's shape, checked by correlation below.
FORMATS = [(".wav", "WAV", "PCM_16", 1e-4), (".flac", "FLAC", "PCM_16", 1e-4), (".ogg", "OGG", "VORBIS", 0.05),
           (".mp3", "MP3", "MPEG_LAYER_III", 0.05)]


@pytest.mark.parametrize("suffix,fmt,subtype,tol", FORMATS)
def test_formats_read_back_the_samples_written(tmp_path, suffix, fmt, subtype, tol):
    if subtype not in sf.available_subtypes(fmt):
        pytest.skip(f"this libsndfile ({sf.__libsndfile_version__}) cannot write {fmt}/{subtype}")
    x = tone()
    stereo = np.stack([x, x], axis=1)  # channels are averaged back to the same mono signal
    sf.write(tmp_path / f"a{suffix}", stereo, SR, format=fmt, subtype=subtype)
    y, sr = read_audio(tmp_path / f"a{suffix}")
    assert sr == SR and y.dtype == np.float32 and y.ndim == 1
    assert len(y) == len(x)  # libsndfile trims the MP3 encoder delay and padding
    assert np.abs(y - x).max() < tol
    assert np.corrcoef(x, y)[0, 1] > 0.999


def test_write_wav_round_trip_and_old_name(tmp_path):
    x = tone(0.5)
    write_wav(tmp_path / "a.wav", x, 22050)
    y, sr = read_wav(tmp_path / "a.wav")
    assert sr == 22050 and np.abs(x - y).max() < 1e-4


def test_bad_files_are_named(tmp_path):
    sf.write(tmp_path / "good.flac", tone(), SR)
    (tmp_path / "trunc.flac").write_bytes((tmp_path / "good.flac").read_bytes()[:30])
    with pytest.raises(AudioError, match="cannot decode audio file .*trunc.flac"):
        read_audio(tmp_path / "trunc.flac")
    (tmp_path / "junk.mp3").write_bytes(b"\x00" * 10)
    with pytest.raises(AudioError, match="cannot decode audio file .*junk.mp3"):
        read_audio(tmp_path / "junk.mp3")
    write_wav(tmp_path / "empty.wav", np.zeros(0), SR)
    with pytest.raises(AudioError, match="audio file .*empty.wav is empty"):
        read_audio(tmp_path / "empty.wav")
    (tmp_path / "song.m4a").write_bytes(b"....ftypM4A")
    with pytest.raises(AudioError, match="unsupported audio format '.m4a': .*song.m4a"):
        read_audio(tmp_path / "song.m4a")
    with pytest.raises(AudioError, match="audio file not found: .*gone.ogg"):
        read_audio(tmp_path / "gone.ogg")


def test_folder_skips_and_counts_bad_files(tmp_path):
    sf.write(tmp_path / "b.flac", tone(hz=300), SR)
    write_wav(tmp_path / "a.wav", tone(hz=200), SR)
    (tmp_path / "c.ogg").write_bytes(b"OggS broken")
    write_wav(tmp_path / "d.wav", np.zeros(0), SR)
    (tmp_path / "notes.txt").write_text("not audio")
    (tmp_path / ".hidden.wav").write_bytes(b"")  # editors' and OS files are not the user's clips
    folder = read_audio_folder(tmp_path)
    assert [name for name, _, _ in folder.clips] == ["a.wav", "b.flac"]
    assert folder.skipped == ["c.ogg", "d.wav", "notes.txt"]
    assert "cannot decode" in folder.reasons["c.ogg"] and "is empty" in folder.reasons["d.wav"]
    assert "unsupported audio format" in folder.reasons["notes.txt"]


def test_folder_without_audio_is_an_error(tmp_path):
    with pytest.raises(AudioError, match="audio folder not found"):
        read_audio_folder(tmp_path / "none")
    (tmp_path / "x.wav").write_bytes(b"RIFFjunk")
    with pytest.raises(AudioError, match="holds no readable .* skipped 1: .*x.wav"):
        read_audio_folder(tmp_path)


def test_embedder_cli_reads_flac_and_counts_skips(tmp_path, capsys):
    from divcfg.reward.embedder_cli import main
    rng = np.random.default_rng(0)
    (tmp_path / "audio").mkdir()
    for i in range(8):
        sf.write(tmp_path / "audio" / f"c{i}.flac", tone(1.2, hz=rng.uniform(150, 900)), SR)
    (tmp_path / "audio" / "bad.mp3").write_bytes(b"ID3 not really")
    rc = main(["train", "--audio", str(tmp_path / "audio"), "--out", str(tmp_path / "emb"), "--size", "tiny",
               "--steps", "2", "--batch-size", "4", "--heldout", "0.25"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert json.loads(out.out)["clips"] == 8
    assert "skipped cannot decode audio file" in out.err and "skipped 1 undecodable file(s)" in out.err


@pytest.mark.parametrize("suffix,fmt,subtype,tol", FORMATS)
def test_max_seconds_decodes_the_files_start(tmp_path, suffix, fmt, subtype, tol):
    if subtype not in sf.available_subtypes(fmt):
        pytest.skip(f"this libsndfile ({sf.__libsndfile_version__}) cannot write {fmt}/{subtype}")
    sf.write(tmp_path / f"a{suffix}", tone(2.0), SR, format=fmt, subtype=subtype)
    whole, _ = read_audio(tmp_path / f"a{suffix}")
    head, sr = read_audio(tmp_path / f"a{suffix}", max_seconds=0.3001)
    assert sr == SR and len(head) == 4802  # ceil(0.3001 × 16000)
    np.testing.assert_array_equal(head, whole[:len(head)])
    longer, _ = read_audio(tmp_path / f"a{suffix}", max_seconds=5.0)  # past the end: the whole file
    np.testing.assert_array_equal(longer, whole)
    folder = read_audio_folder(tmp_path, max_seconds=0.3001)
    np.testing.assert_array_equal(folder.clips[0][1], head)
