"""``divcfg world listen``: the rows are what they say (the originals are the held-out clips the tokens encode)."""
import numpy as np
import pytest
import torch

from divcfg.codec.offline import load_codec
from divcfg.common.data.tokens import read_tokens
from divcfg.world.build import main
from divcfg.world.listen import spectrogram_rows


def test_rows_are_the_heldout_clips_their_round_trip_and_each_models_samples(tiny_world):
    rows, prompts, rate = spectrogram_rows(tiny_world, {"student": str(tiny_world / "base")}, clips=2)
    assert list(rows) == ["original", "codec round trip", "base γ=1", "base γ=3", "student"]
    heldout = read_tokens(tiny_world / "heldout.parquet")
    assert prompts == list(heldout.prompts[:2]) and rate == load_codec(tiny_world / "codec").sample_rate
    # The regenerated originals are exactly the clips the world's tokens stage encoded as its first held-out clips
    codec = load_codec(tiny_world / "codec")
    assert torch.equal(codec.encode(torch.as_tensor(rows["original"])).cpu(),
                       torch.as_tensor(np.asarray(heldout.codes[:2]), dtype=torch.long))
    assert all(v.shape == rows["codec round trip"].shape for v in rows.values())
    # One sampling seed for every model: the same weights sample the same clips
    assert np.array_equal(rows["student"], rows["base γ=1"])
    assert not np.array_equal(rows["base γ=3"], rows["base γ=1"])


def test_listen_writes_the_png_and_tensorboard_and_refuses_bad_input(tiny_world, tmp_path, capsys):
    assert main(["listen", str(tiny_world), "--clips", "1", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "spectrograms.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    # The clips as WAVs, and the same clips in TensorBoard's audio tab
    import soundfile as sf
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    wavs = sorted(p.name for p in tmp_path.glob("*.wav"))
    assert wavs == ["base_γ1_clip0.wav", "base_γ3_clip0.wav", "codec_round_trip_clip0.wav", "original_clip0.wav"]
    assert sf.info(tmp_path / "original_clip0.wav").samplerate == load_codec(tiny_world / "codec").sample_rate
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"audio": 0})
    events.Reload()
    assert sorted(events.Tags()["audio"]) == sorted(f"listen/{w[:-len('_clip0.wav')]}/clip0" for w in wavs)
    assert main(["listen", str(tiny_world), "--clips", "0", "--out", str(tmp_path)]) == 2
    assert "--clips 0" in capsys.readouterr().err
    assert main(["listen", str(tiny_world), "--student", "nopath", "--out", str(tmp_path)]) == 2
    assert "--student 'nopath': expected NAME=CKPT" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["listen", str(tiny_world)])  # --out is required
