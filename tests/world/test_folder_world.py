"""The folder world (world/folder.py) on a tiny random MusicGen written with save_pretrained: a nested folder of short
WAV and FLAC tracks with audiocraft captions (and a corrupt, a silent and a too-short file), built once through
`divcfg world build --kind folder`; then its files, its resume, its CLAP ceiling and its refusals."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

transformers = pytest.importorskip("transformers")

from divcfg.codec.musicgen import musicgen_codec_from_dir  # noqa: E402
from divcfg.common.data.tokens import read_tokens  # noqa: E402
from divcfg.common.data.world_dir import World, WorldError  # noqa: E402
from divcfg.model.musicgen.loading import tiny_musicgen  # noqa: E402
from divcfg.world.build import main  # noqa: E402
from divcfg.world.folder import ENCODE_BATCH, build_folder_world  # noqa: E402
from divcfg.world.folder_model import model_clip  # noqa: E402
from divcfg.world.user_folder import read_folder  # noqa: E402

transformers.logging.set_verbosity_error()
N_TRACKS = 12
TRACK_S = 3.0
BAD = {"bad/corrupt.wav": "unreadable", "bad/silent.flac": "silent", "bad/short.wav": "shorter than one clip"}
# The build's options, as the CLI takes them and as build_folder_world does (a resume must ask for the same world).
CLIP_S, HELDOUT_FRACTION, EMBEDDER_STEPS = 1.0, 0.25, 3


def caption(i: int) -> str | list[str]:
    text = f"track {i}: a {['bright', 'dark', 'soft', 'loud'][i % 4]} tone near {110 * 2 ** (i / 4):.0f} Hz"
    return [text, f"a tone, number {i}"] if i % 5 == 0 else text  # some tracks have two captions


def track_audio(i: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """A tone of its own pitch and tremolo rate, with a little noise, so each track sounds unlike the others."""
    t = np.arange(int(TRACK_S * sr)) / sr
    f = 110 * 2 ** (i / 4)
    tone = np.sin(2 * np.pi * f * t) + 0.4 * np.sin(2 * np.pi * 2 * f * t)
    return (0.3 * tone * (1 + 0.5 * np.sin(2 * np.pi * (1 + i) * t)) + 0.01 * rng.standard_normal(len(t))).astype(
        np.float32)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Tracks in nested folders, WAV at 8 kHz and FLAC at 16 kHz (resampled to the tiny EnCodec's 8 kHz), each with
    an audiocraft sidecar JSON, listed in data.jsonl; plus the three files the build must skip."""
    root = tmp_path_factory.mktemp("music")
    rng = np.random.default_rng(0)
    files = {}
    for i in range(N_TRACKS):
        ext, sr = ("wav", 8000) if i % 2 == 0 else ("flac", 16000)
        rel = f"{'ab'[i % 2]}/{'deep/' if i % 3 == 0 else ''}track{i:02d}.{ext}"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(root / rel, track_audio(i, sr, rng), sr)
        files[rel] = caption(i)
    (root / "bad").mkdir()
    (root / "bad/corrupt.wav").write_bytes(b"RIFF\x00\x01not a wave file at all")
    sf.write(root / "bad/silent.flac", np.zeros(int(TRACK_S * 16000), np.float32), 16000)
    sf.write(root / "bad/short.wav", track_audio(0, 8000, rng)[:3000], 8000)
    files.update({rel: f"the bad file {rel}" for rel in BAD})
    lines = []
    for rel, text in files.items():
        (root / rel).with_suffix(".json").write_text(json.dumps({"description": text}))
        lines.append(json.dumps({"path": rel, "duration": TRACK_S, "sample_rate": 8000}))
    (root / "data.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def musicgen_dir(tmp_path_factory) -> Path:
    """The tiny random MusicGen, its EnCodec's codebooks drawn from its own latents of the tracks: with
    tiny_musicgen's N(0, 1) codebooks, 25 times the latents' scale, every frame takes the same code."""
    import torch

    model = tiny_musicgen(seed=0)
    rng = np.random.default_rng(1)
    audio = torch.as_tensor(np.stack([track_audio(i, 8000, rng) for i in range(N_TRACKS)]))
    with torch.no_grad():
        latents = model.audio_encoder.encoder(audio[:, None])  # [B, D, T]
        residual = latents.transpose(1, 2).reshape(-1, latents.shape[1])
        gen = torch.Generator().manual_seed(0)
        for layer in model.audio_encoder.quantizer.layers:  # residual quantisation: each layer codes what is left
            embed = residual[torch.randperm(len(residual), generator=gen)[:64]].clone()
            layer.codebook.embed.copy_(embed)
            residual = residual - embed[torch.cdist(residual, embed).argmin(1)]
    path = tmp_path_factory.mktemp("mg") / "tiny-musicgen"
    model.save_pretrained(path)
    return path


def cli(out, folder, model, *extra) -> list[str]:
    return ["build", "--kind", "folder", "--audio", str(folder), "--captions", str(folder / "data.jsonl"),
            "--out", str(out), "--model", str(model), "--clip-s", str(CLIP_S), "--heldout-fraction",
            str(HELDOUT_FRACTION), "--embedder-steps", str(EMBEDDER_STEPS), "--no-progress", *extra]


def build_again(out, folder, model, **kw) -> dict:
    return build_folder_world(out, folder, folder / "data.jsonl", model, clip_s=CLIP_S,
                              heldout_fraction=HELDOUT_FRACTION, embedder_steps=EMBEDDER_STEPS, progress=False, **kw)


@pytest.fixture(scope="module")
def built(tmp_path_factory, folder, musicgen_dir) -> Path:
    import contextlib
    import io
    out = tmp_path_factory.mktemp("worlds") / "folder"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(cli(out, folder, musicgen_dir)) == 0
    (out.parent / "build_stderr.txt").write_text(err.getvalue())  # what the user saw, for the tests below
    return out


def test_tokens_hold_every_training_caption_and_the_heldout_clips(built, folder, musicgen_dir):
    train, heldout = read_tokens(built / "tokens.parquet"), read_tokens(built / "heldout.parquet")
    corpus = pq.read_table(built / "corpus.parquet").to_pydict()
    is_held = np.array(corpus["heldout"])
    # One training row per caption of each training clip; one held-out row (its first caption) per held-out clip.
    assert len(train) == sum(len(c) for c, h in zip(corpus["captions"], is_held) if not h)
    assert len(heldout) == int(is_held.sum()) == 9  # 3 of 12 tracks, three 1 s clips each
    assert heldout.prompts == [corpus["captions"][i][0] for i in np.flatnonzero(is_held)]
    assert train.codes.shape[1:] == heldout.codes.shape[1:] == (4, 50)  # K codebooks, 1 s at 50 frames/s
    assert train.codes.min() >= 0 and train.codes.max() < 64
    for data in (train, heldout):
        assert data.meta == {"codec": "musicgen", "model": str(musicgen_dir.absolute()), "card": 64,
                             "sample_rate": 8000, "frame_rate": 50.0, "world_seed": 0}
    # Rows of one clip share its codes, and the codes are those the MusicGen's EnCodec makes of the clip.
    first = [i for i, c in enumerate(train.columns["clip_id"]) if c == train.columns["clip_id"][0]]
    assert len(first) >= 1 and all(np.array_equal(train.codes[first[0]], train.codes[i]) for i in first)
    clips = read_folder(folder, folder / "data.jsonl", 8000, CLIP_S)
    codec = musicgen_codec_from_dir(musicgen_dir)
    held_ids = heldout.columns["clip_id"]
    assert [clips.track[i] for i in held_ids] == heldout.columns["track"]
    # Encoded as the build does, 16 clips per call in folder order: the same codes, bit for bit. (Another batching
    # can flip a code at a near tie of the quantiser's distances: 1 of 1,800 here, for the held-out clips alone.)
    batched = np.concatenate([codec.encode(clips.clips[i:i + ENCODE_BATCH]).numpy()
                              for i in range(0, len(clips.clips), ENCODE_BATCH)])
    assert np.array_equal(batched[held_ids], heldout.codes)
    assert (codec.encode(clips.clips[held_ids]).numpy() == heldout.codes).mean() > 0.99
    assert min(World(built).info()["codec_distinct_codes"]) > 1  # the codes tell clips apart


def test_no_track_has_clips_on_both_sides(built):
    train, heldout = read_tokens(built / "tokens.parquet"), read_tokens(built / "heldout.parquet")
    train_tracks, held_tracks = set(train.columns["track"]), set(heldout.columns["track"])
    assert len(held_tracks) == 3 and not train_tracks & held_tracks
    assert len(train_tracks | held_tracks) == N_TRACKS and not set(BAD) & (train_tracks | held_tracks)
    prompts = World(built).heldout_prompts()
    assert prompts and not set(prompts) & set(train.prompts)


def test_world_json_names_the_skipped_files_the_recall_and_the_judges(built, musicgen_dir):
    info = World(built).info()
    assert info["kind"] == "folder" and info["model"] == str(musicgen_dir.absolute())
    assert info["clips"] == {"total": 36, "train": 27, "heldout": 9}
    assert (info["tracks"]["total"], info["tracks"]["heldout"], info["seconds"]) == (N_TRACKS, 3, 36.0)
    assert info["captions_format"] == "audiocraft" and info["training_rows"] == len(read_tokens(
        built / "tokens.parquet"))
    for rel, why in BAD.items():
        assert why in info["skipped"][rel], info["skipped"]
    # ... and the build said how many it skipped, not only world.json
    assert f"{len(BAD)} file(s) skipped (world.json" in (built.parent / "build_stderr.txt").read_text()
    recall = info["embedder_recall_at_1"]
    assert recall["chance"] == pytest.approx(1 / 17) and recall["clips"] == 9  # 2 chunks of each of 9 clips
    assert all(0.0 <= recall[w] <= 1.0 for w in ("reward", "eval"))
    assert np.isfinite(info["codec_round_trip"]["snr_db"]) and info["codec_round_trip"]["clips"] == 9
    assert info["clap_ceiling"] == {"measured": False, "why": "no --clap given"}
    assert info["judges"] == {"adherence": "none", "clap": None, "scorer": None}
    state = World(built).state()
    assert state["identity"]["kind"] == "folder" and state["identity"]["clip_s"] == CLIP_S
    assert set(state["done"]) == {"corpus", "tokens", "embedders", "measure"}
    World(built).verify()  # every recorded stage has its files, as the other kinds' worlds do


def test_a_second_build_does_nothing_and_returns_the_same_report(built, folder, musicgen_dir):
    before = {p.name: p.stat().st_mtime_ns for p in built.iterdir() if p.is_file()}
    state = (built / "state.json").read_bytes()
    assert build_again(built, folder, musicgen_dir) == World(built).info()
    assert (built / "state.json").read_bytes() == state
    after = {p.name: p.stat().st_mtime_ns for p in built.iterdir() if p.is_file()}
    assert {k: v for k, v in after.items() if k != "world.json"} == {k: v for k, v in before.items()
                                                                      if k != "world.json"}


def test_another_model_into_the_same_world_is_refused_naming_both(built, folder, musicgen_dir, tmp_path):
    other = shutil.copytree(musicgen_dir, tmp_path / "other-musicgen")
    state = (built / "state.json").read_bytes()
    with pytest.raises(WorldError) as e:
        build_again(built, folder, other)
    assert str(musicgen_dir.absolute()) in str(e.value) and str(other.absolute()) in str(e.value)
    assert (built / "state.json").read_bytes() == state


def test_a_clap_added_later_measures_the_ceiling_only(built, folder, musicgen_dir, tmp_path):
    out = shutil.copytree(built, tmp_path / "world")
    tokens = (out / "tokens.parquet").stat().st_mtime_ns
    clap = save_tiny_clap(tmp_path / "clap")
    info = build_again(out, folder, musicgen_dir, clap=clap)
    ceiling = info["clap_ceiling"]
    assert ceiling["measured"] and ceiling["clips"] == 9 and ceiling["dir"] == str(clap.absolute())
    assert -1.0 <= ceiling["real"] <= 1.0 and -1.0 <= ceiling["round_trip"] <= 1.0
    assert info["judges"] == {"adherence": "clap", "clap": str(clap.absolute()), "scorer": None}
    assert (out / "tokens.parquet").stat().st_mtime_ns == tokens
    assert info["embedder_recall_at_1"] == World(built).info()["embedder_recall_at_1"]


def save_tiny_clap(directory: Path) -> Path:
    """A random CLAP of a one-layer RoBERTa and a two-stage HTSAT (as tests/reward/test_clap_judge.py builds), with a
    byte-level BPE tokenizer trained on the captions' words."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import (
        ClapAudioConfig,
        ClapConfig,
        ClapFeatureExtractor,
        ClapModel,
        ClapProcessor,
        ClapTextConfig,
        RobertaTokenizer,
    )

    directory.mkdir(parents=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(["a bright dark soft loud tone near Hz track number"], vocab_size=300, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(directory))
    tokenizer = RobertaTokenizer(vocab=str(directory / "vocab.json"), merges=str(directory / "merges.txt"),
                                 model_max_length=64)
    text = ClapTextConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=32, max_position_embeddings=66, projection_dim=8)
    audio = ClapAudioConfig(spec_size=256, num_mel_bins=64, window_size=8, depths=[1, 1], num_attention_heads=[1, 2],
                            patch_embeds_hidden_size=8, hidden_size=16, projection_dim=8, enable_fusion=False)
    torch.manual_seed(0)
    ClapModel(ClapConfig(text_config=text.to_dict(), audio_config=audio.to_dict(), projection_dim=8)).save_pretrained(
        directory)
    ClapProcessor(feature_extractor=ClapFeatureExtractor(truncation="rand_trunc"), tokenizer=tokenizer
                  ).save_pretrained(directory)
    return directory


# ---- refusals: each before any stage runs, so nothing already in --out is lost --------------------------------------

def test_a_model_dir_that_is_no_model_is_refused_saying_what_it_is(folder, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    clap_like = tmp_path / "clap-like"
    clap_like.mkdir()
    (clap_like / "config.json").write_text(json.dumps({"model_type": "clap"}))
    a_world = tmp_path / "a-world"
    a_world.mkdir()
    (a_world / "state.json").write_text(json.dumps({"identity": {"kind": "music"}, "done": {}}))
    for model, what in ((folder, "holds no config.json"), (clap_like, "names a 'clap' model"),
                        (a_world, "divcfg world (kind music) without a complete base/ and codec/"), (tmp_path / "nowhere", "does not exist")):
        assert main(cli(out, folder, model)) == 2
        err = capsys.readouterr().err
        assert f"--model {model} is neither a MusicGen directory" in err and what in err, err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_a_musicgen_dir_copied_without_its_weights_says_to_copy_the_whole_directory(folder, musicgen_dir, tmp_path,
                                                                                      capsys):
    import shutil
    partial = tmp_path / "no-weights"
    shutil.copytree(musicgen_dir, partial, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    assert main(cli(tmp_path / "out", folder, partial)) == 2
    err = capsys.readouterr().err
    assert f"could not load the MusicGen directory {partial}" in err and "Copy the whole model directory" in err, err
    # The folder's stage is kept: run again once the directory is whole, and the build goes on from there.
    assert list(json.loads((tmp_path / "out" / "state.json").read_text())["done"]) == ["corpus"]


def test_missing_inputs_and_a_clap_dir_that_is_not_clap_are_refused_by_name(folder, musicgen_dir, tmp_path, capsys):
    out = tmp_path / "out"
    cases = [(["--audio", str(tmp_path / "no-audio")], "--audio"),
             (["--captions", str(tmp_path / "no-captions.jsonl")], "--captions"),
             (["--clap", str(musicgen_dir)], f"--clap {musicgen_dir}"),
             (["--heldout-prompts", str(tmp_path / "none.txt")], "--heldout-prompts")]
    for extra, named in cases:
        args = cli(out, folder, musicgen_dir)
        for flag, value in zip(extra[::2], extra[1::2]):  # the later value of a repeated flag wins
            args += [flag, value]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert named in err and extra[1] in err, err
    assert main(["build", "--kind", "folder", "--out", str(out), "--model", str(musicgen_dir)]) == 2
    assert "needs --audio, --captions" in capsys.readouterr().err
    assert main(["build", "--kind", "procedural", "--out", str(out), "--audio", str(folder)]) == 2
    assert "--audio apply to --kind folder only" in capsys.readouterr().err
    assert not out.exists()


def test_heldout_prompts_that_are_training_captions_are_refused(folder, musicgen_dir, tmp_path):
    prompts = tmp_path / "heldout.txt"
    prompts.write_text("a prompt no track has\n" + "\n".join(f"track {i}:" for i in range(3)) + "\n"
                       + "\n".join(caption(i) if isinstance(caption(i), str) else caption(i)[0] for i in range(12)))
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="also training prompts") as e:
        build_again(out, folder, musicgen_dir, heldout_prompts=prompts)
    assert str(prompts) in str(e.value) and "a prompt no track has" not in str(e.value)
    assert not (out / "state.json").exists() and not (out / "corpus.parquet").exists()


def test_the_clip_is_capped_to_what_the_decoder_takes(musicgen_dir):
    # The tiny decoder has 256 positions and 4 codebooks: at most 253 frames, 5.06 s at 50 frames/s.
    capped = model_clip(musicgen_dir, None)
    assert (capped.requested_s, capped.frames, capped.max_frames) == (10.0, 253, 253)
    assert capped.clip_s == pytest.approx(5.06)
    assert model_clip(musicgen_dir, 1.0).frames == 50 and model_clip(musicgen_dir, 0.999).frames == 49
    with pytest.raises(WorldError, match="shorter than one frame"):
        model_clip(musicgen_dir, 0.001)


def train_student(world: Path, musicgen_dir: Path, run: Path, beta: float) -> Path:
    """`divcfg train` with the user's MusicGen directory on its folder world (its prompts, its embedders, no world
    base): a few steps on local Ray."""
    from divcfg.cli import main as cli_main

    assert cli_main(["train", "model=musicgen_small", f"model.musicgen={musicgen_dir}", "model.local_files_only=true",
                     "model.text_max_len=96", f"world.dir={world}", "world.size=tiny", f"run.dir={run}",
                     "learner.mode=local", "learner.steps=3", "algo.lr=3e-4", "algo.batch_prompts=2",
                     f"algo.beta={beta}", "probe.prompts=2", "probe.samples=2", "logging.progress=false",
                     "logging.audio_every=0"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 3 and np.isfinite(summary["kl_end"]), summary
    return run / "student"


@pytest.fixture(scope="module")
def students(built, musicgen_dir, tmp_path_factory) -> dict[float, Path]:
    """θ_q (β = 0) and θ_d (β = 5) of the user's MusicGen on its folder world."""
    runs = tmp_path_factory.mktemp("runs")
    return {beta: train_student(built, musicgen_dir, runs / f"beta{beta:g}", beta) for beta in (0.0, 5.0)}


@pytest.mark.slow
def test_train_and_sample_the_users_musicgen_on_its_folder_world(built, musicgen_dir, students, tmp_path):
    """The whole loop on the user's own assets: the students `divcfg train` wrote, then `divcfg sample` of a student
    and of the user's directory itself."""
    from divcfg.cli import main as cli_main
    from divcfg.model.loaders import load_policy
    from divcfg.model.musicgen.policy import MusicGenPolicy

    training = set(read_tokens(built / "tokens.parquet").prompts)
    assert isinstance(load_policy(students[5.0]), MusicGenPolicy)
    for source in (students[5.0], musicgen_dir):
        out = tmp_path / f"wav_{source.name}"
        assert cli_main(["sample", str(source), "--prompt", sorted(training)[0], "--frames", "10", "--n", "2",
                         "--guidance-scale", "3", "--threads", "1", "--out", str(out)]) == 0
        wavs = sorted(out.rglob("*.wav"))
        # The tiny EnCodec's rate: the audio comes back through the model's own codec, not the world's.
        assert len(wavs) == 2 and {sf.info(w).samplerate for w in wavs} == {8000}, wavs


@pytest.mark.slow
def test_eval_of_the_users_musicgen_judges_by_clap_with_fad_kad_fronts_and_claims(built, students, tmp_path):
    """`divcfg eval` on the folder world: the MusicGen base's γ sweep, θ_q, θ_d and their merge, adherence by a CLAP
    given with --clap (the world has no scorer), FAD and KAD against the held-out real clips, fronts and claims."""
    from divcfg.cli import main as cli_main

    clap, out = save_tiny_clap(tmp_path / "clap"), tmp_path / "eval"
    assert cli_main(["eval", "--world", str(built), "--group", f"q={students[0.0]}", "--group", f"d={students[5.0]}",
                     "--gammas", "1,3", "--lams", "0.5", "--prompts", "3", "--samples", "2", "--bootstrap", "100",
                     "--clap", str(clap), "--out", str(out)]) == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["bootstrap"]["prompts"] == 3
    assert report["judges"]["scorer"] == {"status": "used", "metric": "adherence", "by": "clap"}
    rows = {r["name"]: r for r in report["rows"]}
    assert set(rows) == {"base γ=1", "base γ=3", "q", "d", "merge β=5 λ=0.5"}
    assert [rows[n]["forward_passes_per_token"] for n in ("base γ=1", "base γ=3", "q", "merge β=5 λ=0.5")] == \
        [1, 2, 1, 1]
    for name, r in rows.items():
        for m in ("adherence", "diversity"):  # adherence: the CLAP cosine of each clip with its prompt
            assert r[f"{m}_lo"] <= r[m] <= r[f"{m}_hi"], (name, m, r)
        assert -1.0 <= r["adherence"] <= 1.0 and r["teacher_loglik"] < 0, (name, r)
        run = r["runs"][0]
        assert run["adherence_by"] == "clap" and len(run["adherence_by_prompt"]) == 3
        assert r["fad"] == run["fad"]["fad"] >= 0, (name, run["fad"])
        kad = run["kad"]
        assert r["kad"] == kad["kad"] and kad["low"] <= kad["kad"] <= kad["high"], (name, kad)
        assert (kad["n_a"], kad["n_b"]) == (6, 9), kad  # 3 prompts × 2 samples against the 9 held-out clips
    # Every row's KAD is taken at one bandwidth (the real clips' own), so that they compare
    assert len({r["runs"][0]["kad"]["bandwidth"] for r in rows.values()}) == 1
    assert rows["base γ=1"]["kad"] != rows["base γ=3"]["kad"]  # the γ sweep samples different clips
    assert set(report["hypervolume"]) == {"cfg", "beta", "merge"}
    for fam in report["hypervolume"].values():
        assert fam["lo"] <= fam["estimate"] <= fam["hi"], fam
    claims = {str(c["id"]): c for c in report["claims"]}
    assert {"1", "2", "3", "4a", "4b", "5"} <= set(claims)
    assert all(c["verdict"] in ("holds", "fails") for c in claims.values()), claims
    header = (out / "eval.csv").read_text().splitlines()[0].split(",")
    assert {"adherence", "adherence_lo", "fad", "kad", "kad_seed_lo"} <= set(header)
    assert (out / "pareto.png").is_file()


def test_eval_refuses_a_divcfg_checkpoint_on_a_folder_world_and_a_musicgen_one_elsewhere(built, musicgen_dir,
                                                                                         tmp_path):
    from divcfg.reward.eval_groups import resolve_checkpoint
    from divcfg.reward.evaluate import check_family, world_musicgen

    assert world_musicgen(World(built)) == str(musicgen_dir.resolve())
    divcfg = tmp_path / "divcfg_ckpt"
    divcfg.mkdir()
    (divcfg / "config.json").write_text(json.dumps({"kind": "policy", "config": {"dim": 8}}))
    with pytest.raises(ValueError, match="is a divcfg policy, and this folder world's base is the MusicGen"):
        check_family(str(divcfg), resolve_checkpoint(divcfg), world_musicgen(World(built)), built)
    other = tmp_path / "musicgen_ckpt"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"kind": "policy", "config": {"family": "musicgen",
                                                                                  "musicgen": str(tmp_path / "mg")}}))
    with pytest.raises(ValueError, match="finetunes the MusicGen .*mg, and this folder world was built for"):
        check_family(str(other), resolve_checkpoint(other), world_musicgen(World(built)), built)
    with pytest.raises(ValueError, match="is a MusicGen checkpoint .* evaluate it on a folder world"):
        check_family(str(other), resolve_checkpoint(other), None, built)


# ---- the same folder with a divcfg policy and its offline codec (a built world's base/ and codec/) ------------------

@pytest.fixture(scope="module")
def built_divcfg(tmp_path_factory, folder, tiny_world) -> Path:
    out = tmp_path_factory.mktemp("worlds") / "folder_divcfg"
    assert main(cli(out, folder, tiny_world)) == 0
    return out


def test_a_divcfg_policy_and_its_codec_are_copied_in_and_make_the_codes(built_divcfg, folder, tiny_world):
    from divcfg.codec.offline import load_codec
    from divcfg.model.loaders import load_policy

    info = World(built_divcfg).info()
    assert info["model_family"] == "divcfg" and info["model"] == str(tiny_world.absolute())
    assert list(info["stage_seconds"]) == ["corpus", "codec", "tokens", "base", "embedders", "measure"]
    codec = load_codec(built_divcfg / "codec")
    assert (built_divcfg / "codec" / "COMPLETE").is_file() and (built_divcfg / "base" / "COMPLETE").is_file()
    # The base is the user's policy as it is: the same tensors as the world it came from
    ours, theirs = load_policy(built_divcfg / "base").state_dict(), load_policy(tiny_world / "base").state_dict()
    assert ours.keys() == theirs.keys() and all(torch_equal(ours[k], theirs[k]) for k in ours)
    heldout = read_tokens(built_divcfg / "heldout.parquet")
    assert heldout.meta["codec"] == "codec" and heldout.meta["sample_rate"] == codec.sample_rate
    frames = int(CLIP_S * codec.frame_rate)
    assert heldout.codes.shape[1:] == (codec.n_codebooks, frames)
    clips = read_folder(folder, folder / "data.jsonl", codec.sample_rate, frames / codec.frame_rate)
    batched = np.concatenate([codec.encode(clips.clips[i:i + ENCODE_BATCH]).numpy()
                              for i in range(0, len(clips.clips), ENCODE_BATCH)])
    assert np.array_equal(batched[heldout.columns["clip_id"]], heldout.codes)
    # A second build does nothing; a MusicGen asked for in the same --out is refused naming both
    assert build_again(built_divcfg, folder, tiny_world)["stage_seconds"] == info["stage_seconds"]


def torch_equal(a, b) -> bool:
    import torch
    return torch.equal(a, b)


@pytest.mark.slow
def test_train_and_eval_a_divcfg_policy_on_its_folder_world(built_divcfg, tmp_path):
    """divcfg's own policy on a user's folder: `divcfg train` (the default family, the world's copied base) at β = 0
    and β > 0, then `divcfg eval` with the γ sweep, both students and their merge, FAD and KAD (no scorer and no
    CLAP: adherence is absent and the claims that need it say so)."""
    from divcfg.cli import main as cli_main

    students = {}
    for beta in (0, 5):
        run = tmp_path / f"beta{beta}"
        assert cli_main(["train", f"world.dir={built_divcfg}", "world.size=tiny", f"run.dir={run}",
                         "learner.mode=local", "learner.steps=3", "algo.batch_prompts=2", f"algo.beta={beta}",
                         "probe.prompts=2", "probe.samples=2", "logging.progress=false",
                         "logging.audio_every=0"]) == 0
        students[beta] = run / "student"
    out = tmp_path / "eval"
    assert cli_main(["eval", "--world", str(built_divcfg), "--group", f"q={students[0]}", "--group",
                     f"d={students[5]}", "--gammas", "1,3", "--lams", "0.5", "--prompts", "3", "--samples", "2",
                     "--bootstrap", "100", "--out", str(out)]) == 0
    report = json.loads((out / "eval.json").read_text())
    rows = {r["name"]: r for r in report["rows"]}
    assert set(rows) == {"base γ=1", "base γ=3", "q", "d", "merge β=5 λ=0.5"}
    assert report["judges"]["scorer"]["status"] == "absent" and report["hypervolume"] == {}
    verdicts = {str(c["id"]): c["verdict"] for c in report["claims"]}
    assert verdicts["1"] == verdicts["3"] == verdicts["4a"] == verdicts["4b"] == "not measured"
    assert verdicts["2"] in ("holds", "fails") and "--clap DIR" in report["claims"][0]["note"]
    assert not (out / "pareto.png").exists() and (out / "eval.csv").is_file()
    for r in rows.values():
        assert r["diversity_lo"] <= r["diversity"] <= r["diversity_hi"] and r["kad"] is not None and r["fad"] >= 0


def test_a_folder_world_trains_only_the_model_it_was_built_for(built, built_divcfg, musicgen_dir, tmp_path, capsys):
    from divcfg.cli import main as cli_main

    common = ["world.size=tiny", "learner.mode=local", "learner.steps=1", "logging.progress=false"]
    cases = [([f"world.dir={built}", f"run.dir={tmp_path / 'a'}"], "built for the musicgen model"),
             ([f"world.dir={built_divcfg}", f"run.dir={tmp_path / 'b'}", "model=musicgen_small",
               f"model.musicgen={musicgen_dir}"], "built for the divcfg model"),
             ([f"world.dir={built}", f"run.dir={tmp_path / 'c'}", "model=musicgen_small",
               f"model.musicgen={tmp_path}"], f"was built for the MusicGen {musicgen_dir.absolute()}")]
    for overrides, what in cases:
        assert cli_main(["train", *overrides, *common]) != 0
        err = capsys.readouterr().err
        assert what in err, err
