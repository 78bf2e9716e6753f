"""``divcfg submit``: send a ``divcfg train`` run to a Ray cluster through the Jobs API.

The cluster's dashboard is expected behind a port-forward (``ray dashboard cluster.yaml``
or ``kubectl port-forward svc/<cluster>-head-svc 8265:8265``), so the usual address is
``http://127.0.0.1:8265``.  Clusters run with ``RAY_AUTH_MODE=token``; the token is read
from ``--token-file``, else ``$RAY_AUTH_TOKEN``, else the file named by
``$RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token`` (the order Ray itself uses) and is sent
as ``Authorization: Bearer ...``.  It is never printed, logged or put in the runtime env.

Ray SDK calls used (ray 2.60, ``ray/dashboard/modules/job/sdk.py``)::

    JobSubmissionClient(address, headers={...})
    client.submit_job(entrypoint=..., runtime_env=..., submission_id=..., metadata=...)
    client.get_job_status(submission_id)  -> JobStatus
    client.get_job_logs(submission_id)    -> str

Usage::

    divcfg submit world.size=small run.dir=/mnt/shared/runs/exp1 \\
        --address http://127.0.0.1:8265 --token-file ~/.ray/auth_token --wait
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Iterator, Mapping, Sequence
from urllib.parse import urlsplit

from divcfg.common import cluster

__all__ = [
    "SubmitError",
    "build_entrypoint",
    "build_runtime_env",
    "check_run_paths",
    "load_token",
    "validate_address",
    "submit",
    "main",
]

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
# The preflight request must fail fast against an unreachable address; the Ray SDK's own
# requests carry no timeout, so we only hand over to it once the dashboard has answered.
CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 15.0
POLL_INTERVAL_S = 5.0
# Right after a head starts, its dashboard answers before the node's job agent has registered, and a submission gets
# "No available agent to submit job, please try again later": retried for this long.
AGENT_WAIT_S = 120.0
AGENT_RETRY_S = 2.0
LOG_TAIL_LINES = 40

# Never shipped with --working-dir: local environments, VCS data, run outputs and anything
# that may hold a credential.  (Ray also honours .gitignore / .rayignore on top of this.)
DEFAULT_EXCLUDES: tuple[str, ...] = (
    ".git",
    ".venv",
    "venv",
    "**/__pycache__",
    "*.pyc",
    "*.egg-info",
    ".pytest_cache",
    "build",
    "dist",
    "runs",
    "outputs",
    "multirun",
    "worlds",
    "bench_out",
    ".ray",
    "**/auth_token",
    "*.token",
    "*.pem",
    "*.key",
    ".env",
)

_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


class SubmitError(RuntimeError):
    """A submission problem with a message fit for the user; ``exit_code`` for the CLI."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


# ---------------------------------------------------------------------------------------
# pure helpers


def validate_address(address: str) -> str:
    """Check that ``address`` is ``http(s)://host:port`` and return it without a trailing /."""
    if not isinstance(address, str) or not address.strip():
        raise SubmitError(f"bad --address {address!r}: expected http://host:port", exit_code=2)
    raw = address.strip()
    if "://" not in raw:
        raise SubmitError(
            f"bad --address {raw!r}: missing the http:// or https:// scheme (did you mean http://{raw}?)",
            exit_code=2,
        )
    try:
        parts = urlsplit(raw)
        port = parts.port  # raises ValueError for a non-numeric / out-of-range port
    except ValueError as e:
        raise SubmitError(f"bad --address {raw!r}: {e}; expected http://host:port", exit_code=2) from None
    if parts.scheme not in ("http", "https"):
        hint = " (the Jobs API is the dashboard's HTTP port, usually 8265, not ray://)" if parts.scheme == "ray" else ""
        raise SubmitError(
            f"bad --address {raw!r}: scheme must be http:// or https://{hint}", exit_code=2
        )
    if parts.username or parts.password:
        raise SubmitError(
            f"bad --address {parts.scheme}://{parts.hostname}:...: do not put credentials in the "
            "address; use --token-file",
            exit_code=2,
        )
    if not parts.hostname:
        raise SubmitError(f"bad --address {raw!r}: no host; expected http://host:port", exit_code=2)
    if port is None:
        raise SubmitError(
            f"bad --address {raw!r}: no port; expected http://host:port (dashboard default 8265)",
            exit_code=2,
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise SubmitError(
            f"bad --address {raw!r}: expected just http://host:port, without a path or query",
            exit_code=2,
        )
    return f"{parts.scheme}://{parts.netloc}"


def build_entrypoint(overrides: Sequence[str]) -> str:
    """``divcfg train`` followed by each Hydra override as one shell word."""
    for o in overrides:
        if not isinstance(o, str):
            raise SubmitError(f"override {o!r} is not a string", exit_code=2)
        if "\n" in o or "\r" in o or "\x00" in o:
            raise SubmitError(f"override {o!r} contains a newline or NUL byte", exit_code=2)
    return shlex.join(["divcfg", "train", *overrides])


# Checkpoints are written with local file operations (atomic rename, completion marker), which object stores lack.
URI_UNSUPPORTED = ("object-storage URIs are not supported for run directories; mount the bucket on every node "
                   "(Mountpoint for Amazon S3, gcsfuse, or a ReadWriteMany volume) and give the mount path, e.g. "
                   "/mnt/shared/runs/NAME")


def check_run_paths(overrides: Sequence[str]) -> list[str]:
    """Refuse a relative ``run.resume`` and warn about a relative ``run.dir``; returns the warnings.

    The job runs in a fresh copy of the working dir on the cluster (or in the image's directory): a relative path
    there is not the one on this machine, and nothing written there outlives the job.
    """
    values = {}
    for o in overrides:
        key, sep, value = o.lstrip("+").partition("=")
        if sep:
            values[key] = value
    for key in ("run.dir", "run.resume"):
        if "://" in values.get(key, ""):
            raise SubmitError(f"{key}={values[key]}: {URI_UNSUPPORTED}", exit_code=2)
    resume = values.get("run.resume")
    if resume and resume != "null" and not Path(resume).is_absolute():
        raise SubmitError(f"run.resume={resume} is a relative path, which the job resolves inside its own copy of "
                          "the working dir on the cluster; give the run's absolute path on storage every node "
                          "mounts (e.g. /mnt/shared/runs/NAME)", exit_code=2)
    run_dir = values.get("run.dir")
    if run_dir is None or not Path(run_dir).is_absolute():
        shown = f"run.dir={run_dir}" if run_dir is not None else "the default run.dir (runs/<time>)"
        return [f"{shown} is relative: the job writes it inside its temporary working dir on the cluster, which "
                "is deleted later; pass run.dir=/mnt/shared/runs/NAME (shared storage) to keep checkpoints and "
                "summary.json"]
    return []


def parse_env_pairs(items: Sequence[str] | None) -> dict[str, str]:
    """``["K=V", ...]`` -> ``{"K": "V"}`` with a clear error for malformed items."""
    out: dict[str, str] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not _ENV_KEY.match(key):
            raise SubmitError(f"bad --env {item!r}: expected KEY=VALUE", exit_code=2)
        out[key] = value
    return out


def parse_resource_pairs(items: Sequence[str] | None) -> dict[str, float]:
    """``["learner_node=1", ...]`` -> ``{"learner_node": 1.0}`` with a clear error for malformed items."""
    out: dict[str, float] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        try:
            amount = float(value)
        except ValueError:
            amount = None
        if not sep or not key or amount is None:
            raise SubmitError(f"bad --learner-resource {item!r}: expected NAME=AMOUNT", exit_code=2)
        out[key] = amount
    return out


def build_runtime_env(
    working_dir: str | None,
    env_vars: Mapping[str, str] | None,
    pip: Sequence[str] | None,
) -> dict:
    """The Ray ``runtime_env`` for a ``divcfg train`` job.

    ``working_dir`` (a local directory) is uploaded by the SDK, minus ``DEFAULT_EXCLUDES``
    and whatever .gitignore/.rayignore exclude.  ``env_vars`` must not carry the cluster
    token: runtime envs are stored with the job and shown in the dashboard, and the nodes
    already have the token.
    """
    runtime_env: dict = {}
    if working_dir is not None:
        wd = Path(working_dir).expanduser()
        if not wd.is_dir():
            raise SubmitError(f"working dir {working_dir!r} does not exist or is not a directory", exit_code=2)
        runtime_env["working_dir"] = str(wd.resolve())
        runtime_env["excludes"] = list(DEFAULT_EXCLUDES)
    if env_vars:
        clean: dict[str, str] = {}
        for k, v in env_vars.items():
            if not isinstance(k, str) or not _ENV_KEY.match(k):
                raise SubmitError(f"bad env var name {k!r}", exit_code=2)
            if k == "RAY_AUTH_TOKEN":
                raise SubmitError(
                    "refusing to put RAY_AUTH_TOKEN in the job's runtime_env (it would be stored "
                    "with the job and shown in the dashboard); the cluster nodes already hold the token",
                    exit_code=2,
                )
            if not isinstance(v, str):
                raise SubmitError(f"env var {k} must be a string, got {type(v).__name__}", exit_code=2)
            clean[k] = v
        runtime_env["env_vars"] = clean
    if pip:
        pkgs = [p for p in pip if p and p.strip()]
        if pkgs:
            runtime_env["pip"] = pkgs
    return runtime_env


def load_token(
    token: str | None = None,
    token_file: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[str | None, str]:
    """Return ``(token, where it came from)`` (:func:`divcfg.common.cluster.load_token`), as a SubmitError."""
    try:
        return cluster.load_token(token, token_file, environ)
    except cluster.TokenError as e:
        raise SubmitError(str(e), exit_code=2) from None


# ---------------------------------------------------------------------------------------
# talking to the cluster


def _unreachable(address: str, detail: str) -> SubmitError:
    return SubmitError(
        f"cannot reach Ray dashboard at {address}; is the cluster up / port-forward running? ({detail})"
    )


def _auth_error(address: str, status: int, source: str) -> SubmitError:
    if status == 401 or source == "no token":
        return SubmitError(
            f"the Ray dashboard at {address} requires a token (HTTP {status}) and "
            + ("none was found: pass --token-file FILE or set RAY_AUTH_TOKEN_PATH"
               if source == "no token" else f"the one from {source} was not accepted")
        )
    return SubmitError(
        f"the token from {source} was rejected by the Ray dashboard at {address} (HTTP {status}); "
        "check that it matches the cluster's secret"
    )


def _preflight(address: str, headers: Mapping[str, str], source: str) -> str:
    """GET /api/version with short timeouts; returns the cluster's Ray version."""
    import requests

    try:
        r = requests.get(
            f"{address}/api/version",
            headers=dict(headers),
            timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S),
            allow_redirects=False,
        )
    except requests.exceptions.SSLError as e:
        raise SubmitError(f"TLS error talking to {address}: {type(e).__name__}") from None
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as e:
        raise _unreachable(address, type(e).__name__) from None
    except requests.exceptions.RequestException as e:
        raise _unreachable(address, type(e).__name__) from None
    if r.status_code in (401, 403):
        raise _auth_error(address, r.status_code, source)
    if r.status_code != 200:
        raise SubmitError(
            f"unexpected HTTP {r.status_code} from {address}/api/version; is this a Ray dashboard "
            "(usually port 8265)?"
        )
    try:
        return str(r.json().get("ray_version", "unknown"))
    except ValueError:
        raise SubmitError(f"{address}/api/version did not answer JSON; is this a Ray dashboard?") from None


@contextlib.contextmanager
def _explicit_address() -> Iterator[None]:
    """The SDK lets $RAY_API_SERVER_ADDRESS / $RAY_ADDRESS override its address argument;
    ``--address`` must win, so hide those two while the client is built."""
    saved = {k: os.environ.pop(k) for k in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS") if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _make_client(address: str, headers: Mapping[str, str], source: str):
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:
        with _explicit_address():
            return JobSubmissionClient(address=address, headers=dict(headers))
    except AuthenticationError:
        raise _auth_error(address, 403 if source != "no token" else 401, source) from None
    except ConnectionError as e:
        raise _unreachable(address, type(e).__name__) from None


def _call(fn, address: str, source: str, *args, **kwargs):
    """Run one SDK call and turn its failures into SubmitError."""
    import requests
    from ray.exceptions import AuthenticationError

    try:
        return fn(*args, **kwargs)
    except AuthenticationError:
        raise _auth_error(address, 403 if source != "no token" else 401, source) from None
    # The SDK re-raises some connection failures as the builtin ConnectionError and lets
    # others through as requests' own exceptions (which do not subclass the builtin).
    except (ConnectionError, requests.exceptions.ConnectionError, requests.exceptions.Timeout) as e:
        raise _unreachable(address, type(e).__name__) from None


def _log_tail(client, job_id: str, address: str, source: str) -> str:
    try:
        logs = _call(client.get_job_logs, address, source, job_id)
    except Exception:  # best effort only
        return ""
    lines = (logs or "").splitlines()[-LOG_TAIL_LINES:]
    return "\n".join(lines)


def _wait_for(client, job_id: str, address: str, source: str, timeout_s: float, out) -> str:
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        status = str(_call(client.get_job_status, address, source, job_id))
        if status != last:
            print(f"job {job_id}: {status}", file=out, flush=True)
            last = status
        if status in _TERMINAL:
            return status
        if time.monotonic() >= deadline:
            raise SubmitError(
                f"job {job_id} is still {status} after {timeout_s:g} s; it keeps running on the "
                f"cluster (stop it with `ray job stop {job_id} --address {address}`)"
            )
        time.sleep(min(POLL_INTERVAL_S, max(0.0, deadline - time.monotonic())) or 0.01)


def submit(
    overrides: list[str],
    address: str,
    *,
    working_dir: str | None = ".",
    token: str | None = None,
    token_file: str | None = None,
    env_vars: dict | None = None,
    pip: list[str] | None = None,
    job_id: str | None = None,
    max_retries: int = 0,
    wait: bool = False,
    timeout_s: float = 600,
    learner_gpus: float = 0,
    learner_resources: dict | None = None,
) -> str:
    """Submit ``divcfg train <overrides>`` and return the submission id.

    With ``wait`` (implied by ``max_retries > 0``) follow the job until it ends; a FAILED
    job is resubmitted up to ``max_retries`` times as ``<job_id>-retry<N>`` with ``run.resume=auto`` (unless
    ``run.resume`` is given), so with ``run.dir`` on shared storage the new attempt resumes from the last checkpoint.
    ``timeout_s`` bounds each attempt's wait.  Returns the id of the last attempt.

    The driver runs the learner, so ``learner_gpus`` and ``learner_resources`` (Ray's entrypoint resources) place it:
    ``learner_gpus=1, learner_resources={"learner_node": 1}`` puts it on deploy/'s learner GPU node rather than the
    CPU head, where Ray would otherwise start it.
    """
    if learner_gpus < 0:
        raise SubmitError(f"--learner-gpus must be >= 0, got {learner_gpus}", exit_code=2)
    for k, v in (learner_resources or {}).items():
        if v <= 0:
            raise SubmitError(f"--learner-resource {k}={v}: the amount must be > 0", exit_code=2)
    placement = {**({"entrypoint_num_gpus": learner_gpus} if learner_gpus else {}),
                 **({"entrypoint_resources": dict(learner_resources)} if learner_resources else {})}
    if max_retries < 0:
        raise SubmitError(f"max_retries must be >= 0, got {max_retries}", exit_code=2)
    if timeout_s <= 0:
        raise SubmitError(f"timeout_s must be > 0, got {timeout_s}", exit_code=2)
    if job_id is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", job_id):
        raise SubmitError(f"bad job id {job_id!r}: use letters, digits, '_', '.', '-'", exit_code=2)

    address = validate_address(address)
    entrypoint = build_entrypoint(list(overrides))
    # A retried attempt continues the failed one's newest checkpoint in run.dir (a fresh start would be refused
    # there, since the failed attempt's checkpoints would be overwritten); an explicit run.resume is kept as given.
    given_resume = any(o.split("=", 1)[0].lstrip("+") == "run.resume" for o in overrides)
    retry_entrypoint = entrypoint if given_resume else build_entrypoint([*overrides, "run.resume=auto"])
    for warning in check_run_paths(list(overrides)):
        print(f"divcfg submit: warning: {warning}", file=sys.stderr)
    runtime_env = build_runtime_env(working_dir, env_vars or {}, pip)
    tok, source = load_token(token=token, token_file=token_file)
    headers = {"Authorization": f"Bearer {tok}"} if tok else {}

    out = sys.stdout
    ray_version = _preflight(address, headers, source)
    client = _make_client(address, headers, source)
    print(f"Ray {ray_version} at {address} (token: {source})", file=out)

    follow = wait or max_retries > 0
    attempts = max_retries + 1 if follow else 1
    sid: str | None = None
    status = "PENDING"
    for attempt in range(attempts):
        wanted = job_id if attempt == 0 or job_id is None else f"{job_id}-retry{attempt}"
        agent_deadline = time.monotonic() + AGENT_WAIT_S
        while True:
            try:
                sid = _call(
                    client.submit_job,
                    address,
                    source,
                    entrypoint=entrypoint if attempt == 0 else retry_entrypoint,
                    runtime_env=runtime_env,
                    submission_id=wanted,
                    metadata={"divcfg.attempt": str(attempt), "divcfg.submitted_by": "divcfg submit"},
                    **placement,
                )
                break
            except SubmitError:
                raise
            except (RuntimeError, ValueError, TypeError, OSError) as e:
                # Rejected by the server (RuntimeError), a bad runtime_env or an oversized
                # working dir (ValueError/RuntimeError from the packaging step), unreadable files.
                msg = str(e)
                if "No available agent" in msg and time.monotonic() < agent_deadline:
                    print("the cluster's job agent is not up yet; retrying", file=out, flush=True)
                    time.sleep(AGENT_RETRY_S)
                    continue
                if wanted and "already" in msg.lower():
                    raise SubmitError(
                        f"job id {wanted!r} is already used on the cluster at {address}; pick another --job-id"
                    ) from None
                raise SubmitError(f"job submission to {address} failed: {msg}") from None
        print(f"submitted job {sid}: {entrypoint if attempt == 0 else retry_entrypoint}", file=out)
        print(f"follow its logs: ray job logs --follow {sid} --address {address}", file=out)
        print("  (the ray CLI needs RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH=<token file>)", file=out, flush=True)
        if not follow:
            return sid
        status = _wait_for(client, sid, address, source, timeout_s, out)
        if status == "SUCCEEDED":
            return sid
        if status == "FAILED" and attempt + 1 < attempts:
            print(f"job {sid} FAILED; retrying ({attempt + 1}/{max_retries})", file=out, flush=True)
            continue
        break
    tail = _log_tail(client, sid, address, source) if sid else ""
    if tail:
        print(f"--- last {LOG_TAIL_LINES} log lines of {sid} ---\n{tail}", file=sys.stderr)
    raise SubmitError(f"job {sid} ended {status}; see `ray job logs {sid} --address {address}`")


# ---------------------------------------------------------------------------------------
# CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="divcfg submit",
        description="Submit `divcfg train [overrides]` to a Ray cluster via the Jobs API.",
        epilog="Example: divcfg submit world.size=small run.dir=/mnt/shared/runs/exp1 "
        "--address http://127.0.0.1:8265 --token-file ~/.ray/auth_token --wait",
    )
    p.add_argument("overrides", nargs="*", help="Hydra overrides passed to `divcfg train`")
    p.add_argument("--address", default=DEFAULT_ADDRESS,
                   help=f"dashboard URL http(s)://host:port (default {DEFAULT_ADDRESS}, i.e. a port-forward)")
    p.add_argument("--token-file", default=None,
                   help="file holding the cluster token (default: $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token)")
    p.add_argument("--working-dir", default=".", help="local directory uploaded as the job's working dir (default .)")
    p.add_argument("--no-working-dir", dest="working_dir", action="store_const", const=None,
                   help="upload nothing; run the code baked into the cluster image")
    p.add_argument("--env", action="append", default=[], metavar="K=V", help="environment variable for the job (repeatable)")
    p.add_argument("--pip", action="append", default=[], metavar="PKG", help="extra pip requirement for the job (repeatable)")
    p.add_argument("--job-id", default=None, help="submission id (default: generated by Ray)")
    p.add_argument("--wait", action="store_true", help="follow the job until it finishes; exit non-zero unless it succeeds")
    p.add_argument("--max-retries", type=int, default=0, help="resubmit a FAILED job up to N times (implies --wait)")
    p.add_argument("--learner-gpus", type=float, default=0,
                   help="GPUs for the driver, which runs the learner (Ray entrypoint_num_gpus; default 0)")
    p.add_argument("--learner-resource", action="append", default=[], metavar="NAME=AMOUNT",
                   help="custom resource the driver's node must have, e.g. learner_node=1 (repeatable)")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds to wait for each attempt with --wait (default: no limit)")
    return p


def main(argv: list[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    # Hydra overrides and options may be mixed; everything after "--" is an override.
    tail: list[str] = []
    if "--" in args_list:
        i = args_list.index("--")
        args_list, tail = args_list[:i], args_list[i + 1:]
    try:
        args = parser.parse_intermixed_args(args_list)
    except SystemExit as e:  # argparse already printed the message
        return int(e.code or 0)
    overrides = [*args.overrides, *tail]
    try:
        env_vars = parse_env_pairs(args.env)
        job = submit(
            overrides,
            args.address,
            working_dir=args.working_dir,
            token_file=args.token_file,
            env_vars=env_vars,
            pip=args.pip or None,
            job_id=args.job_id,
            max_retries=args.max_retries,
            wait=args.wait,
            timeout_s=args.timeout if args.timeout is not None else float("inf"),
            learner_gpus=args.learner_gpus,
            learner_resources=parse_resource_pairs(args.learner_resource),
        )
    except SubmitError as e:
        print(f"divcfg submit: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("divcfg submit: interrupted (a submitted job keeps running on the cluster)", file=sys.stderr)
        return 130
    print(job)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
