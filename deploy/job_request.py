"""What ``divcfg submit`` sends, checked before anything is sent: the dashboard address, the entrypoint, the run paths,
the runtime env (working dir, env vars, pip) and the token. Pure functions: no cluster needed."""
from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Mapping, Sequence
from urllib.parse import urlsplit

from divcfg.common.runtime import cluster

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

class SubmitError(RuntimeError):
    """A submission problem with a message fit for the user; ``exit_code`` for the CLI."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


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
    """Return ``(token, where it came from)`` (:func:`divcfg.common.runtime.cluster.load_token`), as a SubmitError."""
    try:
        return cluster.load_token(token, token_file, environ)
    except cluster.TokenError as e:
        raise SubmitError(str(e), exit_code=2) from None
