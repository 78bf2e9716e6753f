"""Hostile and broken files: each is refused with an error that names the file and what is wrong, and reading it
changes nothing on disk (nothing already saved is lost). The full-disk case is in test_checkpoint_state.py.

RELIABILITY.md's table of these cases quotes the messages these tests check."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from divcfg.common.data.prompts import PromptFileError, load_prompts
from divcfg.common.data.tokens import read_tokens, write_tokens
from divcfg.common.data.world_dir import STAGE_OUTPUTS, STAGES, WORLD_VERSION, World, WorldError
from divcfg.common.record import RecordError, RolloutBatch, new_group
from divcfg.common.storage.checkpoint import CheckpointError, atomic_dir, verify_checkpoint
from divcfg.common.storage.train_state import load_train_state, save_train_state
from divcfg.model.loaders import load_policy, save_policy
from divcfg.model.policy import build_policy


def snapshot(root):
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def refused(root, call, error, match):
    """``call()`` raises ``error`` matching ``match``, and every file under ``root`` is as it was."""
    before = snapshot(root)
    with pytest.raises(error, match=match):
        call()
    assert snapshot(root) == before


@pytest.fixture
def policy_ck(tmp_path):
    save_policy(build_policy(seed=0), tmp_path / "ck")
    return tmp_path / "ck"


def flip(path, offset):
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))


# ---- safetensors and the COMPLETE marker ----------------------------------------------------------------------------
def test_truncated_safetensors(policy_ck):
    weights = policy_ck / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    refused(policy_ck, lambda: load_policy(policy_ck), CheckpointError,
            "checkpoint file .*/ck/model.safetensors is truncated or overwritten: \\d+ bytes where .*/ck/COMPLETE "
            "records \\d+")


def test_corrupted_safetensors_header_and_data(policy_ck):
    weights = policy_ck / "model.safetensors"
    flip(weights, 20)  # inside the JSON header
    refused(policy_ck, lambda: load_policy(policy_ck), CheckpointError,
            "checkpoint weights .*/ck/model.safetensors are truncated or corrupt: Error while deserializing header")
    flip(weights, 20)
    flip(weights, weights.stat().st_size - 7)  # inside a tensor: the file still parses, only the hash can tell
    refused(policy_ck, lambda: verify_checkpoint(policy_ck), CheckpointError,
            "checkpoint file .*/ck/model.safetensors is corrupt: its SHA-256 differs from the one .*/ck/COMPLETE "
            "records")


def test_an_old_checkpoint_without_a_manifest_is_checked_by_parsing(policy_ck):
    (policy_ck / "COMPLETE").write_text("ok\n")
    weights = policy_ck / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    refused(policy_ck, lambda: verify_checkpoint(policy_ck), CheckpointError,
            "checkpoint file .*/ck/model.safetensors is truncated or corrupt: .*incomplete metadata")


@pytest.mark.parametrize("marker", [b"", b'{"format": "divcfg-checkpoint-1", "files": {"model.safe', b"\xff\xfe",
                                    b'{"format": "divcfg-checkpoint-1", "files": {"a": {"bytes": "9"}}}'])
def test_truncated_or_corrupt_complete_marker(policy_ck, marker):
    (policy_ck / "COMPLETE").write_bytes(marker)
    refused(policy_ck, lambda: load_policy(policy_ck), CheckpointError,
            "checkpoint marker .*/ck/COMPLETE is truncated or corrupt \\(.*\\), so the checkpoint can't be verified; "
            "it is not used")


def test_missing_complete_marker(policy_ck):
    (policy_ck / "COMPLETE").unlink()
    refused(policy_ck, lambda: load_policy(policy_ck), CheckpointError,
            "checkpoint .*/ck is incomplete \\(no COMPLETE marker\\): it was not fully written")


@pytest.mark.parametrize("files, message", [
    ({"config.json": '{"model_type": "musicgen", "architectures": ["MusicgenForConditionalGeneration"]}',
      "model.safetensors": ""},
     "is a Hugging Face 'musicgen' model directory \\(config.json model_type='musicgen'\\), not a divcfg checkpoint "
     "\\(MusicGen: pass it as model.musicgen=DIR"),
    ({"world.json": "{}", "tokens.parquet": ""}, "is a divcfg world directory, not a checkpoint"),
    ({"notes.txt": "hello"}, "is not a divcfg checkpoint: it has no COMPLETE marker and no divcfg config.json "
                             "\\(it holds \\['notes.txt'\\]\\)"),
])
def test_a_directory_that_is_no_checkpoint_is_named_for_what_it_is(tmp_path, files, message):
    """Never "not fully written" for a directory that is simply something else."""
    d = tmp_path / "other"
    d.mkdir()
    for name, text in files.items():
        (d / name).write_text(text)
    with pytest.raises(CheckpointError, match=message) as e:
        load_policy(d)
    assert "not fully written" not in str(e.value)
    assert sorted(f.name for f in d.iterdir()) == sorted(files)  # nothing written or removed


# ---- train state ----------------------------------------------------------------------------------------------------
@pytest.fixture
def state_ck(tmp_path):
    with atomic_dir(tmp_path / "st") as tmp:
        save_train_state(tmp, {"step": 3, "optimizer": {"state": {0: {"exp_avg": torch.ones(4)}}}})
    return tmp_path / "st"


def test_truncated_train_state_json(state_ck):
    doc = state_ck / "train_state.json"
    doc.write_bytes(doc.read_bytes()[:-9])
    refused(state_ck, lambda: load_train_state(state_ck), CheckpointError,
            "train state .*/st/train_state.json is truncated or corrupt: ")
    refused(state_ck, lambda: verify_checkpoint(state_ck), CheckpointError,
            "checkpoint file .*/st/train_state.json is truncated or overwritten")


def test_train_state_json_of_another_format(state_ck):
    (state_ck / "train_state.json").write_text(json.dumps({"state": {}}))
    refused(state_ck, lambda: load_train_state(state_ck), CheckpointError,
            "train state .*/st/train_state.json is truncated or corrupt: not a divcfg-train-state-1 document")


def test_forged_train_state_tag(state_ck):
    (state_ck / "train_state.json").write_text(json.dumps(
        {"format": "divcfg-train-state-1", "state": {"optimizer": {"__tensor__": "t99"}}}))
    refused(state_ck, lambda: load_train_state(state_ck), CheckpointError,
            "train state .*/st/train_state.json is corrupt: a tagged value fails to decode \\(KeyError\\('t99'\\)\\)")


def test_truncated_and_missing_train_state_tensors(state_ck):
    tensors = state_ck / "train_state.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:-3])
    refused(state_ck, lambda: load_train_state(state_ck), CheckpointError,
            "train state tensors .*/st/train_state.safetensors are truncated or corrupt: ")
    tensors.unlink()
    refused(state_ck, lambda: load_train_state(state_ck), CheckpointError,
            "train state tensors .*/st/train_state.safetensors are missing")
    (state_ck / "train_state.json").unlink()
    refused(state_ck, lambda: load_train_state(state_ck), CheckpointError,
            "checkpoint .*/st holds no train state \\(train_state.json or train_state.pt\\)")


def test_truncated_legacy_pickle_with_opt_in(tmp_path):
    torch.save({"step": 1, "torch_rng": torch.get_rng_state()}, tmp_path / "train_state.pt")
    (tmp_path / "train_state.pt").write_bytes((tmp_path / "train_state.pt").read_bytes()[:200])
    with pytest.warns(UserWarning):
        refused(tmp_path, lambda: load_train_state(tmp_path, allow_pickle=True), CheckpointError,
                "train state .*/train_state.pt is truncated or corrupt: ")


# ---- Parquet: token datasets and rollout tables ----------------------------------------------------------------------
@pytest.fixture
def tokens_file(tmp_path):
    codes = np.random.default_rng(0).integers(0, 64, (3, 2, 5))
    write_tokens(tmp_path / "tokens.parquet", ["a", "b", "c"], codes, {"codec": "x"})
    return tmp_path / "tokens.parquet"


def test_truncated_token_dataset(tokens_file):
    tokens_file.write_bytes(tokens_file.read_bytes()[:-30])
    refused(tokens_file.parent, lambda: read_tokens(tokens_file), ValueError,
            "token dataset .*/tokens.parquet is not a readable Parquet file: ")


def rewrite(path, table, meta=None, **cols):
    for name, values in cols.items():
        table = table.set_column(table.column_names.index(name), name, pa.array(values, table.schema.field(name).type))
    if meta is not None:
        table = table.replace_schema_metadata({b"divcfg.tokens": meta})
    pq.write_table(table, path)


def test_token_dataset_with_corrupt_metadata_or_rows(tokens_file):
    table = pq.read_table(tokens_file)
    rewrite(tokens_file, table, meta=b'{"codec": "x", "codes_shape": [2, -5]}')
    refused(tokens_file.parent, lambda: read_tokens(tokens_file), ValueError,
            "token dataset .*/tokens.parquet has corrupt divcfg.tokens metadata: .*codes_shape \\[2, -5\\] is not two "
            "positive integers")
    rewrite(tokens_file, table, meta=b'{"codec": "x", "codes_sh')
    refused(tokens_file.parent, lambda: read_tokens(tokens_file), ValueError,
            "token dataset .*/tokens.parquet has corrupt divcfg.tokens metadata: JSONDecodeError")
    blobs = table.column("codes").to_pylist()
    rewrite(tokens_file, table, codes=[blobs[0], blobs[1][:-2], blobs[2]])
    refused(tokens_file.parent, lambda: read_tokens(tokens_file), ValueError,
            "token dataset .*/tokens.parquet is corrupt: row 1's codes hold 18 bytes, expected 20 "
            "\\(int16 \\[2, 5\\]\\)")


def test_truncated_and_corrupt_rollout_tables(tmp_path):
    rng = np.random.default_rng(0)
    batch = new_group(prompt_id=0, prompt="p", group_id=0, codes=rng.integers(0, 64, (2, 2, 3)),
                      logprobs=np.zeros((2, 2, 3), np.float32), policy_version=0, generate_s=0.1)
    path = tmp_path / "r.parquet"
    batch.write_parquet(path)
    table = pq.read_table(path)
    path.write_bytes(path.read_bytes()[:-40])
    refused(tmp_path, lambda: RolloutBatch.read_parquet(path), ValueError,
            "corrupt rollout Parquet file .*/r.parquet: ")
    codes = table.column("codes").to_pylist()
    pq.write_table(table.set_column(table.column_names.index("codes"), "codes",
                                    pa.array([codes[0], codes[1][:3]], pa.binary())), path)
    refused(tmp_path, lambda: RolloutBatch.read_parquet(path), RecordError,
            ".*/r.parquet: corrupt rollout table: a codes blob is not 12 bytes \\(int16 \\[2, 3\\]\\)")


# ---- prompt files ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, data, match", [
    ("latin1.txt", "ok\ncafé\n".encode("latin-1"), "prompt file .*/latin1.txt is not UTF-8 \\(line 2, byte 6\\)"),
    ("blank.txt", b"\n  \n\t\n", "prompt file .*/blank.txt holds no prompts"),
    ("zero.txt", b"", "prompt file .*/zero.txt holds no prompts"),
    ("nul.txt", b"fine\nbin\x00ary\n", "prompt file .*/nul.txt holds a NUL byte \\(line 2\\): it is binary, not text"),
    ("empty.jsonl", b'{"prompt": "x"}\n{"prompt": "  "}\n', ".*/empty.jsonl:2: prompt is empty"),
    ("cut.jsonl", b'{"prompt": "x"}\n{"prompt": "y', ".*/cut.jsonl:2: expected a JSON object with a 'prompt' key"),
    ("num.jsonl", b'{"prompt": 7}\n', ".*/num.jsonl:1: prompt is int, not text"),
])
def test_bad_prompt_files(tmp_path, name, data, match):
    (tmp_path / name).write_bytes(data)
    refused(tmp_path, lambda: load_prompts(tmp_path / name), PromptFileError, match)


def test_bad_prompt_parquet(tmp_path):
    pq.write_table(pa.table({"prompt": ["a", ""]}), tmp_path / "e.parquet")
    refused(tmp_path, lambda: load_prompts(tmp_path / "e.parquet"), PromptFileError, ".*/e.parquet:2: prompt is empty")
    pq.write_table(pa.table({"prompt": ["a", None]}), tmp_path / "n.parquet")
    refused(tmp_path, lambda: load_prompts(tmp_path / "n.parquet"), PromptFileError,
            ".*/n.parquet:2: prompt is NoneType, not text")
    (tmp_path / "t.parquet").write_bytes((tmp_path / "e.parquet").read_bytes()[:-12])
    refused(tmp_path, lambda: load_prompts(tmp_path / "t.parquet"), PromptFileError,
            "prompt file .*/t.parquet is not a readable Parquet file: ")


def test_oversized_prompt_file(tmp_path, monkeypatch):
    import divcfg.common.data.prompts as prompts
    monkeypatch.setattr(prompts, "MAX_FILE_BYTES", 10)
    (tmp_path / "big.txt").write_text("a prompt that is too long\n")
    refused(tmp_path, lambda: load_prompts(tmp_path / "big.txt"), PromptFileError,
            "prompt file .*/big.txt is 26 bytes, over the 10-byte limit for a prompt file; is it the right file\\?")


# ---- a world directory with a stage's file deleted ------------------------------------------------------------------
def fake_world(root):
    """A world directory as a finished build leaves it, with placeholder files (verify reads no contents)."""
    root.mkdir()
    World(root).write_state({"identity": {"version": WORLD_VERSION, "size": "tiny", "seed": 3}, "done": {s: {} for s in STAGES}})
    for stage in STAGES:
        for name in STAGE_OUTPUTS[stage]:
            if name.endswith("/"):
                (root / name).mkdir()
                (root / name / "COMPLETE").write_text("ok\n")
            else:
                (root / name).write_text("x")
    return World(root)


@pytest.mark.parametrize("stage, name", [("tokens", "heldout.parquet"), ("embedders", "embedder_eval/COMPLETE"),
                                         ("corpus", "prompts_heldout.txt"), ("measure", "world.json")])
def test_world_with_a_stage_file_deleted_names_the_stage_to_rebuild(tmp_path, stage, name):
    world = fake_world(tmp_path / "w")
    world.verify()
    (world.root / name).unlink()
    what = "has no COMPLETE marker" if name.endswith("COMPLETE") else "is missing"
    refused(world.root, world.verify, WorldError,
            f"world .*/w: .*/w/{name.split('/')[0]} {what}, so stage '{stage}' must be rebuilt: remove '{stage}' "
            f"from \"done\" in .*/w/state.json \\(World.forget\\) and run `divcfg world build --out .*/w --size tiny "
            f"--seed 3`")
    world.forget(stage)  # the build then redoes that stage only; the others stay built
    world.verify()
    assert set(world.state()["done"]) == set(STAGES) - {stage}
