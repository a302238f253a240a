"""Every container in deploy/kubernetes/ passes the Pod Security "restricted" level, and
what issue 32 asked beyond it: a read-only root, cpu and memory limits, versioned images,
workers reachable only from the store (and Prometheus), no curl | sh in the Dockerfile.

The restricted rules are those of https://kubernetes.io/docs/concepts/security/pod-security-standards/
(baseline + restricted), checked on each pod template as the admission controller would.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "deploy" / "kubernetes"
# Volume types the restricted level allows.
ALLOWED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def _workloads() -> list[tuple[str, dict]]:
    found = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
                found.append((f"{path.name}:{doc['metadata']['name']}", doc))
    return found


WORKLOADS = _workloads()


def restricted_violations(pod: dict) -> list[str]:
    """Pure: what in a pod spec the Pod Security restricted level rejects."""
    problems = []
    pod_sc = pod.get("securityContext", {})
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            problems.append(f"{flag} is set")
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            problems.append(f"volume {volume['name']} is of type {sorted(kinds)}")
    containers = pod.get("containers", []) + pod.get("initContainers", [])
    for c in containers:
        sc = c.get("securityContext", {})
        name = c["name"]
        if sc.get("privileged"):
            problems.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            problems.append(f"{name}: capabilities do not drop ALL")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: adds capabilities {caps['add']}")
        if not sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")):
            problems.append(f"{name}: runAsNonRoot is not true")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            problems.append(f"{name}: runs as user 0")
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile is {seccomp!r}")
        for port in c.get("ports", []):
            if "hostPort" in port:
                problems.append(f"{name}: hostPort")
    return problems


def test_the_checker_catches_what_the_old_manifests_lacked():
    old = {
        "securityContext": {"runAsNonRoot": True, "runAsUser": 10001},
        "containers": [{"name": "c", "image": "x:latest"}],
        "volumes": [{"name": "h", "hostPath": {"path": "/"}}],
    }
    problems = restricted_violations(old)
    assert any("allowPrivilegeEscalation" in p for p in problems)
    assert any("drop ALL" in p for p in problems)
    assert any("seccompProfile" in p for p in problems)
    assert any("hostPath" in p for p in problems)


@pytest.mark.parametrize(("where", "workload"), WORKLOADS, ids=[w for w, _ in WORKLOADS])
def test_every_container_is_restricted(where, workload):
    pod = workload["spec"]["template"]["spec"]
    assert restricted_violations(pod) == [], where
    for c in pod["containers"]:
        sc = c["securityContext"]
        assert sc.get("readOnlyRootFilesystem") is True, c["name"]
        limits = c.get("resources", {}).get("limits", {})
        assert "cpu" in limits and "memory" in limits, c["name"]
        requests = c.get("resources", {}).get("requests", {})
        assert "cpu" in requests and "memory" in requests, c["name"]
        image = c["image"]
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        assert ("@sha256:" in image or tag) and tag != "latest", image
        # A read-only root needs somewhere to write temporary files.
        mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
        assert "/tmp" in mounts, c["name"]


def test_only_the_store_and_prometheus_reach_the_workers():
    docs = [
        d
        for d in yaml.safe_load_all((MANIFESTS / "networkpolicy.yaml").read_text())
        if d and d["metadata"]["name"] == "model-swap-worker"
    ]
    (policy,) = docs
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "worker"
    assert spec["policyTypes"] == ["Ingress"]
    (rule,) = spec["ingress"]
    sources = rule["from"]
    store = [s for s in sources if "namespaceSelector" not in s]
    assert store == [
        {
            "podSelector": {
                "matchLabels": {
                    "app.kubernetes.io/name": "model-swap",
                    "app.kubernetes.io/component": "store",
                }
            }
        }
    ]
    assert all(s.get("podSelector") for s in sources)  # never a whole namespace
    assert "networkpolicy.yaml" in (MANIFESTS / "kustomization.yaml").read_text()


def test_the_dockerfile_pipes_nothing_into_a_shell():
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert not any("| sh" in line or "|sh" in line or "| bash" in line for line in lines)
    assert "curl" not in "\n".join(lines)


def test_the_namespace_enforces_the_restricted_level():
    namespace = yaml.safe_load((MANIFESTS / "namespace.yaml").read_text())
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
