import pytest
import torch

from divcfg.model.loaders import load_policy, save_policy
from divcfg.model.merge import main, merge_state_dicts
from divcfg.model.policy import build_policy


@pytest.fixture
def two(tmp_path):
    save_policy(build_policy(seed=1), tmp_path / "a")
    save_policy(build_policy(seed=2), tmp_path / "b")
    return tmp_path


def test_merge_is_exact_and_endpoints_bit_exact(two):
    assert main([str(two / "a"), str(two / "b"), "--lam", "0", "0.25", "1", "--out", str(two / "m")]) == 0
    a, b = load_policy(two / "a").state_dict(), load_policy(two / "b").state_dict()
    m0 = load_policy(two / "m" / "lam_0").state_dict()
    m1 = load_policy(two / "m" / "lam_1").state_dict()
    mq = load_policy(two / "m" / "lam_0.25").state_dict()
    for k in a:
        assert torch.equal(m0[k], a[k]) and torch.equal(m1[k], b[k])
        if a[k].is_floating_point():
            assert torch.allclose(mq[k], 0.75 * a[k] + 0.25 * b[k], atol=1e-7)


def test_merge_pure_function_hand_computed():
    out = merge_state_dicts({"w": torch.tensor([0.0, 2.0])}, {"w": torch.tensor([4.0, 6.0])}, 0.5)
    assert out["w"].tolist() == [2.0, 4.0]


def test_merge_refuses(two, capsys):
    assert main([str(two / "a"), str(two / "b"), "--lam", "1.5", "--out", str(two / "x")]) == 2
    assert "--lam 1.5 is outside [0, 1]; pass --extrapolate" in capsys.readouterr().err
    assert main([str(two / "a"), str(two / "b"), "--lam", "1.5", "--extrapolate", "--out", str(two / "x")]) == 0
    save_policy(build_policy(seed=1, dim=32, n_heads=2), two / "c")
    assert main([str(two / "a"), str(two / "c"), "--lam", "0.5", "--out", str(two / "y")]) == 2
    assert "different architectures" in capsys.readouterr().err
    assert main([str(two / "a"), str(two / "nope"), "--lam", "0.5", "--out", str(two / "y")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
