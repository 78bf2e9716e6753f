"""Joining a running Ray cluster by its GCS address, with errors that name the address and where the token came from.

Two failures of a bare ``ray.init(address=...)`` are checked here first, because Ray reports them badly:
  - nothing listens at the address: ``ray.init`` keeps retrying (Ray 2.60: still retrying when stopped at 10 min);
  - a missing or wrong token: without ``RAY_AUTH_MODE=token`` Ray sends no token at all, even when one is on disk,
    and a rejected token shows up only as "Failed to connect to Ray cluster" after about 20 s.
"""
from __future__ import annotations

import os
import socket
import stat
import sys
from pathlib import Path
from typing import Mapping

CONNECT_TIMEOUT_S = 3.0


class ClusterError(RuntimeError):
    """A cluster that cannot be joined, with a message fit for the user."""


class TokenError(ClusterError):
    """A Ray auth token that is missing, unreadable or malformed; the message names where it was looked for."""


def gcs_endpoint(address: str) -> tuple[str, int]:
    """``(host, port)`` of a GCS address ``host:port`` or a Ray Client address ``ray://host:port``."""
    raw = (address or "").strip()
    if raw.startswith(("http://", "https://")):
        raise ClusterError(f"address {raw!r} is a dashboard URL (what `divcfg submit` takes); this needs the "
                           "cluster's GCS address host:port (default port 6379) or ray://host:10001")
    hostport = raw[len("ray://"):] if raw.startswith("ray://") else raw
    host, sep, port = hostport.rpartition(":")
    host = host.strip("[]")  # IPv6 literals come bracketed
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ClusterError(f"bad cluster address {raw!r}: expected host:port (e.g. 10.0.0.5:6379) or ray://host:port")
    return host, int(port)


def check_reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """A TCP connection to the address within ``timeout_s``, or a :class:`ClusterError` naming it."""
    host, port = gcs_endpoint(address)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise ClusterError(f"cannot reach the Ray cluster at {address!r} ({reason}); is it up, and is this its "
                           "GCS address (head port, default 6379)? From outside the cluster, port-forward it "
                           "first") from None


def connect(address: str, **init_kwargs) -> None:
    """``ray.init(address=address, **init_kwargs)`` after the checks above. ``address="auto"`` (the cluster this
    machine is part of) skips the reachability check."""
    import ray  # start-up: ray takes ~1.1 s to import; the plain classes here run without it
    from ray.exceptions import AuthenticationError

    if address != "auto":
        check_reachable(address)
    try:
        # The order Ray itself reads: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token.
        token, source = load_token()
    except TokenError as e:
        raise ClusterError(str(e)) from None
    if token is not None:
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    try:
        ray.init(address=address, **init_kwargs)
    except AuthenticationError:
        raise ClusterError(f"the Ray cluster at {address!r} requires a token and none was found: set "
                           "RAY_AUTH_TOKEN_PATH to the token file (or RAY_AUTH_TOKEN), or put it in "
                           "~/.ray/auth_token") from None
    except ConnectionError as e:
        hint = (f"the cluster is reachable, so the usual cause is a token it does not accept (used: {source})"
                if token is not None else "no token was found; if the cluster uses token authentication, set "
                "RAY_AUTH_TOKEN_PATH")
        raise ClusterError(f"cannot join the Ray cluster at {address!r}: {hint} ({e})") from None


def _read_token_file(path: str, what: str) -> str:
    p = Path(path).expanduser()
    if not p.exists():
        raise TokenError(f"token file {p} ({what}) does not exist")
    if p.is_dir():
        raise TokenError(f"token file {p} ({what}) is a directory")
    try:
        mode = p.stat().st_mode
        # Pipes such as --token-file <(kubectl get secret ...) are fine; only warn for
        # regular files that others can read.
        if stat.S_ISREG(mode) and mode & (stat.S_IRWXG | stat.S_IRWXO):
            print(
                f"divcfg: warning: token file {p} is readable by group/others; "
                f"run `chmod 600 {p}`",
                file=sys.stderr,
            )
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise TokenError(f"cannot read token file {p} ({what}): {e.strerror}") from None
    except UnicodeDecodeError:
        raise TokenError(f"token file {p} ({what}) is not UTF-8 text") from None
    token = text.strip()
    if not token:
        raise TokenError(f"token file {p} ({what}) is empty")
    if any(c.isspace() for c in token):
        raise TokenError(f"token file {p} ({what}) must hold a single token on one line")
    return token


def load_token(
    token: str | None = None,
    token_file: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[str | None, str]:
    """Return ``(token, where it came from)``; the second item is safe to print.

    Order: explicit ``token`` argument, ``token_file``, ``$RAY_AUTH_TOKEN``,
    ``$RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``.  ``(None, "no token")`` when none.
    """
    env = os.environ if environ is None else environ
    if token is not None:
        t = token.strip()
        if not t or any(c.isspace() for c in t):
            raise TokenError("the token argument is empty or contains whitespace")
        return t, "the token argument"
    if token_file:
        return _read_token_file(token_file, "--token-file"), f"--token-file {Path(token_file).expanduser()}"
    env_token = env.get("RAY_AUTH_TOKEN", "").strip()
    if env_token:
        if any(c.isspace() for c in env_token):
            raise TokenError("$RAY_AUTH_TOKEN contains whitespace")
        return env_token, "$RAY_AUTH_TOKEN"
    env_path = env.get("RAY_AUTH_TOKEN_PATH", "").strip()
    if env_path:
        return _read_token_file(env_path, "$RAY_AUTH_TOKEN_PATH"), f"$RAY_AUTH_TOKEN_PATH={Path(env_path).expanduser()}"
    default = Path("~/.ray/auth_token").expanduser()
    if default.is_file():
        return _read_token_file(str(default), "default path"), str(default)
    return None, "no token"
