"""``divcfg tokenize`` skips a silent clip by name and counts it, instead of pairing silence with a caption; the
threshold is common/data/folder.SILENCE_RMS, over the clip that would be encoded (the file's first ``--seconds``)."""
import json

import numpy as np
import pytest

from divcfg.codec.fit import fit_offline_codec
from divcfg.codec.offline import OfflineCodecConfig
from divcfg.codec.tokenize import TokenizeError, main, tokenize_folder
from divcfg.common.data.audio import write_wav
from divcfg.common.data.folder import SILENCE_RMS
from divcfg.common.data.tokens import read_tokens

SR = 16000


@pytest.fixture(scope="module")
def codec():
    rng = np.random.default_rng(0)
    t = np.arange(SR) / SR
    tones = np.stack([0.4 * np.sin(2 * np.pi * rng.uniform(100, 1500) * t) for _ in range(32)]).astype(np.float32)
    return fit_offline_codec(tones, OfflineCodecConfig(card=32), n_vectors=1500, kmeans_iters=5)


def tone(seconds: float, hz: float, amplitude: float) -> np.ndarray:
    return amplitude * np.sin(2 * np.pi * hz * np.arange(int(seconds * SR)) / SR)


def write_folder(root, files: dict[str, np.ndarray]) -> None:
    root.mkdir()
    for name, x in files.items():
        write_wav(root / name, x, SR)
    (root.parent / "caps.jsonl").write_text("\n".join(json.dumps({"file": n, "caption": f"caption of {n}"})
                                                      for n in files))


def test_silent_clips_are_skipped_by_name_and_counted(tmp_path, codec, capsys):
    rms = SILENCE_RMS / 2 ** 0.5  # a sine's RMS is its amplitude / sqrt 2
    files = {
        "loud.wav": tone(1.2, 300, 0.3),
        "quiet.wav": tone(1.2, 400, 3 * rms),  # about -50 dBFS: quiet music, kept
        "zeros.wav": np.zeros(int(1.2 * SR)),  # digital silence
        "hiss.wav": tone(1.2, 500, rms / 3),  # below the threshold once 16-bit quantised
        # Silent for the first second, the clip that would be encoded: the loud tail is cut off.
        "late.wav": np.concatenate([np.zeros(SR), tone(1.0, 600, 0.3)]),
    }
    write_folder(tmp_path / "audio", files)
    result = tokenize_folder(tmp_path / "audio", tmp_path / "caps.jsonl", codec, tmp_path / "t.parquet", seconds=1.0)
    assert result["clips"] == 2
    assert len(result["skipped"]) == 3
    for name in ("zeros.wav", "hiss.wav", "late.wav"):
        assert any(name in s and "silent" in s for s in result["skipped"]), (name, result["skipped"])
    data = read_tokens(tmp_path / "t.parquet")
    assert data.columns["file"] == ["loud.wav", "quiet.wav"]
    assert data.prompts == ["caption of loud.wav", "caption of quiet.wav"]

    codec.save(tmp_path / "codec")
    assert main(["--audio", str(tmp_path / "audio"), "--captions", str(tmp_path / "caps.jsonl"), "--codec",
                 str(tmp_path / "codec"), "--out", str(tmp_path / "u.parquet"), "--seconds", "1"]) == 0
    out = capsys.readouterr()
    for name in ("zeros.wav", "hiss.wav", "late.wav"):
        assert f"skipped silent audio file {tmp_path / 'audio' / name}" in out.err
    assert "tokenized 2 clips" in out.out and "skipped 3 undecodable or silent file(s)" in out.out


def test_a_folder_of_silence_is_refused_naming_it(tmp_path, codec):
    write_folder(tmp_path / "audio", {"a.wav": np.zeros(SR), "b.wav": np.zeros(SR)})
    with pytest.raises(TokenizeError, match=r"audio folder .*audio gives no clip: all 2 file\(s\) were skipped, "
                                            r"first: silent audio file .*a.wav"):
        tokenize_folder(tmp_path / "audio", tmp_path / "caps.jsonl", codec, tmp_path / "t.parquet", seconds=1.0)
    assert not (tmp_path / "t.parquet").exists()
