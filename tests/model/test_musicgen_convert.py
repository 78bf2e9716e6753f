"""MusicGen's weights in divcfg's own decoder (model/musicgen/convert.py) against transformers' MusicGen itself, on a
tiny random MusicGen written with save_pretrained and read back with from_pretrained (no download)."""
import types

import pytest
import torch

transformers = pytest.importorskip("transformers")

from divcfg.codec.musicgen import UnsupportedMusicGenError  # noqa: E402
from divcfg.model.decode_graph import decode_graph  # noqa: E402
from divcfg.model.delay import delay  # noqa: E402
from divcfg.model.guidance import cfg_mix  # noqa: E402
from divcfg.model.musicgen import convert  # noqa: E402
from divcfg.model.musicgen.loading import load_musicgen, tiny_musicgen, tiny_musicgen_config  # noqa: E402
from divcfg.model.musicgen.policy import MusicGenPolicy  # noqa: E402

PROMPTS = ["a calm piano melody", "fast loud drums", "", "bells"]
STEPS = 50
transformers.logging.set_verbosity_error()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny random MusicGen through save_pretrained -> from_pretrained, with a ByT5 tokenizer (no vocab file)."""
    path = tmp_path_factory.mktemp("mg") / "tiny"
    tiny_musicgen(seed=4).save_pretrained(path)
    transformers.ByT5Tokenizer(extra_ids=0).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def model(saved):
    return load_musicgen(str(saved), local_files_only=True)


@pytest.fixture(scope="module")
def policy(model):
    return MusicGenPolicy(model[0], model[1], decoder="divcfg").eval()


def rel_err(ours: torch.Tensor, theirs: torch.Tensor) -> torch.Tensor:
    """Per step (dim 2 of ``[B, K, S, V]``): max |ours - theirs| over max |theirs|."""
    return (ours - theirs).abs().amax((0, 1, 3)) / theirs.abs().amax((0, 1, 3))


def test_is_divcfgs_decoder_with_musicgens_layout(policy, model):
    cfg = policy.decoder.cfg
    assert policy.fast is policy.decoder and type(policy.decoder).__name__ == "AudioTokenPolicy"
    assert (cfg.positions, cfg.bias, cfg.head_bias, cfg.null_condition) == ("sinusoidal", False, False, "zeros")
    assert policy.enc_to_dec_proj is not None  # T5 width 16 -> decoder width 32
    table = model[0].decoder.model.decoder.embed_positions.weights
    assert torch.equal(policy.decoder.pos, table[: policy.decoder.pos.shape[0]])


@pytest.mark.parametrize("gamma", [1.0, 3.0])
def test_teacher_forced_logits_match_transformers_at_every_step(model, policy, gamma):
    mg = model[0]
    k, v = policy.cfg.n_codebooks, policy.cfg.card
    codes = torch.randint(0, v, (len(PROMPTS), k, STEPS))
    columns = torch.cat([torch.full((len(PROMPTS), k, 1), policy.special), delay(codes, policy.special)], 2)
    flat = columns[:, :, :-1].reshape(-1, columns.shape[2] - 1)
    ids, mask = policy._tokenize(PROMPTS, truncate=False)
    with torch.no_grad():
        theirs = mg(input_ids=ids, attention_mask=mask.long(), decoder_input_ids=flat).logits
        if gamma != 1.0:
            uncond = mg.get_unconditional_inputs(len(PROMPTS))
            null = mg(encoder_outputs=uncond.encoder_outputs, attention_mask=uncond.attention_mask,
                      decoder_input_ids=flat).logits
            theirs = cfg_mix(theirs, null, gamma)
        cond = policy.encode_condition(PROMPTS)
        both = policy.with_null(cond) if gamma != 1.0 else cond
        rows = torch.cat([columns[:, :, :-1]] * (2 if gamma != 1.0 else 1))
        ours = policy.decoder.forward_delayed(rows, both, gamma)
    theirs = theirs.view(len(PROMPTS), k, -1, v)
    err = rel_err(ours, theirs)
    assert err.shape == (STEPS + k - 1,) and err.max() <= 1e-4, err.max()
    # The un-delayed whole-sequence API agrees with the same numbers.
    assert torch.allclose(policy.guided_logits(codes, cond, gamma), policy.decoder.guided_logits(codes, cond, gamma))


@pytest.mark.parametrize("gamma", [1.0, 3.0])
def test_greedy_generate_equals_transformers_generate(model, policy, gamma, monkeypatch):
    mg, t, k = model[0], 20, policy.cfg.n_codebooks
    ids, mask = policy._tokenize(PROMPTS, truncate=False)
    ours = policy.generate(policy.encode_condition(PROMPTS), t, guidance_scale=gamma, top_k=1,
                           generator=torch.Generator().manual_seed(0), return_logits=True)
    monkeypatch.setattr(mg.audio_encoder, "decode",
                        lambda codes, audio_scales=None, **kw: types.SimpleNamespace(audio_values=codes))
    torch.manual_seed(0)
    theirs = mg.generate(input_ids=ids, attention_mask=mask.long(), do_sample=True, top_k=1,
                         guidance_scale=gamma if gamma != 1.0 else None, max_new_tokens=t + k - 1,
                         output_scores=True, output_logits=True, return_dict_in_generate=True)
    assert torch.equal(ours.codes, theirs.sequences[0])
    raw = torch.stack(theirs.logits, 1).view(len(PROMPTS), k, t + k - 1, -1)
    if gamma != 1.0:  # transformers' raw logits are the 2B rows; the processors mix them
        raw = cfg_mix(*torch.stack(theirs.logits, 1).view(2, len(PROMPTS), k, t + k - 1, -1), gamma)
    assert rel_err(ours.step_logits, raw).max() <= 1e-4


@pytest.mark.parametrize("gamma", [1.0, 3.0])
def test_static_graph_step_equals_eager_step(policy, gamma):
    """The CUDA-graph step (run uncaptured on CPU) sends MusicGen's all-False null rows through cross-attention."""
    cond = policy.encode_condition(PROMPTS)
    both = policy.with_null(cond) if gamma != 1.0 else cond
    rows, s_len = both.states.shape[0], 8
    eager = policy.decoder._decode_step(both, rows, s_len, gamma)
    graph = decode_graph(policy.decoder, rows, s_len, gamma, capture=False)
    graph.load(both)
    column = torch.full((rows, policy.cfg.n_codebooks, 1), policy.special)
    for s in range(s_len):
        a, b = eager(column, s), graph.step(column, s).clone()
        assert torch.isfinite(b).all() and torch.allclose(a, b, atol=1e-5), s
        column = a.argmax(-1, keepdim=True).repeat(rows // a.shape[0], 1, 1)


def test_state_dict_maps_back_bit_for_bit(model, policy):
    original = model[0].decoder.state_dict()
    back = convert.to_musicgen_state(policy.decoder.state_dict(), policy.cfg.n_layers, policy.cfg.n_codebooks)
    assert back.keys() == original.keys()
    assert all(torch.equal(back[n], original[n]) for n in original)


def test_export_loads_into_musicgen_from_pretrained(model, policy, tmp_path):
    from divcfg.codec.musicgen import MusicGenCodec
    from divcfg.model.loaders import save_musicgen_pretrained

    trained = MusicGenPolicy(model[0], model[1], decoder="divcfg")
    with torch.no_grad():
        trained.decoder.layers[1].ffn[0].weight.add_(1.0)  # as if trained: differs from the source now
    codec = MusicGenCodec(model[0].audio_encoder, trained.cfg.n_codebooks, "tiny")
    save_musicgen_pretrained(trained, codec, tmp_path / "out", tokenizer=model[1])
    loaded = transformers.MusicgenForConditionalGeneration.from_pretrained(tmp_path / "out")
    ours = trained.musicgen_state_dict()
    theirs = loaded.state_dict()
    assert torch.equal(theirs["decoder.model.decoder.layers.1.fc1.weight"],
                       model[0].decoder.model.decoder.layers[1].fc1.weight + 1.0)
    assert all(torch.equal(theirs[n], t) for n, t in ours.items())
    assert all(torch.equal(theirs["audio_encoder." + n], t) for n, t in codec.model.state_dict().items())


@pytest.mark.parametrize("train_layers", [0, 1])
def test_train_layers_and_gradients_through_the_converted_decoder(model, train_layers):
    policy = MusicGenPolicy(tiny_musicgen(seed=1), train_layers=train_layers).train()
    layers = policy.decoder.layers
    assert all(p.requires_grad for p in layers[-1].parameters())
    assert all(p.requires_grad == (train_layers == 0) for p in layers[0].parameters())
    assert policy.decoder.code_emb.weight.requires_grad == (train_layers == 0)
    assert not any(p.requires_grad for p in policy.text_encoder.parameters())
    codes = torch.randint(0, policy.cfg.card, (2, policy.cfg.n_codebooks, 4))
    policy.guided_logits(codes, policy.encode_condition(PROMPTS[:2]), 3.0).logsumexp(-1).sum().backward()
    assert all((p.grad is not None) == p.requires_grad for p in policy.parameters())


def test_snapshots_interoperate_with_the_adapter():
    fast, ref = MusicGenPolicy(tiny_musicgen(seed=1)), MusicGenPolicy(tiny_musicgen(seed=2), decoder="transformers")
    snap = fast.trainable_state_dict()
    assert snap.keys() == ref.trainable_state_dict().keys()  # MusicgenForConditionalGeneration's names
    ref.load_trainable_state_dict(snap)
    codes = torch.randint(0, fast.cfg.card, (2, fast.cfg.n_codebooks, 6))
    cond = fast.encode_condition(PROMPTS[:2])  # the T5 is frozen and not in snapshots: use the same states
    with torch.no_grad():
        assert torch.allclose(fast.logits(codes, cond), ref.logits(codes, cond), atol=1e-5)
    fast.load_trainable_state_dict(MusicGenPolicy(tiny_musicgen(seed=3), decoder="transformers").trainable_state_dict())


@pytest.mark.parametrize("change, field", [
    (dict(audio_channels=2), "decoder.audio_channels"),
    (dict(activation_function="gelu_new"), "decoder.activation_function"),
    (dict(scale_embedding=True), "decoder.scale_embedding"),
    (dict(layerdrop=0.1), "decoder.layerdrop"),
])
def test_unmappable_variants_are_refused_by_name(change, field):
    config = tiny_musicgen_config()
    for name, value in change.items():
        setattr(config.decoder, name, value)
    with pytest.raises(UnsupportedMusicGenError, match=f"{field}=.*model.decoder=transformers"):
        convert.check_convertible(config, "tiny")
    melody = types.SimpleNamespace(model_type="musicgen_melody", decoder=config.decoder)
    with pytest.raises(UnsupportedMusicGenError, match="musicgen_melody.*model.decoder=transformers"):
        convert.check_convertible(melody, "m")


def test_config_fields_that_differ_are_named():
    recorded = convert.decoder_fields(tiny_musicgen_config().decoder)
    config = types.SimpleNamespace(**{k: v for k, v in recorded.items() if k != "ffn_dim"})  # a renamed field
    with pytest.raises(UnsupportedMusicGenError, match="no field 'ffn_dim'.*model.decoder=transformers"):
        convert.decoder_fields(config)
    with pytest.raises(UnsupportedMusicGenError, match="field 'ffn_dim' .*does not exist"):
        convert.check_decoder_fields(recorded, config, "ckpt")
    config = tiny_musicgen_config().decoder
    config.num_codebooks = 8
    with pytest.raises(UnsupportedMusicGenError, match="'num_codebooks' is 8 .*saved with 4"):
        convert.check_decoder_fields(recorded, config, "ckpt")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("gamma", [1.0, 3.0])
def test_cuda_graph_generate_equals_eager_on_gpu(gamma):
    policy = MusicGenPolicy(tiny_musicgen(seed=1)).cuda().eval()
    cond = policy.encode_condition(PROMPTS)
    outs = []
    for graphs in (True, False):
        policy.decoder.cuda_graphs = graphs
        outs.append(policy.generate(cond, 12, guidance_scale=gamma, top_k=1, return_logits=True))
    assert torch.equal(outs[0].codes, outs[1].codes)
    assert torch.allclose(outs[0].step_logits, outs[1].step_logits, atol=1e-4)
