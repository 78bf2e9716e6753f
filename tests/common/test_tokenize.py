import json
import math

import numpy as np
import pytest

from divcfg.codec.fit import fit_offline_codec
from divcfg.codec.offline import OfflineCodecConfig
from divcfg.codec.tokenize import TokenizeError, tokenize_folder
from divcfg.common.data.audio import write_wav
from divcfg.common.data.tokens import read_tokens


@pytest.fixture(scope="module")
def codec():
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    tones = np.stack([0.4 * np.sin(2 * np.pi * rng.uniform(100, 1500) * t) for _ in range(32)]).astype(np.float32)
    return fit_offline_codec(tones, OfflineCodecConfig(card=32), n_vectors=1500, kmeans_iters=5)


def write_folder(root, rates=(16000, 22050, 16000)):
    root.mkdir()
    caps = []
    for i, sr in enumerate(rates):
        t = np.arange(int(sr * 1.2)) / sr
        write_wav(root / f"c{i}.wav", 0.3 * np.sin(2 * np.pi * (200 + 100 * i) * t), sr)
        caps.append({"file": f"c{i}.wav", "caption": f"tone number {i}"})
    return caps


def test_wav_folder_to_tokens(tmp_path, codec):
    caps = write_folder(tmp_path / "audio")
    (tmp_path / "caps.jsonl").write_text("\n".join(json.dumps(c) for c in caps))
    result = tokenize_folder(tmp_path / "audio", tmp_path / "caps.jsonl", codec, tmp_path / "t.parquet", seconds=1.0)
    assert result == {"clips": 3, "resampled": 1, "frames": 25, "skipped": []}
    data = read_tokens(tmp_path / "t.parquet")
    assert data.prompts == ["tone number 0", "tone number 1", "tone number 2"]
    assert data.codes.shape == (3, 4, 25) and data.columns["file"] == ["c0.wav", "c1.wav", "c2.wav"]
    assert len(np.unique(data.codes[:, 0])) > 1


def test_csv_captions(tmp_path, codec):
    write_folder(tmp_path / "audio")
    (tmp_path / "caps.csv").write_text("file,caption\nc0.wav,a\nc1.wav,b\nc2.wav,\"c, with comma\"\n")
    tokenize_folder(tmp_path / "audio", tmp_path / "caps.csv", codec, tmp_path / "t.parquet", seconds=1.0)
    assert read_tokens(tmp_path / "t.parquet").prompts == ["a", "b", "c, with comma"]


def test_bad_inputs(tmp_path, codec):
    (tmp_path / "empty").mkdir()
    (tmp_path / "caps.csv").write_text("c0.wav,a\n")
    with pytest.raises(TokenizeError, match="holds no readable .wav/.flac/.ogg/.mp3 file"):
        tokenize_folder(tmp_path / "empty", tmp_path / "caps.csv", codec, tmp_path / "t.parquet", 1.0)
    write_folder(tmp_path / "audio")
    with pytest.raises(TokenizeError, match="does not match .*2 audio file\\(s\\) without a caption"):
        tokenize_folder(tmp_path / "audio", tmp_path / "caps.csv", codec, tmp_path / "t.parquet", 1.0)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.wav").write_bytes(b"RIFFjunk")
    (tmp_path / "bad.csv").write_text("x.wav,a\n")
    with pytest.raises(TokenizeError, match="holds no readable .*cannot decode audio file .*x.wav"):
        tokenize_folder(tmp_path / "bad", tmp_path / "bad.csv", codec, tmp_path / "t.parquet", 1.0)
    assert not (tmp_path / "t.parquet").exists()


def test_undecodable_files_are_skipped_and_counted(tmp_path, codec):
    import soundfile as sf
    caps = write_folder(tmp_path / "audio")
    t = np.arange(16000) / 16000
    sf.write(tmp_path / "audio" / "f.flac", 0.3 * np.sin(2 * np.pi * 500 * t), 16000)
    (tmp_path / "audio" / "broken.mp3").write_bytes(b"ID3 junk")
    caps += [{"file": "f.flac", "caption": "a flac tone"}, {"file": "broken.mp3", "caption": "lost"}]
    (tmp_path / "caps.jsonl").write_text("\n".join(json.dumps(c) for c in caps))
    result = tokenize_folder(tmp_path / "audio", tmp_path / "caps.jsonl", codec, tmp_path / "t.parquet", seconds=1.0)
    assert result["clips"] == 4 and len(result["skipped"]) == 1 and "broken.mp3" in result["skipped"][0]
    data = read_tokens(tmp_path / "t.parquet")
    assert data.columns["file"] == ["c0.wav", "c1.wav", "c2.wav", "f.flac"] and data.prompts[-1] == "a flac tone"


def test_a_users_musicgen_directory_is_its_own_codec(tmp_path):
    """`divcfg tokenize --codec DIR` with a MusicGen directory encodes with that model's EnCodec, as the model's own
    encode would; a directory that is neither a codec nor MusicGen is refused by name."""
    pytest.importorskip("transformers")
    from divcfg.codec.tokenize import main
    from divcfg.model.musicgen.loading import tiny_musicgen
    model = tiny_musicgen(seed=3)
    model.save_pretrained(tmp_path / "musicgen")
    caps = write_folder(tmp_path / "audio", rates=(8000, 8000, 16000))
    (tmp_path / "caps.jsonl").write_text("\n".join(json.dumps(c) for c in caps))
    assert main(["--audio", str(tmp_path / "audio"), "--captions", str(tmp_path / "caps.jsonl"), "--codec",
                 str(tmp_path / "musicgen"), "--out", str(tmp_path / "t.parquet"), "--seconds", "1"]) == 0
    data = read_tokens(tmp_path / "t.parquet")
    k, card = model.config.decoder.num_codebooks, model.config.decoder.vocab_size
    assert data.codes.shape == (3, k, 50) and int(data.codes.max()) < card  # 50 frames/s, as MusicGen's EnCodec
    import soundfile as sf
    import torch
    wav, sr = sf.read(tmp_path / "audio" / "c0.wav", dtype="float32")
    assert sr == model.config.audio_encoder.sampling_rate
    with torch.inference_mode():
        want = model.audio_encoder.encode(torch.as_tensor(wav[:sr])[None, None], bandwidth=None).audio_codes[0]
    assert torch.equal(torch.as_tensor(data.codes[0]), want[0].long())
    (tmp_path / "neither").mkdir()
    assert main(["--audio", str(tmp_path / "audio"), "--captions", str(tmp_path / "caps.jsonl"), "--codec",
                 str(tmp_path / "neither"), "--out", str(tmp_path / "u.parquet")]) != 0
    assert not (tmp_path / "u.parquet").exists()


def test_only_each_files_first_clip_is_decoded_and_resampled_as_from_the_whole_file(tmp_path, codec, monkeypatch):
    import divcfg.common.data.audio as audio_mod
    from divcfg.common.data.audio import read_audio, resample

    (tmp_path / "audio").mkdir()
    sr, rng = 22050, np.random.default_rng(1)
    track = (0.3 * np.sin(2 * np.pi * 330 * np.arange(20 * sr) / sr) + 0.05 * rng.standard_normal(20 * sr))
    write_wav(tmp_path / "audio" / "long.wav", track, sr)  # a 20 s track, at another rate than the codec's
    (tmp_path / "caps.csv").write_text("long.wav,a long track\n")
    decoded = []
    real = audio_mod.read_audio
    monkeypatch.setattr(audio_mod, "read_audio", lambda p, s=None: decoded.append(len(real(p, s)[0])) or real(p, s))
    tokenize_folder(tmp_path / "audio", tmp_path / "caps.csv", codec, tmp_path / "t.parquet", seconds=1.0)
    assert decoded == [math.ceil(1.05 * sr)]  # the clip and the resampler's margin, not the 20 s
    # The clip the codec got equals the whole file resampled and cut: compare against encoding that directly.
    whole, _ = read_audio(tmp_path / "audio" / "long.wav")
    head, _ = read_audio(tmp_path / "audio" / "long.wav", max_seconds=1.05)
    n = codec.sample_rate
    np.testing.assert_allclose(resample(head, sr, n)[:n], resample(whole, sr, n)[:n], atol=1e-6)
    np.testing.assert_array_equal(read_tokens(tmp_path / "t.parquet").codes,
                                  codec.encode(resample(whole, sr, n)[None, :n]).numpy())
