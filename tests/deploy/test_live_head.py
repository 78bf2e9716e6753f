"""`divcfg submit` and `divcfg scale` against a real Ray head that the test starts (`ray start --head`, 127.0.0.1,
token authentication with a fresh token). Slow: a short `divcfg train` runs as a Ray job on the tiny world.

The head runs in its own process group and temp dir, and teardown stops exactly those processes: a plain
`ray stop` would also stop any other Ray instance on the machine.
"""
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.ray]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TRAIN = ["learner.steps=16", "actors.count=1", "actors.num_cpus=0.5", "reward.num_cpus=0.5", "probe.prompts=2",
         "probe.samples=2", "logging.progress=false", "logging.audio_every=0"]
JOB_TIMEOUT_S = 900


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Head:
    gcs: str
    dashboard: str
    token: str
    env: dict


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the head's process group and to every descendant (workers make their own groups), then SIGKILL."""
    import psutil
    group = [p for p in psutil.process_iter() if _pgid(p.pid) == proc.pid]
    procs = {p.pid: p for p in group}
    for p in group:
        try:
            procs.update({c.pid: c for c in p.children(recursive=True)})
        except psutil.NoSuchProcess:
            pass
    for p in procs.values():
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(list(procs.values()), timeout=20)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    import requests
    home = tmp_path_factory.mktemp("head")
    token = secrets.token_hex(32)
    token_file = home / "auth_token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    # Short: Ray puts Unix sockets under the temp dir, and their paths must stay under 108 bytes.
    temp_dir = tempfile.mkdtemp(prefix="dvray", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") or k == "RAY_DEDUP_LOGS"}
    # The job's entrypoint `divcfg train` must resolve to this environment's script on the head.
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file), HOME=str(home), OMP_NUM_THREADS="1",
               PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", RAY_USAGE_STATS_ENABLED="0",
               NO_PROXY="127.0.0.1,localhost")
    gcs, dash, client = free_port(), free_port(), free_port()
    log = open(home / "head.log", "w")
    proc = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--port", str(gcs), "--node-ip-address", "127.0.0.1",
         "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--ray-client-server-port", str(client),
         "--num-cpus", "2", "--temp-dir", temp_dir, "--disable-usage-stats"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    h = Head(f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dash}", token, env)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (home / "head.log").read_text()[-3000:]
            try:
                if requests.get(f"{h.dashboard}/api/version", headers={"Authorization": f"Bearer {token}"},
                                timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, "the Ray head did not come up in 180 s"
            time.sleep(1)
        yield h
    finally:
        _stop(proc)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def divcfg(*args: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "divcfg"), *args], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def client(h: Head):
    from ray.job_submission import JobSubmissionClient
    return JobSubmissionClient(h.dashboard, headers={"Authorization": f"Bearer {h.token}"})


def wait_job(h: Head, job_id: str) -> str:
    c, deadline = client(h), time.monotonic() + JOB_TIMEOUT_S
    while (status := str(c.get_job_status(job_id))) not in ("SUCCEEDED", "FAILED", "STOPPED"):
        assert time.monotonic() < deadline, f"job {job_id} still {status} after {JOB_TIMEOUT_S} s"
        time.sleep(2)
    return status


def test_submitted_run_scales_and_succeeds(head, tiny_world, tmp_path):
    run = tmp_path / "live-run"
    # Long enough that the scale below lands while the loop still runs: the loop applies it, and a 16-step tiny run
    # can end within the few seconds a `divcfg scale` process takes to reach the job.
    train = [a for a in TRAIN if not a.startswith("learner.steps=")] + ["learner.steps=96"]
    r = divcfg("submit", "world.size=tiny", f"world.dir={tiny_world}", f"run.dir={run}", *train,
               "--address", head.dashboard, "--job-id", "divcfg-live-1", env=head.env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "submitted job divcfg-live-1" in r.stdout
    assert head.token not in r.stdout + r.stderr
    # `divcfg scale` reaches the job's control actor once the run has started its rollout pool.
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while True:
        s = divcfg("scale", "--actors", "2", "--run", run.name, "--address", head.gcs, env=head.env)
        if s.returncode == 0:
            break
        assert f"no running divcfg job named {run.name!r}" in s.stderr, s.stderr
        assert str(client(head).get_job_status("divcfg-live-1")) in ("PENDING", "RUNNING"), \
            client(head).get_job_logs("divcfg-live-1")[-3000:]
        assert time.monotonic() < deadline
        time.sleep(2)
    assert f"job {run.name}: rollout actors -> 2" in s.stdout
    status = wait_job(head, "divcfg-live-1")
    logs = client(head).get_job_logs("divcfg-live-1")
    assert status == "SUCCEEDED", logs[-3000:]
    assert "divcfg train: world=" in logs and "scaling rollout actors 1 -> 2" in logs, logs[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 96 and summary["actors_final"] == 2
    assert summary["groups_generated"] == summary["groups_used"] + summary["groups_stale"] + summary["groups_dropped"]


def test_bad_input_against_the_live_head(head, tmp_path):
    wrong = tmp_path / "wrong_token"
    wrong.write_text(secrets.token_hex(32))
    wrong.chmod(0o600)
    no_token = {k: v for k, v in head.env.items() if k not in ("RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE")}
    no_token["HOME"] = str(tmp_path)  # no ~/.ray/auth_token either
    wrong_token = {**no_token, "RAY_AUTH_TOKEN_PATH": str(wrong)}
    submit = ["submit", "world.size=tiny", "--address", head.dashboard, "--no-working-dir"]
    scale = ["scale", "--actors", "1", "--address", head.gcs]
    cases = {  # name -> (args, env, exit code, words the error must contain)
        "submit, no token": (submit, no_token, 1, ["requires a token", "401", "--token-file"]),
        "submit, wrong token": (submit + ["--token-file", str(wrong)], head.env, 1, ["rejected", "403", str(wrong)]),
        "scale, no such run": (scale + ["--run", "nope"], head.env, 2, ["no running divcfg job named 'nope'"]),
        "scale, no run at all": (scale, head.env, 2, ["no divcfg job is running on this cluster"]),
        "scale, wrong token": (scale, wrong_token, 2, [head.gcs, "token it does not accept", str(wrong)]),
        "scale, no token": (scale, {**no_token, "RAY_AUTH_MODE": "token"}, 2, ["requires a token and none was found"]),
        "scale, dashboard URL": (["scale", "--actors", "1", "--address", head.dashboard], head.env, 2,
                                 ["dashboard URL", "GCS address"]),
    }
    # In parallel: a rejected token costs Ray's own 20 s connection timeout.
    procs = {name: subprocess.Popen([str(BIN / "divcfg"), *args], env=env, cwd=REPO, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True) for name, (args, env, _, _) in cases.items()}
    for name, p in procs.items():
        out, err = p.communicate(timeout=180)
        _, _, code, words = cases[name]
        assert p.returncode == code, (name, out, err)
        for w in words:
            assert w in err, (name, w, err)
        assert head.token not in out + err and wrong.read_text() not in out + err


def test_resume_path_missing_on_the_cluster_fails_the_job_with_its_name(head, tiny_world, tmp_path):
    gone = tmp_path / "not-on-the-cluster"
    r = divcfg("submit", "world.size=tiny", f"world.dir={tiny_world}", f"run.dir={tmp_path / 'r'}",
               f"run.resume={gone}", *TRAIN, "--address", head.dashboard, "--job-id", "divcfg-live-resume",
               "--wait", env=head.env, timeout=JOB_TIMEOUT_S)
    assert r.returncode == 1
    assert "divcfg-live-resume ended FAILED" in r.stderr
    # The job's own error, from its log tail, names the path.
    assert f"run.resume={gone}: no such run directory" in r.stderr
