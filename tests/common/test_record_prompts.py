import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from divcfg.common.data.prompts import PromptFileError, load_prompts
from divcfg.common.record import RolloutBatch, new_group


def make_batch(rng, groups=3, g=4, k=4, t=10):
    parts = []
    for gi in range(groups):
        parts.append(new_group(prompt_id=gi, prompt=f"prompt {gi} ünï", group_id=100 + gi,
                               codes=rng.integers(0, 1024, (g, k, t)),
                               logprobs=rng.standard_normal((g, k, t)).astype(np.float32) - 3.0,
                               policy_version=gi, generate_s=0.5 + gi))
    batch = RolloutBatch.concat(parts)
    batch.diversity_reward[:4] = rng.random(4)
    return batch


def test_msgpack_round_trip_is_bit_exact():
    batch = make_batch(np.random.default_rng(0))
    back = RolloutBatch.from_msgpack(batch.to_msgpack())
    assert back == batch
    assert back.codes.dtype == np.int16 and back.logprobs.dtype == np.float32
    assert back.logprobs.tobytes() == batch.logprobs.tobytes()
    assert np.isnan(back.diversity_reward[4:]).all()


def test_parquet_round_trip_is_bit_exact(tmp_path):
    batch = make_batch(np.random.default_rng(1))
    batch.write_parquet(tmp_path / "r.parquet")
    back = RolloutBatch.read_parquet(tmp_path / "r.parquet")
    assert back == batch and back.codes.tobytes() == batch.codes.tobytes()
    table = pq.read_table(tmp_path / "r.parquet")
    assert table.num_rows == 12 and "prompt" in table.column_names


def test_groups_and_select():
    batch = make_batch(np.random.default_rng(2))
    groups = batch.groups()
    assert [len(g) for g in groups] == [4, 4, 4]
    assert [int(g.group_id[0]) for g in groups] == [100, 101, 102]
    assert groups[1].sample_index.tolist() == [0, 1, 2, 3]
    assert RolloutBatch.concat(groups) == batch


def test_bad_records_are_refused(tmp_path):
    batch = make_batch(np.random.default_rng(3))
    with pytest.raises(ValueError, match="schema 99 is not the supported version 1"):
        import msgpack
        obj = msgpack.unpackb(batch.to_msgpack())
        obj["schema"] = 99
        RolloutBatch.from_msgpack(msgpack.packb(obj))
    with pytest.raises(ValueError, match="corrupt RolloutBatch msgpack"):
        RolloutBatch.from_msgpack(batch.to_msgpack()[:50])
    with pytest.raises(ValueError, match="codes holds values outside int16"):
        new_group(prompt_id=0, prompt="p", group_id=0, codes=np.full((2, 1, 3), 40000),
                  logprobs=np.zeros((2, 1, 3)), policy_version=0, generate_s=0.0)
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(ValueError, match="corrupt rollout Parquet file .*bad.parquet"):
        RolloutBatch.read_parquet(tmp_path / "bad.parquet")


def test_prompt_formats(tmp_path):
    (tmp_path / "p.txt").write_text("a calm melody\n\n  fast drums  \n")
    assert load_prompts(tmp_path / "p.txt") == ["a calm melody", "fast drums"]
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "x"}) + "\n" + json.dumps({"prompt": "y"}) + "\n")
    assert load_prompts(tmp_path / "p.jsonl") == ["x", "y"]
    import pyarrow as pa
    pq.write_table(pa.table({"prompt": ["u", "v"]}), tmp_path / "p.parquet")
    assert load_prompts(tmp_path / "p.parquet") == ["u", "v"]


def test_bad_prompt_files(tmp_path):
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(PromptFileError, match="empty.txt holds no prompts"):
        load_prompts(tmp_path / "empty.txt")
    (tmp_path / "latin1.txt").write_bytes("ok\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(PromptFileError, match="latin1.txt is not UTF-8 \\(line 2"):
        load_prompts(tmp_path / "latin1.txt")
    (tmp_path / "long.txt").write_text("short\n" + "y" * 200 + "\n")
    with pytest.raises(PromptFileError, match="long.txt:2: prompt is 200 UTF-8 bytes, over the text encoder's limit of 96"):
        load_prompts(tmp_path / "long.txt", max_bytes=96)
    assert load_prompts(tmp_path / "long.txt", max_bytes=96, truncate=True)[1] == "y" * 96
    with pytest.raises(PromptFileError, match="prompt file not found: .*missing.txt"):
        load_prompts(tmp_path / "missing.txt")
