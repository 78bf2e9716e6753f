"""The CLAP judge on a tiny random CLAP built here, saved and loaded back: its scores against the cosine of
``ClapModel.get_text_features`` and ``get_audio_features`` computed directly, and its errors on other directories."""
import json

import numpy as np
import pytest
import torch
import torchaudio.functional as AF

pytest.importorskip("transformers")

from divcfg.reward.clap_judge import ClapLoadError, load_clap_judge  # noqa: E402

SENTENCES = ["a calm piano melody", "fast drums and a deep bass", "a sad violin at night",
             "upbeat electronic dance music", "slow jazz guitar with soft brushes"]


def tiny_tokenizer(tmp_path):
    """A RoBERTa tokenizer over a byte-level BPE trained on a few sentences, RoBERTa's special tokens first
    (<s> 0, <pad> 1, </s> 2: the ids ClapTextConfig expects)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(SENTENCES, vocab_size=300, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(tmp_path))
    return RobertaTokenizer(vocab=str(tmp_path / "vocab.json"), merges=str(tmp_path / "merges.txt"),
                            model_max_length=64)


def tiny_clap(tokenizer, fusion: bool = False, seed: int = 0):
    """A random CLAP of ~15k parameters: a one-layer RoBERTa of width 16, and a two-stage HTSAT (patch width 8)
    whose spec_size 256 takes the feature extractor's 10 s window of 64 mels (1001 frames at 48 kHz, hop 480)."""
    from transformers import ClapAudioConfig, ClapConfig, ClapModel, ClapTextConfig

    text = ClapTextConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=32, max_position_embeddings=66, projection_dim=8)
    audio = ClapAudioConfig(spec_size=256, num_mel_bins=64, window_size=8, depths=[1, 1], num_attention_heads=[1, 2],
                            patch_embeds_hidden_size=8, hidden_size=16, projection_dim=8, enable_fusion=fusion)
    torch.manual_seed(seed)
    return ClapModel(ClapConfig(text_config=text.to_dict(), audio_config=audio.to_dict(), projection_dim=8)).eval()


def save_clap(directory, model, tokenizer, truncation: str):
    from transformers import ClapFeatureExtractor, ClapProcessor

    model.save_pretrained(directory)
    ClapProcessor(feature_extractor=ClapFeatureExtractor(truncation=truncation), tokenizer=tokenizer
                  ).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def clap(tmp_path_factory):
    """(the in-memory model, its tokenizer, its feature extractor, the saved directory)."""
    from transformers import ClapFeatureExtractor

    root = tmp_path_factory.mktemp("clap")
    tokenizer = tiny_tokenizer(root)
    model = tiny_clap(tokenizer)
    return model, tokenizer, ClapFeatureExtractor(truncation="rand_trunc"), save_clap(root / "clap", model, tokenizer,
                                                                                       "rand_trunc")


@torch.inference_mode()
def direct_cosines(model, tokenizer, extractor, wavs_48k, prompts):
    """The reference: each clip and each prompt alone through ClapModel, cosine of the two embeddings."""
    out = []
    for wav, prompt in zip(wavs_48k, prompts):
        audio = model.get_audio_features(**extractor(wav.numpy(), sampling_rate=48000, return_tensors="pt"))
        text = model.get_text_features(**tokenizer([prompt], return_tensors="pt"))
        a, t = audio.pooler_output[0], text.pooler_output[0]
        out.append(float(a @ t / (a.norm() * t.norm())))
    return torch.tensor(out)


def test_score_is_the_direct_clap_cosine(clap):
    model, tokenizer, extractor, directory = clap
    judge = load_clap_judge(directory, batch_size=2)  # 3 clips: a batch of 2 and one of 1; prompts padded
    assert judge.sample_rate == 48000
    wavs = 0.1 * torch.randn(3, 2 * 48000, generator=torch.Generator().manual_seed(1))  # 2 s: repeated to 10 s
    prompts = ["a calm piano melody", "drums", "a calm piano melody"]
    scores = judge.score(wavs, 48000, prompts)
    assert scores.shape == (3,) and scores.dtype == torch.float32
    assert torch.allclose(scores, direct_cosines(model, tokenizer, extractor, wavs, prompts), atol=1e-5, rtol=0)
    assert not torch.allclose(scores[0], scores[2])  # same prompt, other clip


def test_other_rates_are_resampled_to_clap_rate(clap):
    model, tokenizer, extractor, directory = clap
    judge = load_clap_judge(directory)
    wavs = 0.1 * torch.randn(2, 32000, generator=torch.Generator().manual_seed(2))  # 1 s at 32 kHz
    prompts = ["upbeat electronic dance music", "a sad violin"]
    expected = direct_cosines(model, tokenizer, extractor, AF.resample(wavs, 32000, 48000), prompts)
    assert torch.allclose(judge.score(wavs, 32000, prompts), expected, atol=1e-5, rtol=0)


def test_a_long_clip_crop_is_reproducible_and_numpy_state_is_kept(clap):
    *_, directory = clap
    judge = load_clap_judge(directory)
    wav = 0.1 * torch.randn(1, int(10.5 * 48000), generator=torch.Generator().manual_seed(3))
    np.random.seed(123)
    first = judge.score(wav, 48000, ["slow jazz"])
    after = np.random.rand()
    np.random.seed(123)
    assert np.random.rand() == after  # the judge's seeded crops left the caller's numpy stream alone
    assert torch.equal(judge.score(wav, 48000, ["slow jazz"]), first)


def test_a_fusion_clap_scores_a_clip_the_same_alone_or_batched(tmp_path, clap):
    """The extractor marks one random clip of an all-short batch as longer; the judge passes the true lengths."""
    tokenizer = clap[1]
    judge = load_clap_judge(save_clap(tmp_path / "fused", tiny_clap(tokenizer, fusion=True), tokenizer, "fusion"))
    wavs = 0.1 * torch.randn(2, 48000, generator=torch.Generator().manual_seed(4))
    prompts = ["a calm piano", "fast drums"]
    together = judge.score(wavs, 48000, prompts)
    alone = torch.cat([judge.score(wavs[i:i + 1], 48000, prompts[i:i + 1]) for i in range(2)])
    assert torch.allclose(together, alone, atol=1e-6, rtol=0)


def test_directories_that_are_not_clap(tmp_path, clap):
    from divcfg.model.musicgen.loading import tiny_musicgen_config

    tiny_musicgen_config().save_pretrained(tmp_path / "musicgen")
    with pytest.raises(ClapLoadError, match="musicgen holds a 'musicgen' model, not a CLAP"):
        load_clap_judge(tmp_path / "musicgen")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClapLoadError, match="empty holds no config.json \\(it holds nothing\\)"):
        load_clap_judge(tmp_path / "empty")
    (tmp_path / "wavs").mkdir()
    (tmp_path / "wavs" / "a.wav").write_bytes(b"")
    with pytest.raises(ClapLoadError, match="wavs holds no config.json \\(it holds a.wav\\)"):
        load_clap_judge(tmp_path / "wavs")
    with pytest.raises(ClapLoadError, match="nowhere is not a directory"):
        load_clap_judge(tmp_path / "nowhere")
    (tmp_path / "weightless").mkdir()
    (tmp_path / "weightless" / "config.json").write_text(json.dumps(clap[0].config.to_dict()))
    with pytest.raises(ClapLoadError, match="could not load the CLAP in .*weightless"):
        load_clap_judge(tmp_path / "weightless")
    save_clap(tmp_path / "mismatch", clap[0], clap[1], "fusion")
    with pytest.raises(ClapLoadError, match="truncation='fusion', but its audio model has enable_fusion=False"):
        load_clap_judge(tmp_path / "mismatch")


def test_bad_input_and_benchmark(clap):
    judge = load_clap_judge(clap[3])
    with pytest.raises(ValueError, match=r"got clips of shape \(48000,\) and 1 prompts"):
        judge.score(torch.zeros(48000), 48000, ["x"])
    with pytest.raises(ValueError, match=r"got clips of shape \(2, 48000\) and 1 prompts"):
        judge.score(torch.zeros(2, 48000), 48000, ["x"])
    from divcfg.bench.clap import run
    rate, realtime = run(str(clap[3]), clips=2, seconds=1.0, repeats=1, verbose=False)
    assert rate["name"] == "clap/clips_per_s" and rate["clips"] == 2 and len(rate["clap_s"]) == 1
    assert rate["value"] == pytest.approx(2 / rate["clap_s"][0])  # one repeat: its median is itself
    assert rate["ratio"] == pytest.approx(rate["value"] / rate["baseline_value"])
    assert realtime["value"] == pytest.approx(rate["value"] * 1.0)
    with pytest.raises(ValueError, match="must be positive"):
        run(str(clap[3]), clips=0)
