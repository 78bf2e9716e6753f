"""Structure and security checks for everything under deploy/ (no cluster, no network)."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

from divcfg.deploy import security  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
KUBERAY = DEPLOY / "kuberay"

# Field names of the ray.io/v1 CRDs (KubeRay v1.6.2 API reference), to catch typos that
# `kubectl apply` would reject.
RAYCLUSTER_SPEC_KEYS = {
    "upgradeStrategy", "authOptions", "suspend", "managedBy", "autoscalerOptions",
    "headServiceAnnotations", "enableInTreeAutoscaling", "gcsFaultToleranceOptions",
    "headGroupSpec", "rayVersion", "workerGroupSpecs",
}
HEAD_GROUP_KEYS = {"template", "headService", "enableIngress", "resources", "labels", "rayStartParams", "serviceType"}
WORKER_GROUP_KEYS = {
    "suspend", "groupName", "replicas", "minReplicas", "maxReplicas", "idleTimeoutSeconds",
    "resources", "labels", "rayStartParams", "template", "scaleStrategy", "numOfHosts",
}
AUTOSCALER_KEYS = {
    "resources", "image", "imagePullPolicy", "securityContext", "idleTimeoutSeconds",
    "upscalingMode", "version", "env", "envFrom", "volumeMounts",
}
RAYJOB_SPEC_KEYS = {
    "activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata",
    "clusterSelector", "submitterConfig", "managedBy", "deletionStrategy", "entrypoint",
    "runtimeEnvYAML", "jobId", "submissionMode", "entrypointResources", "entrypointNumCpus",
    "entrypointNumGpus", "ttlSecondsAfterFinished", "preRunningDeadlineSeconds",
    "shutdownAfterJobFinishes", "suspend",
}
TOKEN_SECRET = "divcfg-ray-token"


def _yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


def _load(path: Path) -> list:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def _one(path: Path, kind: str) -> dict:
    docs = [d for d in _load(path) if d.get("kind") == kind]
    assert len(docs) == 1, f"{path}: expected one {kind}, got {len(docs)}"
    return docs[0]


# ----------------------------------------------------------------------------- parsing


def test_deploy_has_the_expected_files():
    for rel in ("cluster.yaml", "kuberay/raycluster.yaml", "kuberay/rayjob.yaml", "Dockerfile",
                "README.md", "submit.py", "security.py"):
        assert (DEPLOY / rel).is_file(), rel


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_parses(path):
    docs = _load(path)
    assert docs, f"{path} holds no YAML document"
    for d in docs:
        assert isinstance(d, dict), f"{path}: top-level document is {type(d).__name__}"


# ----------------------------------------------------------------------------- cluster.yaml


def test_cluster_yaml_structure():
    cfg = _load(DEPLOY / "cluster.yaml")[0]
    assert cfg["provider"]["type"] in ("aws", "gcp")
    types = cfg["available_node_types"]
    head = cfg["head_node_type"]
    assert head in types
    assert cfg["docker"]["image"].split("/")[-1] == "divcfg:latest"

    workers = {k: v for k, v in types.items() if k != head}
    assert workers
    for name, t in workers.items():
        assert isinstance(t.get("min_workers"), int) and isinstance(t.get("max_workers"), int), name
        assert 0 <= t["min_workers"] <= t["max_workers"], name
    assert cfg["max_workers"] >= sum(t["max_workers"] for t in workers.values())

    # A rollout group of 1-GPU instances and a bigger learner node type.
    gpus = {"g5.xlarge": 1, "g5.2xlarge": 1, "g5.4xlarge": 1, "g6.2xlarge": 1, "g5.12xlarge": 4,
            "g5.48xlarge": 8, "p4d.24xlarge": 8, "p5.48xlarge": 8}
    counts = {n: gpus.get(t["node_config"].get("InstanceType"), 0) for n, t in workers.items()}
    assert any(c == 1 and workers[n]["max_workers"] > 1 for n, c in counts.items()), counts
    assert max(counts.values()) > 1, counts
    assert gpus.get(types[head]["node_config"]["InstanceType"], 0) == 0, "head should be a CPU node"


def test_cluster_yaml_matches_ray_schema():
    jsonschema = pytest.importorskip("jsonschema")
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = _load(DEPLOY / "cluster.yaml")[0]
    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    jsonschema.validate(cfg, json.loads(schema_path.read_text()))
    validate_config(prepare_config(cfg))  # Ray's own check after filling defaults


def test_cluster_yaml_token_auth_and_local_dashboard():
    cfg = _load(DEPLOY / "cluster.yaml")[0]
    run_opts = " ".join(cfg["docker"]["run_options"])
    assert "RAY_AUTH_MODE=token" in run_opts
    head_start = " ".join(cfg["head_start_ray_commands"])
    worker_start = " ".join(cfg["worker_start_ray_commands"])
    for cmds in (head_start, worker_start):
        assert "RAY_AUTH_MODE=token" in cmds
        assert "RAY_AUTH_TOKEN_PATH=" in cmds
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "0.0.0.0" not in head_start
    # The token file comes from outside the repository, at the path RAY_AUTH_TOKEN_PATH names.
    mounts = cfg["file_mounts"]
    assert "/home/ray/.ray/auth_token" in mounts
    local = mounts["/home/ray/.ray/auth_token"]
    assert local.startswith("~") or os.path.isabs(local)
    assert not Path(os.path.expanduser(local)).resolve().is_relative_to(REPO)


# ----------------------------------------------------------------------------- KubeRay


def _containers(template: dict) -> list[dict]:
    return template["spec"]["containers"]


def _assert_token_env(env: list[dict], where: str) -> None:
    by_name = {e["name"]: e for e in env}
    assert by_name.get("RAY_AUTH_MODE", {}).get("value") == "token", where
    tok = by_name.get("RAY_AUTH_TOKEN")
    assert tok is not None, f"{where}: RAY_AUTH_TOKEN missing"
    assert "value" not in tok, f"{where}: RAY_AUTH_TOKEN must come from a Secret"
    ref = tok["valueFrom"]["secretKeyRef"]
    assert ref["name"] == TOKEN_SECRET and ref["key"], where


def _check_cluster_spec(spec: dict, where: str) -> None:
    assert set(spec) <= RAYCLUSTER_SPEC_KEYS, f"{where}: unknown keys {set(spec) - RAYCLUSTER_SPEC_KEYS}"
    assert spec["enableInTreeAutoscaling"] is True
    assert set(spec["autoscalerOptions"]) <= AUTOSCALER_KEYS
    _assert_token_env(spec["autoscalerOptions"]["env"], f"{where} autoscaler")
    assert spec["authOptions"] == {"mode": "token", "secretName": TOKEN_SECRET}

    head = spec["headGroupSpec"]
    assert set(head) <= HEAD_GROUP_KEYS
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"
    assert not head.get("enableIngress", False)
    assert all(isinstance(v, str) for v in head["rayStartParams"].values()), "rayStartParams values are strings"
    for c in _containers(head["template"]):
        _assert_token_env(c["env"], f"{where} head")
        assert "nvidia.com/gpu" not in c["resources"].get("limits", {}), "head is a CPU pod"
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        assert ports.get("dashboard") == 8265
        assert not any("hostPort" in p for p in c.get("ports", [])), "no hostPort on the head"

    groups = spec["workerGroupSpecs"]
    gpu_groups = {}
    for g in groups:
        assert set(g) <= WORKER_GROUP_KEYS, f"{where}: unknown keys {set(g) - WORKER_GROUP_KEYS}"
        assert 0 <= g["minReplicas"] <= g.get("replicas", g["minReplicas"]) <= g["maxReplicas"], g["groupName"]
        assert all(isinstance(v, str) for v in g.get("rayStartParams", {}).values())
        for c in _containers(g["template"]):
            _assert_token_env(c["env"], f"{where} {g['groupName']}")
            lim = c["resources"]["limits"]
            if "nvidia.com/gpu" in lim:
                assert c["resources"]["requests"].get("nvidia.com/gpu") == lim["nvidia.com/gpu"]
                gpu_groups[g["groupName"]] = (int(lim["nvidia.com/gpu"]), g["maxReplicas"])
    assert any(n == 1 and mx > 1 for n, mx in gpu_groups.values()), f"no 1-GPU rollout group: {gpu_groups}"
    assert any(n > 1 for n, _ in gpu_groups.values()), f"no multi-GPU learner group: {gpu_groups}"

    # Every Ray pod mounts the shared checkpoint volume at /mnt/shared.
    for tmpl in [head["template"], *(g["template"] for g in groups)]:
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
                  for v in tmpl["spec"]["volumes"] if "persistentVolumeClaim" in v}
        mounts = {m["mountPath"]: m["name"] for c in _containers(tmpl) for m in c.get("volumeMounts", [])}
        assert mounts.get("/mnt/shared") in claims, f"{where}: /mnt/shared not mounted from a PVC"


def test_raycluster_structure():
    rc = _one(KUBERAY / "raycluster.yaml", "RayCluster")
    assert rc["apiVersion"] == "ray.io/v1"
    assert rc["spec"]["rayVersion"].startswith("2.60")
    _check_cluster_spec(rc["spec"], "raycluster.yaml")


def test_rayjob_structure():
    job = _one(KUBERAY / "rayjob.yaml", "RayJob")
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    assert set(spec) <= RAYJOB_SPEC_KEYS, set(spec) - RAYJOB_SPEC_KEYS
    entry = spec["entrypoint"].split()
    assert entry[:2] == ["divcfg", "train"]
    assert "world.size=small" in entry
    assert any(a.startswith("run.dir=/mnt/shared/runs/") for a in entry)
    assert "run.resume=auto" in entry  # a whole-job retry continues the run instead of being refused
    # The learner group is placed by overrides on the node type that advertises learner_node; the driver reserves
    # nothing (no entrypoint GPUs: it stays on the CPU head).
    assert "learner.num_gpus=1" in entry and "+learner.resources.learner_node=1" in entry
    assert "entrypointNumGpus" not in spec
    advertised = [g.get("resources", {}) for g in spec["rayClusterSpec"]["workerGroupSpecs"]]
    assert any("learner_node" in r for r in advertised), advertised
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["backoffLimit"], int) and spec["backoffLimit"] >= 1
    yaml.safe_load(spec.get("runtimeEnvYAML", "{}"))  # must itself be YAML
    for c in spec["submitterPodTemplate"]["spec"]["containers"]:
        _assert_token_env(c["env"], "rayjob submitter")
    _check_cluster_spec(spec["rayClusterSpec"], "rayjob.yaml")


def test_shared_pvc_is_rwx():
    pvc = _one(KUBERAY / "shared-pvc.yaml", "PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == "divcfg-shared"
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]


def test_dockerfile():
    text = (DEPLOY / "Dockerfile").read_text()
    froms = [ln.split()[1] for ln in text.splitlines() if ln.startswith("FROM ")]
    assert froms, "no FROM"
    assert "rayproject/ray:2.60.0-py311-gpu" in text
    assert "pip install" in text and " ." in text
    users = [ln.split()[1] for ln in text.splitlines() if ln.startswith("USER ")]
    assert users and users[-1] not in ("root", "0", "0:0"), "image must end as a non-root user"
    assert "RAY_AUTH_TOKEN=" not in text and "ARG RAY_AUTH_TOKEN" not in text
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    assert ignore[[i for i, ln in enumerate(ignore) if ln and not ln.startswith("#")][0]] == "*"


def test_readme_covers_the_workflow():
    text = (DEPLOY / "README.md").read_text()
    for needle in ("ray up", "ray dashboard", "kubectl port-forward svc/", "8265:8265",
                   "kubectl create secret generic", "divcfg submit", "--address http://127.0.0.1:8265",
                   "ray job submit", "--working-dir", "backoffLimit", "s3://", "RAY_AUTH_MODE=token"):
        assert needle in text, needle


# ----------------------------------------------------------------------------- security


def test_deploy_tree_has_no_security_findings():
    findings = security.check_path(DEPLOY)
    assert not findings, "\n" + security.format_findings(findings)


def _bad_files(tmp_path: Path) -> dict[str, tuple[str, str]]:
    tok = secrets.token_hex(32)  # generated, so no literal token lives in the repository
    b64 = secrets.token_urlsafe(32)
    return {
        "env.sh": (f"export RAY_AUTH_TOKEN={tok}\n", "literal-token"),
        "docker.txt": (f"FROM x\nENV RAY_AUTH_TOKEN {tok}\n", "literal-token"),
        "k8s-env.yaml": (f"env:\n  - name: RAY_AUTH_TOKEN\n    value: \"{tok}\"\n", "literal-token"),
        "secret-key.yaml": (f"stringData:\n  token: {b64}\n", "literal-token"),
        "curl.md": (f"curl -H 'Authorization: Bearer {b64}' http://127.0.0.1:8265/api/jobs/\n", "literal-token"),
        "secret.yaml": ("apiVersion: v1\nkind: Secret\nmetadata:\n  name: t\nstringData:\n  auth_token: hunter2\n",
                        "secret-manifest"),
        "open.yaml": ("head_start_ray_commands:\n  - ray start --head --dashboard-host=0.0.0.0\n", "open-dashboard"),
        "open-kuberay.yaml": ("rayStartParams:\n  dashboard-host: '0.0.0.0'\n", "open-dashboard"),
        "lb.yaml": ("headGroupSpec:\n  serviceType: LoadBalancer\n", "public-service"),
    }


def test_checker_catches_bad_files(tmp_path):
    for name, (text, rule) in _bad_files(tmp_path).items():
        f = tmp_path / name
        f.write_text(text)
        findings = security.check_path(f)
        assert any(x.rule == rule for x in findings), f"{name}: expected {rule}, got {findings}"
        # Findings never repeat the secret itself.
        for x in findings:
            for word in text.split():
                if len(word) >= 32:
                    assert word.strip("'\"") not in str(x)
    # ... and a whole directory holding one bad file fails too.
    findings = security.check_path(tmp_path)
    assert {x.rule for x in findings} >= {"literal-token", "secret-manifest", "open-dashboard", "public-service"}


def test_checker_accepts_references_and_authenticated_binding(tmp_path):
    ok = tmp_path / "ok.yaml"
    ok.write_text(
        "env:\n"
        "  - name: RAY_AUTH_MODE\n    value: token\n"
        "  - name: RAY_AUTH_TOKEN\n    valueFrom:\n      secretKeyRef:\n        name: divcfg-ray-token\n        key: auth_token\n"
        "rayStartParams:\n  dashboard-host: '0.0.0.0'\n"
        "# kubectl create secret generic divcfg-ray-token --from-literal=auth_token=\"$(openssl rand -hex 32)\"\n"
        "# export RAY_AUTH_TOKEN=$(cat ~/.ray/auth_token)\n"
        "RAY_AUTH_TOKEN_PATH: /home/ray/.ray/auth_token\n"
        "secretName: divcfg-ray-token\n"
        "token: <your-token>\n"
    )
    assert security.check_path(ok) == []


def test_checker_open_dashboard_needs_auth_in_same_file(tmp_path):
    (tmp_path / "a.yaml").write_text("rayStartParams:\n  dashboard-host: '0.0.0.0'\n")
    (tmp_path / "b.yaml").write_text("env:\n- name: RAY_AUTH_MODE\n  value: token\n")
    rules = [f.rule for f in security.check_path(tmp_path)]
    assert rules == ["open-dashboard"]


def test_checker_kuberay_auth_options_count_as_token_auth(tmp_path):
    f = tmp_path / "rc.yaml"
    f.write_text("spec:\n  authOptions:\n    secretName: s\n    mode: token\n  headGroupSpec:\n"
                 "    rayStartParams:\n      dashboard-host: '0.0.0.0'\n")
    assert security.check_path(f) == []
    f.write_text(f.read_text().replace("mode: token", "mode: disabled"))
    assert [x.rule for x in security.check_path(f)] == ["open-dashboard"]


def test_checker_is_fast_on_pathological_input():
    import time

    texts = ["x: " + "a" * 200_000, "k: " + ("token" + "a" * 60) * 2000, secrets.token_urlsafe(100_000),
             "authOptions:\n" + "  foo: bar\n" * 20_000, "kind: Secret\ndata: {" + " " * 50_000]
    t0 = time.monotonic()
    for t in texts:
        security.check_text(t)
    assert time.monotonic() - t0 < 3
