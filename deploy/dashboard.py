"""Talking to a Ray dashboard through the Jobs SDK: a fast preflight, the client, and every SDK failure turned into a
:class:`~divcfg.deploy.job_request.SubmitError` that says what to check."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator, Mapping

import requests

from divcfg.deploy.job_request import SubmitError

# The preflight request must fail fast against an unreachable address; the Ray SDK's own
# requests carry no timeout, so we only hand over to it once the dashboard has answered.
CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 15.0
LOG_TAIL_LINES = 40


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
