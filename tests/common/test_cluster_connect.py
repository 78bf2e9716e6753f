"""Joining a cluster by address, and `divcfg scale`'s bad input, without a cluster (only 127.0.0.1 is contacted).

The same errors against a real head (wrong or missing token, a run that does not exist) are in test_live_head.py.
"""
import socket
import time

import pytest

from divcfg.common.runtime.cluster import ClusterError, check_reachable, gcs_endpoint
from divcfg.deploy import scale, submit


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("address, expected", [
    ("127.0.0.1:6379", ("127.0.0.1", 6379)),
    ("ray://head.internal:10001", ("head.internal", 10001)),
    ("[::1]:6379", ("::1", 6379)),
])
def test_gcs_endpoint(address, expected):
    assert gcs_endpoint(address) == expected


@pytest.mark.parametrize("address, words", [
    ("http://127.0.0.1:8265", "is a dashboard URL"),
    ("127.0.0.1", "bad cluster address '127.0.0.1'"),
    ("127.0.0.1:0", "bad cluster address '127.0.0.1:0'"),
    ("head:port", "bad cluster address 'head:port'"),
    ("", "bad cluster address ''"),
])
def test_bad_cluster_addresses_are_named(address, words):
    with pytest.raises(ClusterError, match=words):
        gcs_endpoint(address)


def test_unreachable_cluster_fails_fast_with_its_address():
    address = f"127.0.0.1:{closed_port()}"
    t0 = time.monotonic()
    with pytest.raises(ClusterError, match=f"cannot reach the Ray cluster at '{address}'"):
        check_reachable(address)
    assert time.monotonic() - t0 < 5


def test_scale_bad_input(capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert scale.main(["--actors", "-1", "--address", "127.0.0.1:6379"]) == 2
    assert "--actors must be >= 0, got -1" in capsys.readouterr().err
    assert scale.main(["--actors", "2"]) == 2
    assert "no cluster address; pass --address or set RAY_ADDRESS" in capsys.readouterr().err
    address = f"127.0.0.1:{closed_port()}"
    t0 = time.monotonic()
    assert scale.main(["--actors", "2", "--address", address]) == 2
    assert time.monotonic() - t0 < 5  # a bare ray.init would retry for many minutes
    assert f"cannot reach the Ray cluster at '{address}'" in capsys.readouterr().err


def test_submit_refuses_a_relative_resume_path_and_warns_about_a_relative_run_dir(capsys):
    with pytest.raises(submit.SubmitError, match="run.resume=runs/exp1 is a relative path"):
        submit.check_run_paths(["run.resume=runs/exp1"])
    assert submit.main(["world.size=tiny", "run.resume=runs/exp1", "--address", f"http://127.0.0.1:{closed_port()}",
                        "--no-working-dir"]) == 2
    assert "run.resume=runs/exp1 is a relative path" in capsys.readouterr().err
    assert submit.check_run_paths(["run.dir=/mnt/shared/runs/a", "run.resume=/mnt/shared/runs/b"]) == []
    for key in ("run.dir", "run.resume"):
        with pytest.raises(submit.SubmitError, match=f"{key}=s3://bucket/runs/a: object-storage URIs are not supported"):
            submit.check_run_paths([f"{key}=s3://bucket/runs/a"])
    (warning,) = submit.check_run_paths(["run.dir=runs/a"])
    assert warning.startswith("run.dir=runs/a is relative")
    (warning,) = submit.check_run_paths(["world.size=tiny"])
    assert warning.startswith("the default run.dir (runs/<time>) is relative")
