"""A small secret/exposure linter for the deployment files.

``check_text`` and ``check_path`` are plain functions so a test can run them on the
real ``deploy/`` tree *and* on a deliberately bad temporary file.  They look for:

* ``literal-token``: a token-like key (``RAY_AUTH_TOKEN``, ``auth_token``, ``*_SECRET``,
  ``password`` ...) set to a long literal instead of a reference (``secretKeyRef``,
  ``$VAR``, ``$(cmd)``, ``{{ tmpl }}``, a file path, a ``<placeholder>``); the same for a
  Kubernetes ``env`` entry written as ``name: RAY_AUTH_TOKEN`` / ``value: ...``, and
  ``Authorization: Bearer <literal>``.
* ``secret-manifest``: a Kubernetes ``Secret`` manifest that carries ``data``/``stringData``
  (create secrets with ``kubectl create secret ...`` instead of committing them).
* ``open-dashboard``: the dashboard / jobs endpoint bound to ``0.0.0.0`` in a file that does
  not also turn token authentication on (``RAY_AUTH_MODE=token`` or KubeRay
  ``authOptions: {mode: token}``).
* ``public-service``: a Ray head service of type ``LoadBalancer``/``NodePort`` or
  ``enableIngress: true`` (the dashboard must stay behind port-forwarding).

Findings never repeat a secret: values are masked to their first four characters.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path
from typing import Iterable, Iterator

__all__ = ["Finding", "check_text", "check_path", "check_tree", "format_findings"]

# Files larger than this are not text configs; skip them.
_MAX_BYTES = 2_000_000
_SKIP_DIRS = {"__pycache__", ".git", ".venv", "node_modules", ".pytest_cache"}
_SKIP_SUFFIXES = {".pyc", ".pyo", ".so", ".png", ".jpg", ".jpeg", ".gif", ".wav", ".pt", ".safetensors"}

# Minimum length of a value that we consider a real credential rather than a short word.
MIN_SECRET_LEN = 16

_SECRET_WORD = r"(?:token|secret|passw(?:or)?d|api[_-]?key|access[_-]?key|private[_-]?key)"
# A key that *names* a secret reference rather than holding one (secretName, token_file,
# RAY_AUTH_TOKEN_PATH, secretKeyRef, auth_mode ...): never a literal credential.
_REFERENCE_KEY_SUFFIX = re.compile(
    r"(?i)(?:name|names|path|file|files|ref|mode|dir|header|prefix|type|kind|id|ids|source|"
    r"selector|env|var|len|length|count|limit|limits)$"
)
# key [:=] value on one line.  Horizontal whitespace only, so a key with an empty value
# (``secretKeyRef:``) never swallows the next line.
_KEY_VALUE = re.compile(
    r"""(?ix)
    (?<![A-Za-z0-9_.-])(?P<key>[A-Za-z0-9_.-]{0,64}""" + _SECRET_WORD + r"""[A-Za-z0-9_.-]{0,64})
    ["']?[ \t]*[:=][ \t]*
    (?P<quote>["']?)
    (?P<value>[^\s"',;}\]\)#]+)
    """
)
# Kubernetes env entry: "- name: RAY_AUTH_TOKEN" followed by "value: ..." on the next line.
_ENV_NAME_VALUE = re.compile(
    r"""(?ix)
    name:[ \t]*["']?(?P<key>[A-Za-z0-9_]{0,64}""" + _SECRET_WORD + r"""[A-Za-z0-9_]{0,64})["']?[ \t]*\r?\n
    [ \t]*(?:-[ \t]*)?value:[ \t]*(?P<quote>["']?)(?P<value>[^\s"'#]+)
    """
)
# Dockerfile legacy form: ENV RAY_AUTH_TOKEN value
_DOCKER_ENV = re.compile(
    r"(?im)^[ \t]*ENV[ \t]+(?P<key>[A-Za-z0-9_]{0,64}" + _SECRET_WORD + r"[A-Za-z0-9_]{0,64})[ \t]+(?P<value>[^\s=\"']+)[ \t]*$"
)
_BEARER = re.compile(r"(?i)bearer[ \t]+(?P<value>[A-Za-z0-9._~+/=-]{%d,})" % MIN_SECRET_LEN)
_CREDENTIAL_CHARS = re.compile(r"^[A-Za-z0-9+/=_.:~-]+$")
_PLACEHOLDER = re.compile(r"(?i)(?:replace|change[_-]?me|placeholder|redacted|your[_-]|example\.com|dummy)")

_DASHBOARD_OPEN = re.compile(
    r"""(?ix)
    (?:dashboard[-_]host|dashboard[-_]agent[-_]listen[-_]host|--host)
    ["']?[ \t]*(?:[:=]|[ \t])[ \t]*["']?0\.0\.0\.0
    """
)
_AUTH_MODE_TOKEN = re.compile(
    r"""(?ix)
    RAY_AUTH_MODE["']?[ \t]*[:=][ \t]*["']?token\b
    | name:[ \t]*["']?RAY_AUTH_MODE["']?[ \t]*\r?\n[ \t]*(?:-[ \t]*)?value:[ \t]*["']?token\b
    | --env[ \t]+["']?RAY_AUTH_MODE=token\b
    """
)
_PUBLIC_SERVICE = re.compile(
    r"(?im)^[ \t]*(?:serviceType|type):[ \t]*[\"']?(?P<kind>LoadBalancer|NodePort)\b"
)
_INGRESS_ON = re.compile(r"(?im)^[ \t]*enableIngress:[ \t]*true\b")
# A Kubernetes Secret with inline data.
_SECRET_KIND = re.compile(r"(?m)^kind:[ \t]*[\"']?Secret[\"']?[ \t]*$")
_SECRET_DATA = re.compile(r"(?m)^[ \t]*(?:data|stringData):[ \t]*(?:\{[ \t]*[^}\s][^}]*\}|\n[ \t]+\S)")


@dataclasses.dataclass(frozen=True)
class Finding:
    path: str
    line: int
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: [{self.rule}] {self.message}"


def _mask(value: str) -> str:
    return value[:4] + "…" if len(value) > 4 else "…"


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _is_reference(value: str) -> bool:
    """True for values that point at a secret instead of holding one."""
    v = value.strip()
    if not v:
        return True
    if any(marker in v for marker in ("$", "{{", "}}", "%(", "<", ">", "*")):
        return True
    if v.startswith(("/", "~", "./", "../", "file:", "secretKeyRef", "valueFrom")):
        return True
    if _PLACEHOLDER.search(v):
        return True
    if len(set(v)) <= 2:  # xxxxxxxxxxxxxxxx, ****************, 0000000000000000
        return True
    return False


def _looks_like_credential(value: str) -> bool:
    """A long, random-looking literal (hex, base64, url-safe token, uuid-ish)."""
    v = value.strip()
    if len(v) < MIN_SECRET_LEN or not _CREDENTIAL_CHARS.match(v):
        return False
    if _is_reference(v):
        return False
    has_digit = any(c.isdigit() for c in v)
    has_upper = any(c.isupper() for c in v)
    has_lower = any(c.islower() for c in v)
    if not (has_upper or has_lower):
        return False  # numbers (max_tokens: 4096000000000000) are not credentials
    # Identifier-like names (divcfg-ray-token, my_secret_name) have no digits and one case.
    if not has_digit and not (has_upper and has_lower) and not any(c in v for c in "+/="):
        return False
    # Dotted python/attribute paths (os.environ.get) are code, not credentials.
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+", v):
        return False
    return True


def _check_literal_tokens(text: str, path: str) -> Iterator[Finding]:
    seen: set[int] = set()
    for m in _ENV_NAME_VALUE.finditer(text):
        if _looks_like_credential(m.group("value")):
            line = _line_of(text, m.start("value"))
            seen.add(line)
            yield Finding(path, line, "literal-token",
                          f"env {m.group('key')} is set to a literal value ({_mask(m.group('value'))}); "
                          "use valueFrom.secretKeyRef or a token file")
    for m in [*_KEY_VALUE.finditer(text), *_DOCKER_ENV.finditer(text)]:
        key = m.group("key")
        if _REFERENCE_KEY_SUFFIX.search(key.rstrip("_-.")):
            continue
        value = m.group("value")
        if not _looks_like_credential(value):
            continue
        line = _line_of(text, m.start("value"))
        if line in seen:
            continue
        seen.add(line)
        yield Finding(path, line, "literal-token",
                      f"{key} holds a literal credential ({_mask(value)}); read it from a "
                      "Kubernetes Secret, a secret manager or a file outside the repository")
    for m in _BEARER.finditer(text):
        value = m.group("value")
        if not _looks_like_credential(value):
            continue
        line = _line_of(text, m.start("value"))
        if line in seen:
            continue
        seen.add(line)
        yield Finding(path, line, "literal-token",
                      f"Authorization header with a literal bearer token ({_mask(value)})")


def _kuberay_auth_options_on(text: str) -> bool:
    """``authOptions:`` followed, inside its indented block, by ``mode: token``."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^([ \t]*)authOptions:[ \t]*(?:#.*)?$", line)
        if not m:
            continue
        indent = len(m.group(1))
        for nxt in lines[i + 1:]:
            if not nxt.strip() or nxt.lstrip().startswith("#"):
                continue
            if len(nxt) - len(nxt.lstrip()) <= indent:
                break
            if re.match(r"^[ \t]*mode:[ \t]*[\"']?token[\"']?[ \t]*(?:#.*)?$", nxt):
                return True
    return False


def _token_auth_on(text: str) -> bool:
    return bool(_AUTH_MODE_TOKEN.search(text) or _kuberay_auth_options_on(text))


def _check_exposure(text: str, path: str) -> Iterator[Finding]:
    auth_on = _token_auth_on(text)
    if not auth_on:
        for m in _DASHBOARD_OPEN.finditer(text):
            yield Finding(path, _line_of(text, m.start()), "open-dashboard",
                          "dashboard/jobs endpoint bound to 0.0.0.0 without RAY_AUTH_MODE=token "
                          "in the same file; bind 127.0.0.1 or turn token auth on")
    for m in _PUBLIC_SERVICE.finditer(text):
        yield Finding(path, _line_of(text, m.start()), "public-service",
                      f"service type {m.group('kind')} exposes the Ray head outside the cluster; "
                      "keep ClusterIP and use kubectl port-forward")
    for m in _INGRESS_ON.finditer(text):
        yield Finding(path, _line_of(text, m.start()), "public-service",
                      "enableIngress: true publishes the dashboard; use kubectl port-forward")


def _check_secret_manifests(text: str, path: str) -> Iterator[Finding]:
    # Split into YAML documents textually so a comment mentioning "kind: Secret" in another
    # document does not count.
    offset = 0
    for doc in re.split(r"(?m)^---[ \t]*$", text):
        if _SECRET_KIND.search(doc):
            m = _SECRET_DATA.search(doc)
            if m:
                yield Finding(path, _line_of(text, offset + m.start()), "secret-manifest",
                              "Kubernetes Secret with inline data/stringData; create it with "
                              "`kubectl create secret generic ... --from-literal=auth_token=$(openssl rand -hex 32)`")
        offset += len(doc) + 3


def check_text(text: str, path: str = "<text>") -> list[Finding]:
    """All findings for one file's text (see the module docstring for the rules)."""
    findings: list[Finding] = []
    findings.extend(_check_literal_tokens(text, path))
    findings.extend(_check_exposure(text, path))
    findings.extend(_check_secret_manifests(text, path))
    findings.sort(key=lambda f: (f.path, f.line, f.rule))
    return findings


def _iter_files(root: Path) -> Iterator[Path]:
    if root.is_file():
        yield root
        return
    for p in sorted(root.rglob("*")):
        if any(part in _SKIP_DIRS for part in p.relative_to(root).parts):
            continue
        if p.is_file() and p.suffix not in _SKIP_SUFFIXES:
            yield p


def check_path(path: str | Path) -> list[Finding]:
    """Findings for a file, or for every text file under a directory."""
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"nothing to check at {root}")
    findings: list[Finding] = []
    for f in _iter_files(root):
        try:
            if f.stat().st_size > _MAX_BYTES:
                continue
            raw = f.read_bytes()
        except OSError:
            continue
        if b"\x00" in raw[:4096]:
            continue  # binary
        text = raw.decode("utf-8", errors="replace")
        findings.extend(check_text(text, str(f)))
    return findings


def check_tree(paths: Iterable[str | Path]) -> list[Finding]:
    out: list[Finding] = []
    for p in paths:
        out.extend(check_path(p))
    return out


def format_findings(findings: Iterable[Finding]) -> str:
    return "\n".join(str(f) for f in findings)


def main(argv: list[str] | None = None) -> int:

    args = sys.argv[1:] if argv is None else argv
    targets = args or [str(Path(__file__).resolve().parent)]
    findings = check_tree(targets)
    if findings:
        print(format_findings(findings), file=sys.stderr)
        return 1
    print(f"no findings in {', '.join(targets)}")
    return 0


if __name__ == "__main__":  # python -m divcfg.deploy.security [PATH ...]
    raise SystemExit(main())
