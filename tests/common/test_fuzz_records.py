"""Property-based tests of the two readers that take bytes from outside: the rollout record's msgpack decoder and
the prompt-file reader. Random bytes and mutations of valid inputs may only raise the module's own error type (no
other exception), never hang (Hypothesis' deadline, far above any load spike) and never allocate much more than the input (tracemalloc).

Examples are bounded and derandomized, so the default suite stays fast and every run draws the same inputs."""
import json
import tracemalloc

import msgpack
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from divcfg.common.data.prompts import PromptFileError, load_prompts
from divcfg.common.record import RecordError, RolloutBatch, new_group

# The deadline guards against a hang, not speed: a 2-core machine under load took 2 s for a 6 ms example, so it is
# far above any load spike and far below a reader stuck in a loop.
FAST = settings(max_examples=100, deadline=30_000, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
MAX_ALLOC = 8 * 2**20  # far above any valid example here (< 10 kB), far below what a forged shape would ask


def valid_record() -> bytes:
    rng = np.random.default_rng(0)
    groups = [new_group(prompt_id=i, prompt=f"prompt {i} ünï", group_id=10 + i, codes=rng.integers(0, 64, (2, 2, 3)),
                        logprobs=rng.standard_normal((2, 2, 3)).astype(np.float32), policy_version=i, generate_s=0.5)
              for i in range(2)]
    return RolloutBatch.concat(groups).to_msgpack()


VALID = valid_record()


def decode_or_record_error(data: bytes) -> None:
    """Decode under tracemalloc: success, or RecordError; never more than MAX_ALLOC bytes at once."""
    tracemalloc.start()
    try:
        RolloutBatch.from_msgpack(data)
    except RecordError:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < MAX_ALLOC + 4 * len(data), peak


def mutate(data: bytes, edits) -> bytes:
    """Apply (position, kind, byte) edits: overwrite, insert or delete one byte; positions wrap around."""
    out = bytearray(data)
    for pos, kind, byte in edits:
        if not out:
            break
        i = pos % len(out)
        if kind == 0:
            out[i] = byte
        elif kind == 1:
            out.insert(i, byte)
        else:
            del out[i]
    return bytes(out)


EDITS = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 2), st.integers(0, 255)), min_size=1, max_size=8)
# Any value msgpack can carry, nested a little: what a forged field may hold.
WIRE_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=8)
    | st.binary(max_size=16),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12)


@FAST
@given(st.binary(max_size=512))
def test_random_bytes_only_raise_record_error(data):
    decode_or_record_error(data)


@FAST
@given(EDITS)
def test_mutated_records_only_raise_record_error(edits):
    decode_or_record_error(mutate(VALID, edits))


@FAST
@given(st.sampled_from(["prompt_id", "group_id", "sample_index", "codes", "logprobs", "policy_version",
                        "generate_s", "diversity_reward", "quality", "reward_s"]),
       st.sampled_from(["dtype", "shape", "data", None]), WIRE_VALUES)
def test_records_with_a_forged_field_only_raise_record_error(name, key, value):
    obj = msgpack.unpackb(VALID)
    if key is None:
        obj["arrays"][name] = value
    else:
        obj["arrays"][name][key] = value
    decode_or_record_error(msgpack.packb(obj, use_bin_type=True))


def test_a_forged_shape_is_refused_before_any_allocation():
    """The case the bound exists for: a shape that claims 2**39 codes carried by 48 bytes."""
    obj = msgpack.unpackb(VALID)
    obj["arrays"]["codes"]["shape"] = [2**13, 2**13, 2**13]
    with pytest.raises(RecordError, match="field 'codes': shape \\[8192, 8192, 8192\\] needs 1099511627776 bytes, "
                                          "the payload has 48"):
        RolloutBatch.from_msgpack(msgpack.packb(obj, use_bin_type=True))
    obj = msgpack.unpackb(VALID)
    obj["arrays"]["codes"]["dtype"] = "|O"
    with pytest.raises(RecordError, match="field 'codes' has dtype '\\|O', expected '<i2'"):
        RolloutBatch.from_msgpack(msgpack.packb(obj, use_bin_type=True))


def test_the_unmutated_record_decodes():
    """The fuzzed decoder still reads what the encoder writes (else every example above would pass vacuously)."""
    assert RolloutBatch.from_msgpack(VALID).to_msgpack() == VALID


# ---- prompt files ---------------------------------------------------------------------------------------------------
def read_or_prompt_error(path) -> None:
    tracemalloc.start()
    try:
        prompts = load_prompts(path, max_bytes=64)
        assert prompts and all(isinstance(p, str) and p and len(p.encode()) <= 64 for p in prompts)
    except PromptFileError as e:
        assert str(path) in str(e)  # every error names the file
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < MAX_ALLOC, peak


def valid_prompt_file(suffix: str) -> bytes:
    prompts = ["a calm melody", "fast drums ünï", "slow strings in a minor key"]
    if suffix == ".txt":
        return ("\n".join(prompts) + "\n").encode()
    if suffix == ".jsonl":
        return "".join(json.dumps({"prompt": p}) + "\n" for p in prompts).encode()
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"prompt": prompts}), sink)
    return sink.getvalue().to_pybytes()


PROMPT_SETTINGS = settings(FAST, max_examples=40)


@PROMPT_SETTINGS
@given(st.sampled_from([".txt", ".jsonl", ".parquet"]), st.binary(max_size=512))
def test_prompt_reader_on_random_bytes_only_raises_prompt_file_error(tmp_path, suffix, data):
    path = tmp_path / f"p{suffix}"
    path.write_bytes(data)
    read_or_prompt_error(path)


@PROMPT_SETTINGS
@given(st.sampled_from([".txt", ".jsonl", ".parquet"]), EDITS)
def test_prompt_reader_on_mutated_files_only_raises_prompt_file_error(tmp_path, suffix, edits):
    path = tmp_path / f"m{suffix}"
    path.write_bytes(mutate(valid_prompt_file(suffix), edits))
    read_or_prompt_error(path)


@PROMPT_SETTINGS
@given(st.lists(WIRE_VALUES, min_size=1, max_size=4))
def test_prompt_reader_on_forged_jsonl_records_only_raises_prompt_file_error(tmp_path, values):
    path = tmp_path / "f.jsonl"
    path.write_text("".join(json.dumps(v if i % 2 else {"prompt": v}, default=repr) + "\n"
                            for i, v in enumerate(values)))
    read_or_prompt_error(path)


def test_deep_json_nesting_is_a_prompt_file_error(tmp_path):
    """Found by the fuzzer's kind of input: json.loads raises RecursionError, not a ValueError, past Python's stack."""
    (tmp_path / "deep.jsonl").write_text("[" * 100_000 + "\n")
    with pytest.raises(PromptFileError, match="deep.jsonl:1: expected a JSON object with a 'prompt' key"):
        load_prompts(tmp_path / "deep.jsonl")
