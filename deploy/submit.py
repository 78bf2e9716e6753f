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
import re
import sys
import time

# The request (pure checks and builders) and the dashboard client live in their own modules; their public names are
# importable from here, as before the split.
from divcfg.deploy.dashboard import LOG_TAIL_LINES, _call, _log_tail, _make_client, _preflight
from divcfg.deploy.job_request import (  # noqa: F401
    DEFAULT_EXCLUDES,
    URI_UNSUPPORTED,
    SubmitError,
    build_entrypoint,
    build_runtime_env,
    check_run_paths,
    load_token,
    parse_env_pairs,
    validate_address,
)

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
POLL_INTERVAL_S = 5.0
# Right after a head starts, its dashboard answers before the node's job agent has registered, and a submission gets
# "No available agent to submit job, please try again later": retried for this long.
AGENT_WAIT_S = 120.0
AGENT_RETRY_S = 2.0
_TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


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


def _check_options(max_retries: int, timeout_s: float, job_id: str | None) -> None:
    if max_retries < 0:
        raise SubmitError(f"max_retries must be >= 0, got {max_retries}", exit_code=2)
    if timeout_s <= 0:
        raise SubmitError(f"timeout_s must be > 0, got {timeout_s}", exit_code=2)
    if job_id is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", job_id):
        raise SubmitError(f"bad job id {job_id!r}: use letters, digits, '_', '.', '-'", exit_code=2)


def _entrypoints(overrides: list[str]) -> tuple[str, str]:
    """The first attempt's entrypoint and a retry's. A retried attempt continues the failed one's newest checkpoint
    in run.dir (a fresh start would be refused there, since the failed attempt's checkpoints would be overwritten);
    an explicit run.resume is kept as given."""
    entrypoint = build_entrypoint(list(overrides))
    given_resume = any(o.split("=", 1)[0].lstrip("+") == "run.resume" for o in overrides)
    return entrypoint, entrypoint if given_resume else build_entrypoint([*overrides, "run.resume=auto"])


def _submit_attempt(client, address: str, source: str, out, **job) -> str:
    """``client.submit_job(**job)``, retried while the head's job agent is not up yet (for ``AGENT_WAIT_S``)."""
    wanted = job.get("submission_id")
    agent_deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            return _call(client.submit_job, address, source, **job)
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


def submit(overrides: list[str], address: str, *, working_dir: str | None = ".", token: str | None = None,
           token_file: str | None = None, env_vars: dict | None = None, pip: list[str] | None = None,
           job_id: str | None = None, max_retries: int = 0, wait: bool = False, timeout_s: float = 600) -> str:
    """Submit ``divcfg train <overrides>`` and return the submission id.

    With ``wait`` (implied by ``max_retries > 0``) follow the job until it ends; a FAILED
    job is resubmitted up to ``max_retries`` times as ``<job_id>-retry<N>`` with ``run.resume=auto`` (unless
    ``run.resume`` is given), so with ``run.dir`` on shared storage the new attempt resumes from the last checkpoint.
    ``timeout_s`` bounds each attempt's wait.  Returns the id of the last attempt.

    The driver is a light scheduler that needs no GPU: the learner is a group of Ray actors
    (``learner.placement=group``, the default), placed by ``learner.num_gpus`` and ``learner.resources`` among the
    overrides.
    """
    _check_options(max_retries, timeout_s, job_id)

    address = validate_address(address)
    entrypoint, retry_entrypoint = _entrypoints(overrides)
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
        sid = _submit_attempt(client, address, source, out, entrypoint=entrypoint if attempt == 0 else retry_entrypoint,
                              runtime_env=runtime_env, submission_id=wanted,
                              metadata={"divcfg.attempt": str(attempt), "divcfg.submitted_by": "divcfg submit"})
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
