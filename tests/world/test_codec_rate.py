"""`divcfg world build --codec KxV`: a world whose codec has K codebooks of V codes instead of its size's."""
import json
import re

import pytest

from divcfg.common.data.world_dir import WORLD_VERSION, WorldError, codec_rate, size_params


def test_codec_rate_sets_the_codebooks_and_scales_the_fit_per_code():
    small = size_params("small")
    got = codec_rate("8x1024", small)
    assert (got["n_codebooks"], got["card"]) == (8, 1024)
    assert got["fit_vectors"] == small["fit_vectors"] * 4  # as many latents per code as 256 codes get
    assert codec_rate(None, small) == small and "n_codebooks" not in small  # the size's table is left as it was


@pytest.mark.parametrize("spec", ["8x", "x256", "0x256", "8x1", "eightx256", "8*256", "64x256"])
def test_a_bad_codec_rate_is_refused_naming_it(spec):
    with pytest.raises(WorldError, match=re.escape(f"--codec '{spec}'")):
        codec_rate(spec, size_params("tiny"))


def test_a_world_of_another_codec_rate_is_refused_before_any_stage(tmp_path):
    from divcfg.world.build import build_world
    state = {"identity": {"version": WORLD_VERSION, "size": "tiny", "seed": 0, "codec": "2x32"}, "done": {}}
    (tmp_path / "state.json").write_text(json.dumps(state))
    with pytest.raises(WorldError, match="'codec': '2x32'"):
        build_world(tmp_path, "tiny", progress=False)
    assert json.loads((tmp_path / "state.json").read_text()) == state  # nothing already saved is touched


@pytest.mark.slow
def test_a_tiny_world_builds_with_two_codebooks_of_32_codes(tmp_path):
    from divcfg.codec.offline import load_codec
    from divcfg.common.data.tokens import read_tokens
    from divcfg.model.loaders import load_policy
    from divcfg.world.build import build_world
    info = build_world(tmp_path, "tiny", progress=False, threads=1, codec="2x32")
    assert info["identity"]["codec"] == "2x32"
    codec = load_codec(tmp_path / "codec")
    assert (codec.n_codebooks, codec.card) == (2, 32)
    codes = read_tokens(tmp_path / "heldout.parquet").codes
    assert codes.shape[1] == 2 and 0 <= codes.min() and codes.max() < 32
    assert len(info["codec_distinct_codes"]) == 2
    policy = load_policy(tmp_path / "base")
    assert (policy.cfg.n_codebooks, policy.cfg.card) == (2, 32)
    assert info["codec_reconstruction"]["stft_distance"] > 0
