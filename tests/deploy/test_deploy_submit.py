"""`divcfg submit` against a local stand-in for the Ray dashboard's Jobs API.

No Ray cluster is started and only 127.0.0.1 is contacted.  The stand-in speaks the HTTP
protocol the real ``ray.job_submission.JobSubmissionClient`` uses (``/api/version``,
``/api/packages/...``, ``/api/jobs/...``) and enforces token auth the way Ray 2.60's
dashboard middleware does (401 without a token, 403 with a wrong one).
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from divcfg.deploy import submit as sub

# ----------------------------------------------------------------------------- fake dashboard


class FakeDashboard:
    def __init__(self, token: str | None):
        self.token = token
        self.jobs: dict[str, dict] = {}
        self.statuses: dict[str, list[str]] = {}  # scripted status sequence per job
        self.script: list[list[str]] = []         # sequences handed to new jobs in order
        self.requests: list[tuple[str, str, dict]] = []
        self.uploads: dict[str, bytes] = {}
        self.agent_missing_for = 0  # submissions answered "No available agent" before the agent is up
        self._n = 0
        self._lock = threading.Lock()

        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # keep test output clean
                pass

            def _send(self, code: int, body, ctype="application/json"):
                data = body if isinstance(body, bytes) else (json.dumps(body) if ctype == "application/json" else body).encode()
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorized(self) -> bool:
                outer.requests.append((self.command, self.path, dict(self.headers)))
                if outer.token is None:
                    return True
                auth = self.headers.get("Authorization") or self.headers.get("X-Ray-Authorization")
                if not auth:
                    self._send(401, "Unauthorized: Missing authentication token", "text/plain")
                    return False
                if auth != f"Bearer {outer.token}":
                    self._send(403, "Forbidden: Invalid authentication token", "text/plain")
                    return False
                return True

            def _body(self) -> bytes:
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def do_GET(self):
                if not self._authorized():
                    return
                p = self.path.rstrip("/")
                if p == "/api/version":
                    return self._send(200, {"version": "4", "ray_version": "2.60.0", "ray_commit": "fake"})
                if p.startswith("/api/packages/"):
                    name = p.split("/")[-1]
                    return self._send(200 if name in outer.uploads else 404, {})
                if p.startswith("/api/jobs/") and p.endswith("/logs"):
                    sid = p.split("/")[-2]
                    return self._send(200, {"logs": f"log line of {sid}\n"})
                if p.startswith("/api/jobs/"):
                    sid = p.split("/")[-1]
                    if sid not in outer.jobs:
                        return self._send(404, f"Job {sid} does not exist", "text/plain")
                    seq = outer.statuses[sid]
                    status = seq.pop(0) if len(seq) > 1 else seq[0]
                    job = outer.jobs[sid]
                    return self._send(200, {"type": "SUBMISSION", "job_id": None, "submission_id": sid,
                                            "status": status, "entrypoint": job["entrypoint"],
                                            "runtime_env": job.get("runtime_env"), "metadata": job.get("metadata")})
                self._send(404, "not found", "text/plain")

            def do_PUT(self):
                if not self._authorized():
                    return
                if self.path.startswith("/api/packages/"):
                    outer.uploads[self.path.rstrip("/").split("/")[-1]] = self._body()
                    return self._send(200, {})
                self._send(404, "not found", "text/plain")

            def do_POST(self):
                if not self._authorized():
                    return
                if self.path.rstrip("/") == "/api/jobs":
                    req = json.loads(self._body() or b"{}")
                    if outer.agent_missing_for > 0:
                        outer.agent_missing_for -= 1
                        return self._send(500, "No available agent to submit job, please try again later.",
                                          "text/plain")
                    with outer._lock:
                        sid = req.get("submission_id")
                        if sid and sid in outer.jobs:
                            return self._send(500, f"Job with submission_id {sid} already exists. "
                                                   "Please use a different submission_id.", "text/plain")
                        if not sid:
                            outer._n += 1
                            sid = f"raysubmit_fake{outer._n}"
                        outer.jobs[sid] = req
                        outer.statuses[sid] = list(outer.script.pop(0)) if outer.script else ["PENDING", "RUNNING"]
                    return self._send(200, {"job_id": sid, "submission_id": sid})
                self._send(404, "not found", "text/plain")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No ambient tokens, addresses or proxies; HOME without ~/.ray/auth_token."""
    for k in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE", "RAY_ADDRESS",
              "RAY_API_SERVER_ADDRESS", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy",
              "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(sub, "POLL_INTERVAL_S", 0.01)


@pytest.fixture
def token_file(tmp_path):
    tok = secrets.token_hex(32)
    f = tmp_path / "auth_token"
    f.write_text(tok + "\n")
    f.chmod(0o600)
    return tok, f


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- pure helpers


def test_build_runtime_env(tmp_path):
    (tmp_path / "proj").mkdir()
    env = sub.build_runtime_env(str(tmp_path / "proj"), {"HYDRA_FULL_ERROR": "1"}, ["einops==0.8.0"])
    assert env["working_dir"] == str((tmp_path / "proj").resolve())
    assert env["env_vars"] == {"HYDRA_FULL_ERROR": "1"}
    assert env["pip"] == ["einops==0.8.0"]
    for pattern in (".venv", ".git", "runs", "**/auth_token"):
        assert pattern in env["excludes"]

    assert sub.build_runtime_env(None, {}, None) == {}
    assert sub.build_runtime_env(None, {"A": "b"}, []) == {"env_vars": {"A": "b"}}

    with pytest.raises(sub.SubmitError, match="nope"):
        sub.build_runtime_env(str(tmp_path / "nope"), {}, None)
    with pytest.raises(sub.SubmitError, match="RAY_AUTH_TOKEN"):
        sub.build_runtime_env(None, {"RAY_AUTH_TOKEN": "x"}, None)
    with pytest.raises(sub.SubmitError, match="bad env var name"):
        sub.build_runtime_env(None, {"1BAD": "x"}, None)


def test_runtime_env_is_accepted_by_ray():
    from ray.runtime_env import RuntimeEnv

    env = sub.build_runtime_env(None, {"A": "1"}, ["einops"])
    RuntimeEnv(**env)  # Ray's own validation of the keys we produce


def test_entrypoint_quoting():
    overrides = ["world.size=small", "run.dir=/mnt/shared/runs/a b", "+tag='x y'",
                 "prompt=\"lofi; rm -rf /\"", "note=$(whoami)", "algo.beta=15"]
    ep = sub.build_entrypoint(overrides)
    assert ep.startswith("divcfg train ")
    assert shlex.split(ep) == ["divcfg", "train", *overrides]
    assert sub.build_entrypoint([]) == "divcfg train"
    with pytest.raises(sub.SubmitError):
        sub.build_entrypoint(["a=1\nrm -rf /"])


@pytest.mark.parametrize("bad", [
    "127.0.0.1:8265", "localhost", "ray://127.0.0.1:10001", "ftp://127.0.0.1:8265",
    "http://127.0.0.1", "http://:8265", "http://127.0.0.1:notaport", "http://127.0.0.1:8265/api",
    "http://user:pw@127.0.0.1:8265", "",
])
def test_bad_address_is_rejected_with_the_address(bad, capsys):
    with pytest.raises(sub.SubmitError) as ei:
        sub.validate_address(bad)
    msg = str(ei.value)
    assert "bad --address" in msg
    if bad and "@" not in bad:
        assert bad in msg or repr(bad) in msg
    assert "pw@" not in msg  # credentials in a URL are not echoed back
    rc = sub.main(["world.size=small", "--address", bad, "--no-working-dir"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "bad --address" in err


def test_good_addresses_normalised():
    assert sub.validate_address("http://127.0.0.1:8265/") == "http://127.0.0.1:8265"
    assert sub.validate_address("https://ray.example.internal:443") == "https://ray.example.internal:443"
    assert sub.validate_address("http://[::1]:8265") == "http://[::1]:8265"


def test_parse_env_pairs():
    assert sub.parse_env_pairs(["A=1", "B=x=y", "C="]) == {"A": "1", "B": "x=y", "C": ""}
    with pytest.raises(sub.SubmitError, match="NOEQUALS"):
        sub.parse_env_pairs(["NOEQUALS"])


# ----------------------------------------------------------------------------- tokens


def test_load_token_order(tmp_path, token_file, monkeypatch):
    tok, f = token_file
    assert sub.load_token(token_file=str(f)) == (tok, f"--token-file {f}")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "envtoken123")
    assert sub.load_token()[0] == "envtoken123"
    assert sub.load_token(token_file=str(f))[0] == tok  # the flag wins
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(f))
    assert sub.load_token() == (tok, f"$RAY_AUTH_TOKEN_PATH={f}")
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH")
    assert sub.load_token() == (None, "no token")
    default = Path(os.environ["HOME"]) / ".ray" / "auth_token"
    default.parent.mkdir()
    default.write_text("defaulttoken\n")
    default.chmod(0o600)
    assert sub.load_token()[0] == "defaulttoken"


def test_missing_and_bad_token_files(tmp_path, monkeypatch):
    missing = tmp_path / "no-such-token"
    with pytest.raises(sub.SubmitError, match="no-such-token.*does not exist"):
        sub.load_token(token_file=str(missing))
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(missing))
    with pytest.raises(sub.SubmitError, match="RAY_AUTH_TOKEN_PATH"):
        sub.load_token()
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(sub.SubmitError, match="empty"):
        sub.load_token(token_file=str(empty))
    two = tmp_path / "two"
    two.write_text("abc def\n")
    with pytest.raises(sub.SubmitError, match="single token"):
        sub.load_token(token_file=str(two))


def test_missing_token_file_cli(tmp_path, capsys):
    rc = sub.main(["a=1", "--address", "http://127.0.0.1:8265", "--token-file", str(tmp_path / "gone"),
                   "--no-working-dir"])
    assert rc != 0
    assert "gone" in capsys.readouterr().err


# ----------------------------------------------------------------------------- talking to a dashboard


def test_unreachable_address_fails_fast(capsys):
    addr = f"http://127.0.0.1:{_closed_port()}"
    t0 = time.monotonic()
    with pytest.raises(sub.SubmitError) as ei:
        sub.submit(["world.size=small"], addr, working_dir=None)
    assert time.monotonic() - t0 < 5
    assert f"cannot reach Ray dashboard at {addr}" in str(ei.value)
    assert "port-forward" in str(ei.value)

    t0 = time.monotonic()
    rc = sub.main(["world.size=small", "--address", "http://127.0.0.1:1", "--no-working-dir"])
    assert rc == 1 and time.monotonic() - t0 < 5
    assert "cannot reach Ray dashboard at http://127.0.0.1:1" in capsys.readouterr().err


def test_submit_reads_token_file_and_never_prints_it(token_file, tmp_path, capsys):
    tok, f = token_file
    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / "note.txt").write_text("hello")
    (wd / "auth_token").write_text(tok)  # a stray token file in the working dir is not shipped
    overrides = ["world.size=small", "run.dir=/mnt/shared/runs/t 1"]
    with FakeDashboard(tok) as dash:
        sid = sub.submit(overrides, dash.address, working_dir=str(wd), token_file=str(f),
                         env_vars={"HYDRA_FULL_ERROR": "1"}, job_id="divcfg-test-1")
        assert sid == "divcfg-test-1"
        job = dash.jobs[sid]
        assert shlex.split(job["entrypoint"]) == ["divcfg", "train", *overrides]
        assert job["runtime_env"]["env_vars"] == {"HYDRA_FULL_ERROR": "1"}
        assert job["runtime_env"]["working_dir"].startswith("gcs://")
        # Every request carried the token as a bearer header.
        assert dash.requests and all(h.get("Authorization") == f"Bearer {tok}" for _, _, h in dash.requests)
        # The uploaded package holds the working dir minus the excluded token file.
        import io
        import zipfile
        (blob,) = dash.uploads.values()
        names = zipfile.ZipFile(io.BytesIO(blob)).namelist()
        assert any(n.endswith("note.txt") for n in names)
        assert not any(n.endswith("auth_token") for n in names)
        assert tok.encode() not in blob
        assert tok not in json.dumps(job)

    out, err = capsys.readouterr()
    assert tok not in out and tok not in err
    assert "divcfg-test-1" in out
    assert f"ray job logs --follow divcfg-test-1 --address {dash.address}" in out


def test_cli_submit_wait_success(token_file, capsys):
    tok, f = token_file
    with FakeDashboard(tok) as dash:
        dash.script = [["PENDING", "RUNNING", "SUCCEEDED"]]
        rc = sub.main(["world.size=small", "--address", dash.address, "--token-file", str(f),
                       "--no-working-dir", "--env", "A=1", "--job-id", "j1", "--wait"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "j1: SUCCEEDED" in out
    assert out.strip().splitlines()[-1] == "j1"
    assert tok not in out + err


def test_wrong_token_is_rejected_and_named(token_file, tmp_path, capsys):
    tok, f = token_file
    wrong = tmp_path / "wrong_token"
    wrong.write_text(secrets.token_hex(32))
    wrong.chmod(0o600)
    with FakeDashboard(tok) as dash:
        with pytest.raises(sub.SubmitError) as ei:
            sub.submit(["a=1"], dash.address, working_dir=None, token_file=str(wrong))
        assert not dash.jobs
    msg = str(ei.value)
    assert "rejected" in msg and str(wrong) in msg and "403" in msg
    assert wrong.read_text() not in msg
    out, err = capsys.readouterr()
    assert wrong.read_text() not in out + err


def test_missing_token_is_reported(token_file, capsys):
    tok, _ = token_file
    with FakeDashboard(tok) as dash:
        rc = sub.main(["a=1", "--address", dash.address, "--no-working-dir"])
        assert not dash.jobs
    err = capsys.readouterr().err
    assert rc == 1
    assert "requires a token" in err and "401" in err and "--token-file" in err


def test_address_flag_beats_ray_address_env(token_file, monkeypatch):
    tok, f = token_file
    monkeypatch.setenv("RAY_ADDRESS", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", f"http://127.0.0.1:{_closed_port()}")
    with FakeDashboard(tok) as dash:
        sid = sub.submit(["a=1"], dash.address, working_dir=None, token_file=str(f))
        assert sid in dash.jobs
    assert os.environ["RAY_ADDRESS"].startswith("http://127.0.0.1:")  # restored afterwards


def test_submission_waits_for_the_job_agent(token_file, monkeypatch, capsys):
    tok, f = token_file
    monkeypatch.setattr(sub, "AGENT_RETRY_S", 0.01)
    with FakeDashboard(tok) as dash:
        dash.agent_missing_for = 2
        assert sub.submit(["a=1"], dash.address, working_dir=None, token_file=str(f), job_id="early") == "early"
        assert list(dash.jobs) == ["early"]
    assert capsys.readouterr().out.count("job agent is not up yet") == 2
    monkeypatch.setattr(sub, "AGENT_WAIT_S", 0.0)
    with FakeDashboard(tok) as dash:
        dash.agent_missing_for = 1
        with pytest.raises(sub.SubmitError, match="No available agent"):
            sub.submit(["a=1"], dash.address, working_dir=None, token_file=str(f))


def test_duplicate_job_id(token_file):
    tok, f = token_file
    with FakeDashboard(tok) as dash:
        sub.submit(["a=1"], dash.address, working_dir=None, token_file=str(f), job_id="dup")
        with pytest.raises(sub.SubmitError, match="'dup' is already used"):
            sub.submit(["a=1"], dash.address, working_dir=None, token_file=str(f), job_id="dup")


def test_retry_after_failure(token_file, capsys):
    tok, f = token_file
    with FakeDashboard(tok) as dash:
        dash.script = [["RUNNING", "FAILED"], ["RUNNING", "SUCCEEDED"]]
        sid = sub.submit(["a=1"], dash.address, working_dir=None, token_file=str(f),
                         job_id="run7", max_retries=2)
        assert sid == "run7-retry1"
        assert list(dash.jobs) == ["run7", "run7-retry1"]
        # The retry continues the failed attempt's checkpoints; the first attempt starts as given.
        assert "run.resume" not in dash.jobs["run7"]["entrypoint"]
        assert dash.jobs["run7-retry1"]["entrypoint"].endswith("run.resume=auto")
    assert "retrying (1/2)" in capsys.readouterr().out


def test_retry_keeps_an_explicit_resume(token_file):
    tok, f = token_file
    with FakeDashboard(tok) as dash:
        dash.script = [["FAILED"], ["SUCCEEDED"]]
        sub.submit(["run.resume=/mnt/shared/runs/a"], dash.address, working_dir=None, token_file=str(f),
                   job_id="r", max_retries=1)
        assert dash.jobs["r-retry1"]["entrypoint"] == dash.jobs["r"]["entrypoint"]
        assert dash.jobs["r-retry1"]["entrypoint"].count("run.resume") == 1


def test_failure_without_retries_raises(token_file, capsys):
    tok, f = token_file
    with FakeDashboard(tok) as dash:
        dash.script = [["RUNNING", "FAILED"]]
        with pytest.raises(sub.SubmitError, match="ended FAILED"):
            sub.submit(["a=1"], dash.address, working_dir=None, token_file=str(f), job_id="x", wait=True)
    assert "log line of x" in capsys.readouterr().err


def test_wait_timeout(token_file):
    tok, f = token_file
    with FakeDashboard(tok) as dash:
        dash.script = [["RUNNING"]]
        t0 = time.monotonic()
        with pytest.raises(sub.SubmitError, match="still RUNNING"):
            sub.submit(["a=1"], dash.address, working_dir=None, token_file=str(f), wait=True, timeout_s=0.2)
        assert time.monotonic() - t0 < 5


def test_cli_parses_intermixed_overrides(monkeypatch):
    seen = {}

    def fake_submit(overrides, address, **kw):
        seen.update(overrides=overrides, address=address, **kw)
        return "id"

    monkeypatch.setattr(sub, "submit", fake_submit)
    rc = sub.main(["world.size=small", "--address", "http://127.0.0.1:8265", "algo.beta=15",
                   "--env", "A=1", "--pip", "einops", "--job-id", "j", "--max-retries", "2",
                   "--no-working-dir", "--", "+extra=1", "--weird=2"])
    assert rc == 0
    assert seen["overrides"] == ["world.size=small", "algo.beta=15", "+extra=1", "--weird=2"]
    assert seen["address"] == "http://127.0.0.1:8265"
    assert seen["env_vars"] == {"A": "1"} and seen["pip"] == ["einops"]
    assert seen["working_dir"] is None and seen["job_id"] == "j" and seen["max_retries"] == 2
    assert sub.main(["--env", "NOEQUALS", "a=1"]) == 2


def test_the_driver_is_submitted_without_gpus_and_the_learner_is_placed_by_overrides(token_file, capsys):
    """The learner is a group of Ray actors (learner.placement=group by default): the job request reserves nothing
    for the driver, and the learner's GPUs and node resources travel as overrides of the entrypoint."""
    tok, f = token_file
    with FakeDashboard(tok) as dash:
        rc = sub.main(["world.size=small", "--address", dash.address, "--token-file", str(f), "--no-working-dir",
                       "--job-id", "placed", "learner.num_gpus=1", "+learner.resources.learner_node=1"])
        assert rc == 0, capsys.readouterr().err
        req = dash.jobs["placed"]
    assert "entrypoint_num_gpus" not in req and "entrypoint_resources" not in req
    assert "learner.num_gpus=1" in req["entrypoint"] and "+learner.resources.learner_node=1" in req["entrypoint"]
