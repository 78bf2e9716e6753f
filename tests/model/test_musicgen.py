"""The MusicGen adapter against transformers itself, on a tiny random MusicGen built in code (no download)."""
import types

import pytest
import torch

transformers = pytest.importorskip("transformers")

from divcfg.codec.musicgen import CodecMismatchError, MusicGenCodec, UnsupportedMusicGenError, check_codec_matches
from divcfg.model.delay import delay, undelay  # noqa: E402
from divcfg.model.guidance import cfg_mix  # noqa: E402
from divcfg.model.musicgen.loading import TINY, MusicGenLoadError, load_musicgen, tiny_musicgen, tiny_musicgen_config
from divcfg.model.musicgen.memory import memory_estimate
from divcfg.model.musicgen.policy import MusicGenPolicy, build_musicgen
from divcfg.model.text_condition import PromptTooLongError

PROMPTS = ["a calm piano melody", "fast loud drums", "", "ünïcödé bells"]
# special ids == vocab_size is MusicGen's own layout; transformers warns about it.
transformers.logging.set_verbosity_error()


@pytest.fixture(scope="module")
def model():
    return tiny_musicgen(seed=0)


@pytest.fixture(scope="module")
def policy(model):
    # The adapter (transformers' decoder): shares the model's modules, so transformers runs the same weights. The
    # converted decoder (the default) is checked against transformers in tests/model/test_musicgen_convert.py.
    return MusicGenPolicy(model, name=TINY, decoder="transformers")


def test_delay_pattern_is_musicgens(model, policy):
    k, t, special = policy.cfg.n_codebooks, 7, policy.special  # transformers delays only when T + K >= 2K - 1
    codes = torch.randint(0, policy.cfg.card, (2, k, t))
    bos = torch.full((2, k, 1), special)
    _, pattern = model.decoder.build_delay_pattern_mask(torch.cat([bos, codes], 2).view(2 * k, t + 1), special,
                                                        max_length=t + k)
    assert torch.equal(pattern.view(2, k, t + k), torch.cat([bos, delay(codes, special)], 2))


@pytest.mark.parametrize("gamma", [1.0, 3.0])
def test_cached_generate_equals_full_recomputation(policy, gamma):
    cond = policy.encode_condition(PROMPTS)
    out = policy.generate(cond, 9, guidance_scale=gamma, generator=torch.Generator().manual_seed(1),
                          return_logits=True)
    whole = policy.guided_logits(out.codes, cond, gamma)
    assert whole.shape == (4, policy.cfg.n_codebooks, 9, policy.cfg.card)
    assert torch.allclose(undelay(out.step_logits, 9), whole, atol=1e-5)
    lp = torch.log_softmax(whole, -1).gather(-1, out.codes[..., None]).squeeze(-1)
    assert torch.allclose(out.logprobs, lp, atol=1e-5)
    # top_k=1 is greedy: the codes are the argmax of the whole-sequence logits.
    greedy = policy.generate(cond, 9, guidance_scale=gamma, top_k=1)
    assert torch.equal(greedy.codes, policy.guided_logits(greedy.codes, cond, gamma).argmax(-1))


def test_cfg_equals_transformers_guidance_scale(model, policy, monkeypatch):
    t, k, gamma = 6, policy.cfg.n_codebooks, 3.0
    ids, mask = policy._tokenize(PROMPTS, truncate=False)
    ours = policy.generate(policy.encode_condition(PROMPTS), t, guidance_scale=gamma, top_k=1, return_logits=True)
    # transformers' generate ends by decoding the codes to audio; keep the codes instead.
    monkeypatch.setattr(model.audio_encoder, "decode",
                        lambda codes, audio_scales=None, **kw: types.SimpleNamespace(audio_values=codes))
    theirs = model.generate(input_ids=ids, attention_mask=mask.long(), do_sample=False, guidance_scale=gamma,
                            max_new_tokens=t + k - 1, output_scores=True, return_dict_in_generate=True)
    scores = torch.stack(theirs.scores, 1).view(len(PROMPTS), k, t + k - 1, policy.cfg.card)
    assert torch.allclose(ours.step_logits, scores, atol=1e-5)
    assert torch.equal(ours.codes, theirs.sequences[0])
    # The same mix as transformers' logits processor, on arbitrary cond/uncond logits.
    processor = transformers.ClassifierFreeGuidanceLogitsProcessor(gamma)
    cond_logits, uncond_logits = torch.randn(2, 8, policy.cfg.card).unbind(0)
    assert torch.allclose(processor(torch.zeros(8, 1, dtype=torch.long), torch.cat([cond_logits, uncond_logits])),
                          cfg_mix(cond_logits, uncond_logits, gamma), atol=1e-6)


def test_condition_and_null_branch_match_transformers(model, policy):
    codes = torch.randint(0, policy.cfg.card, (len(PROMPTS), policy.cfg.n_codebooks, 5))
    columns = delay(codes, policy.special)
    flat = columns.reshape(-1, columns.shape[2])
    ids, mask = policy._tokenize(PROMPTS, truncate=False)
    with torch.no_grad():
        cond = policy.encode_condition(PROMPTS)
        assert torch.allclose(policy.forward_delayed(columns, cond).flatten(0, 1),
                              model(input_ids=ids, attention_mask=mask.long(), decoder_input_ids=flat).logits,
                              atol=1e-5)
        null = policy.null_condition(len(PROMPTS), cond.states.shape[1])
        assert not null.states.any() and not null.mask.any()
        uncond = model.get_unconditional_inputs(len(PROMPTS))
        theirs = model(encoder_outputs=uncond.encoder_outputs, attention_mask=uncond.attention_mask,
                       decoder_input_ids=flat).logits
        assert torch.allclose(policy.forward_delayed(columns, null).flatten(0, 1), theirs, atol=1e-5)
    dropped = policy.drop_condition(cond, torch.tensor([True, False, False, True]))
    assert not dropped.states[0].any() and not dropped.mask[0].any() and torch.equal(dropped.mask[1], cond.mask[1])


@pytest.mark.parametrize("train_layers", [0, 1])
def test_text_encoder_frozen_and_train_layers(train_layers):
    policy, _ = build_musicgen(TINY, train_layers=train_layers, decoder="transformers")
    policy.train()
    assert not policy.text_encoder.training and policy.decoder.training
    assert not any(p.requires_grad for p in policy.text_encoder.parameters())
    layers = policy.decoder.model.decoder.layers
    assert all(p.requires_grad for p in layers[-1].parameters())
    assert all(p.requires_grad == (train_layers == 0) for p in layers[0].parameters())
    assert all(p.requires_grad == (train_layers == 0) for p in policy.decoder.model.decoder.embed_tokens.parameters())
    assert all(p.requires_grad for p in policy.decoder.lm_heads.parameters())
    codes = torch.randint(0, policy.cfg.card, (2, policy.cfg.n_codebooks, 4))
    policy.logits(codes, policy.encode_condition(PROMPTS[:2])).logsumexp(-1).sum().backward()
    assert all((p.grad is not None) == p.requires_grad for p in policy.parameters())
    with pytest.raises(ValueError, match=r"model.train_layers=3 must be in \[0, 2\]"):
        build_musicgen(TINY, train_layers=3)


def test_prompt_length(policy):
    with pytest.raises(PromptTooLongError, match="over the text encoder's limit of 256"):
        policy.encode_condition(["x" * 256])  # 256 bytes + EOS
    ids, mask = MusicGenPolicy(tiny_musicgen(), text_max_len=8)._tokenize(["x" * 20], truncate=True)
    assert ids.shape == (1, 8) and ids[0, -1] == 1 and mask.all()  # EOS kept


def test_loads_a_local_directory_offline(tmp_path, monkeypatch):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    saved = tiny_musicgen(seed=3)
    saved.config.decoder.dropout = 0.1  # what the real checkpoints ship; loading turns it off
    saved.save_pretrained(tmp_path / "mg")
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "calm": 3, "piano": 4}
    words = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    words.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    transformers.PreTrainedTokenizerFast(tokenizer_object=words, pad_token="<pad>", eos_token="</s>",
                                         unk_token="<unk>").save_pretrained(tmp_path / "mg")
    model, tokenizer = load_musicgen(str(tmp_path / "mg"), local_files_only=True)
    assert model.config.decoder.dropout == 0.0
    loaded, original = MusicGenPolicy(model, tokenizer), MusicGenPolicy(saved, tokenizer)
    assert loaded._tokenize(["calm piano", "piano"], truncate=False)[0].tolist() == [[3, 4, 1], [4, 1, 0]]
    codes = torch.randint(0, loaded.cfg.card, (2, loaded.cfg.n_codebooks, 5))
    with torch.no_grad():
        assert torch.allclose(loaded.logits(codes, loaded.encode_condition(["calm piano", "piano"])),
                              original.logits(codes, original.encode_condition(["calm piano", "piano"])), atol=1e-6)


def test_unloadable_id_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MusicGenLoadError, match=r"(?s)could not load MusicGen 'divcfg-tests/no-such-musicgen'.*"
                                                r"`hf download divcfg-tests/no-such-musicgen`.*HF_HUB_OFFLINE=1"):
        load_musicgen("divcfg-tests/no-such-musicgen", local_files_only=True)
    with pytest.raises(MusicGenLoadError, match="no-such-dir: no such directory"):
        load_musicgen(str(tmp_path / "no-such-dir"))
    # A directory with a MusicGen config but no weights: named, and told to copy the whole directory, not to download.
    partial = tmp_path / "partial"
    tiny_musicgen(seed=0).config.save_pretrained(partial)
    with pytest.raises(MusicGenLoadError, match=r"(?s)could not load the MusicGen directory .*partial.*model\.safetensors"
                                                r".*Copy the whole model directory") as e:
        load_musicgen(str(partial), local_files_only=True)
    assert "On a machine with internet" not in str(e.value)


def test_stereo_and_melody_are_refused(tmp_path):
    stereo = tiny_musicgen_config()
    stereo.decoder.audio_channels = 2
    stereo.save_pretrained(tmp_path / "stereo")
    with pytest.raises(UnsupportedMusicGenError, match="is a stereo MusicGen"):
        load_musicgen(str(tmp_path / "stereo"), local_files_only=True)
    from transformers import MusicgenMelodyConfig, MusicgenMelodyDecoderConfig
    tiny = tiny_musicgen_config()
    decoder = MusicgenMelodyDecoderConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                          ffn_dim=64)
    melody = MusicgenMelodyConfig(text_encoder=tiny.text_encoder.to_dict(), audio_encoder=tiny.audio_encoder.to_dict(),
                                  decoder=decoder)
    melody.save_pretrained(tmp_path / "melody")
    with pytest.raises(UnsupportedMusicGenError, match="is a MusicGen-Melody checkpoint"):
        load_musicgen(str(tmp_path / "melody"), local_files_only=True)


def test_codec_round_trip_and_sample_rate_mismatch(model):
    codec = MusicGenCodec(model.audio_encoder, model.config.decoder.num_codebooks, TINY)
    check_codec_matches(codec, model.config)
    wav = torch.randn(3, 1000)
    codes = codec.encode(wav)
    assert codes.shape == (3, 4, codec.n_frames(1000)) and codes.dtype == torch.long
    assert 0 <= codes.min() and codes.max() < codec.card
    assert codec.decode(codes).shape == (3, codes.shape[2] * codec.hop_length)
    with pytest.raises(ValueError, match=r"expects codes \[B, K=4, T\]"):
        codec.decode(codes[:, :2])
    other = tiny_musicgen(sample_rate=16000)
    with pytest.raises(CodecMismatchError, match="sample_rate=16000, but the model was trained on sample_rate=8000"):
        check_codec_matches(MusicGenCodec(other.audio_encoder, 4, "other"), model.config)


def _cache_bytes(cache) -> int:
    return sum(t.numel() * t.element_size() for c in (cache.self_attention_cache, cache.cross_attention_cache)
               for layer in c.layers for t in (layer.keys, layer.values))


@pytest.mark.parametrize("train_layers", [0, 1])
def test_memory_estimate_counts_the_models_parameters(model, train_layers):
    policy = MusicGenPolicy(tiny_musicgen(), train_layers=train_layers)
    est = memory_estimate(model.config, 3, 10, train_layers=train_layers)
    assert est.policy_params == policy.num_parameters()
    assert est.trainable_params == sum(p.numel() for p in policy.parameters() if p.requires_grad)
    assert est.codec_params == sum(p.numel() for p in model.audio_encoder.parameters())
    # fp32: the student, the teacher's own copy of the trainable tensors (it shares the frozen rest), grad, Adam.
    assert est.learner_total == 4 * (est.policy_params + 4 * est.trainable_params)
    assert memory_estimate(model.config, 3, 10, torch.bfloat16).actor_weights == 2 * est.policy_params


@pytest.mark.parametrize("gamma", [1.0, 3.0])
def test_memory_estimate_kv_cache_matches_a_real_cache(policy, gamma):
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache
    batch, frames, k = 3, 10, policy.cfg.n_codebooks
    rows = 2 * batch if gamma != 1.0 else batch
    cond = policy.encode_condition(["abcdef"] * rows)  # 6 bytes + EOS = 7 text tokens
    cache = EncoderDecoderCache(DynamicCache(config=policy.decoder.config), DynamicCache(config=policy.decoder.config))
    with torch.no_grad():  # all S = T + K - 1 columns of a whole generation
        policy.forward_delayed(torch.full((rows, k, frames + k - 1), policy.special), cond, cache)
    est = memory_estimate(tiny_musicgen_config(), batch, frames, text_len=7, guidance_scale=gamma)
    assert est.actor_kv_cache == _cache_bytes(cache)
