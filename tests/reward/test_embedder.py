"""The music embedding model E: presets, shapes, pure functions against hand-computed values, a short training run
on synthetic music, and checkpoints."""
import math
import os

import numpy as np
import pytest
import torch

from divcfg.reward.embedder import (
    MusicEmbedder,
    embedder_config,
    info_nce,
    load_embedder,
    recall_at_1,
    save_embedder,
    train_embedder,
)
from divcfg.reward.views import add_noise, pitch_shift, random_chunk_pairs, tempo_shift

torch.set_num_threads(1)
SR = 16000


def synthetic_music(n: int, seconds: float, seed: int) -> np.ndarray:
    """float32 ``[n, samples]``: each clip plays random notes from its own 3-note set, with its own harmonic
    timbre, note length, decay and noise level, so two chunks of one clip share a style but not their notes."""
    rng = np.random.default_rng(seed)
    S = int(seconds * SR)
    out = np.zeros((n, S), np.float32)
    for i in range(n):
        notes = 110 * 2 ** (rng.uniform(0, 3) + rng.integers(0, 12, 3) / 12)
        harmonics = rng.uniform(0, 1, 5) * np.arange(1, 6) ** -rng.uniform(0.5, 2)
        note_len = int(rng.choice([0.08, 0.125, 0.2]) * SR)
        t = np.arange(note_len) / SR
        env = np.exp(-t * rng.uniform(5, 30))
        x = np.concatenate([
            env * sum(a * np.sin(2 * np.pi * (h + 1) * f * t + rng.uniform(0, 2 * np.pi))
                      for h, a in enumerate(harmonics))
            for f in rng.choice(notes, S // note_len + 1)])[:S]
        out[i] = 0.3 * x / np.abs(x).max() + rng.uniform(0.0, 0.05) * rng.standard_normal(S)
    return out


def test_presets_and_config_validation():
    n_params = {size: sum(p.numel() for p in MusicEmbedder(embedder_config(size)).parameters())
                for size in ("tiny", "small", "full")}
    assert n_params["tiny"] < 100_000 < n_params["small"] < 2_000_000
    assert 20_000_000 < n_params["full"] < 26_000_000
    full = embedder_config("full")
    assert (full.depth, full.heads, full.dim) == (12, 6, 384)
    assert embedder_config("tiny", seed=7).seed == 7
    with pytest.raises(ValueError, match="'huge'.*tiny"):
        embedder_config("huge")
    with pytest.raises(ValueError, match="heads"):
        embedder_config("tiny", heads=3)
    with pytest.raises(ValueError, match="bogus"):
        embedder_config("tiny", bogus=1)


def test_embed_shapes_unit_norm_and_lengths():
    cfg = embedder_config("tiny")
    model = MusicEmbedder(cfg).eval()
    wav = torch.from_numpy(synthetic_music(3, 1.3, seed=0))
    e = model.embed(wav, SR)
    assert e.shape == (3, cfg.embed_dim)
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(3))
    # Another rate is resampled; a clip embeds the same alone as in a batch.
    assert model.embed(torch.randn(2, 22050), 22050).shape == (2, cfg.embed_dim)
    torch.testing.assert_close(model.embed(wav[1:2], SR), e[1:2], atol=1e-5, rtol=1e-5)
    # forward takes other mel lengths by interpolating the positions.
    mel = torch.randn(2, cfg.n_mels, 3 * cfg.chunk_frames)
    torch.testing.assert_close(model(mel).norm(dim=-1), torch.ones(2))
    with pytest.raises(ValueError, match="at least one chunk"):
        model.embed(wav[:, : cfg.chunk_samples - 1], SR)
    with pytest.raises(ValueError, match=r"\[B, N\]"):
        model.embed(wav[0], SR)


def test_seed_determinism_and_independence():
    cfg = embedder_config("tiny")
    same = MusicEmbedder(cfg).state_dict(), MusicEmbedder(cfg).state_dict()
    other = MusicEmbedder(embedder_config("tiny", seed=1)).state_dict()
    assert all(torch.equal(same[0][k], same[1][k]) for k in same[0])
    assert not torch.equal(same[0]["pos"], other["pos"])

    clips = synthetic_music(8, 1.2, seed=1)
    probe = torch.from_numpy(clips[:2])
    runs = [train_embedder(clips, SR, embedder_config("tiny", seed=s), steps=3, batch_size=4, lr=1e-3,
                           progress=False).embed(probe, SR) for s in (0, 0, 1)]
    torch.testing.assert_close(runs[0], runs[1], atol=0, rtol=0)
    assert not torch.allclose(runs[0], runs[2], atol=1e-3)


def test_info_nce_hand_computed():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    # logits = a bᵀ / 0.5 = [[1.2, 0], [1.6, 2]]; rows a->b, columns b->a, the diagonal is the target.
    a_to_b = (-1.2 + math.log(math.exp(1.2) + 1)) + (-2 + math.log(math.exp(1.6) + math.exp(2)))
    b_to_a = (-1.2 + math.log(math.exp(1.2) + math.exp(1.6))) + (-2 + math.log(1 + math.exp(2)))
    loss, metrics = info_nce(a, b, temperature=0.5)
    assert loss.item() == pytest.approx((a_to_b + b_to_a) / 4, abs=1e-6)
    assert metrics["pos_cos"] == pytest.approx(0.8)
    assert metrics["neg_cos"] == pytest.approx(0.4)
    assert metrics["accuracy"] == 1.0
    with pytest.raises(ValueError):
        info_nce(a, b[:1], 0.5)


def test_chunk_pairs_do_not_overlap():
    N, S, c = 64, 100, 30
    clips = torch.arange(N * S, dtype=torch.float32).view(N, S)  # each sample's value encodes clip and position
    a, b = random_chunk_pairs(clips, c, torch.Generator().manual_seed(0))
    assert a.shape == b.shape == (N, c)
    for chunk in (a, b):
        assert torch.equal(chunk - chunk[:, :1], torch.arange(c, dtype=torch.float32).expand(N, c))  # contiguous
        assert torch.equal(chunk[:, 0] // S, torch.arange(N, dtype=torch.float32))  # from its own clip
    start_a, start_b = a[:, 0] % S, b[:, 0] % S
    assert ((start_a - start_b).abs() >= c).all()
    assert (start_a < start_b).any() and (start_a > start_b).any()
    with pytest.raises(ValueError, match="at least 60"):
        random_chunk_pairs(clips[:, :59], c, torch.Generator())


def test_augmentations():
    g = torch.Generator().manual_seed(0)
    wav = torch.sin(torch.linspace(0, 300, 8000)).expand(16, -1).contiguous()
    noisy = add_noise(wav, g, (10.0, 20.0))
    snr = 10 * torch.log10(wav.pow(2).mean(1) / (noisy - wav).pow(2).mean(1))
    assert (snr > 9.5).all() and (snr < 20.5).all() and snr.std() > 1

    mel = torch.randn(16, 32, 40)
    torch.testing.assert_close(tempo_shift(mel, g, 0.0), mel)
    stretched = tempo_shift(mel, g, 0.2)
    assert stretched.shape == mel.shape and not torch.allclose(stretched, mel)

    hot = torch.zeros(16, 32, 40)
    hot[:, 10] = 1.0
    shifted = pitch_shift(hot, g, 2)
    moved_to = shifted.argmax(dim=1)  # [B, F]
    assert (moved_to == moved_to[:, :1]).all()  # the same shift at every frame
    assert ((moved_to - 10).abs() <= 2).all() and (moved_to != 10).any()


def test_short_training_separates_clips():
    cfg = embedder_config("tiny")
    train, held_out = synthetic_music(64, 1.5, seed=10), synthetic_music(32, 1.5, seed=11)
    log = []
    model = train_embedder(train, SR, cfg, steps=150, batch_size=32, lr=3e-3,
                           log_fn=lambda step, m: log.append(m), progress=False)
    assert not model.training and len(log) == 150 and "embedder/loss" in log[0]
    assert log[-1]["embedder/loss"] < log[0]["embedder/loss"]

    a, b = random_chunk_pairs(torch.from_numpy(held_out), cfg.chunk_samples, torch.Generator().manual_seed(0))
    sim = model.embed(a, SR) @ model.embed(b, SR).T
    pos, neg = sim.diagonal().mean(), sim[~torch.eye(32, dtype=torch.bool)].mean()
    assert pos > neg + 0.3

    chance = 1 / (2 * 32 - 1)
    recall = recall_at_1(model, held_out, SR, cfg.chunk_samples, torch.Generator().manual_seed(1))
    untrained = recall_at_1(MusicEmbedder(cfg).eval(), held_out, SR, cfg.chunk_samples,
                            torch.Generator().manual_seed(1))
    assert recall > 10 * chance and recall > untrained + 0.2


def test_save_load_round_trip_and_bad_files(tmp_path):
    cfg = embedder_config("tiny", seed=3)
    model = MusicEmbedder(cfg).eval()
    save_embedder(model, tmp_path / "e")
    assert sorted(os.listdir(tmp_path / "e")) == ["COMPLETE", "config.json", "model.safetensors"]  # no temp files left
    loaded = load_embedder(tmp_path / "e")
    assert loaded.cfg == cfg
    wav = torch.from_numpy(synthetic_music(2, 1.0, seed=2))
    torch.testing.assert_close(loaded.embed(wav, SR), model.embed(wav, SR), atol=0, rtol=0)

    weights = tmp_path / "e" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match="model.safetensors"):
        load_embedder(tmp_path / "e")
    with pytest.raises(FileNotFoundError, match="missing"):
        load_embedder(tmp_path / "missing")
    os.remove(tmp_path / "e" / "config.json")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_embedder(tmp_path / "e")
