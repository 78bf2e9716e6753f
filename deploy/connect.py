"""Joining a running Ray cluster by its GCS address, with errors that name the address and where the token came from.

Two failures of a bare ``ray.init(address=...)`` are checked here first, because Ray reports them badly:
  - nothing listens at the address: ``ray.init`` keeps retrying (Ray 2.60: still retrying when stopped at 10 min);
  - a missing or wrong token: without ``RAY_AUTH_MODE=token`` Ray sends no token at all, even when one is on disk,
    and a rejected token shows up only as "Failed to connect to Ray cluster" after about 20 s.
"""
from __future__ import annotations

import os
import socket

CONNECT_TIMEOUT_S = 3.0


class ClusterError(RuntimeError):
    """A cluster that cannot be joined, with a message fit for the user."""


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
    import ray
    from ray.exceptions import AuthenticationError

    from divcfg.deploy.submit import SubmitError, load_token

    if address != "auto":
        check_reachable(address)
    try:
        # The order Ray itself reads: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token.
        token, source = load_token()
    except SubmitError as e:
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
