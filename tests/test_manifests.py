"""The Kubernetes manifests in deploy/kubernetes/: valid objects, wired to each other and
to the services' real settings. Offline: schemas ship with kubernetes-validate."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from inference_worker.config import DEFAULTS as WORKER_DEFAULTS
from inference_worker.config import WorkerSettings
from model_store_server.config import DEFAULTS as STORE_DEFAULTS
from model_store_server.config import StoreSettings
from model_swap.settings import SettingsError
from tests.conftest import recording_server

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "deploy" / "kubernetes"
# The newest Kubernetes whose schemas kubernetes-validate 1.37 ships.
KUBERNETES_VERSION = "1.37.0"
# The store's settings for several workers (issue 20), added beside WORKER_URL.
NEW_STORE_SETTINGS = {"WORKER_URLS", "HEALTH_INTERVAL", "DISCOVERY_INTERVAL", "REPLICATE_AFTER"}
GPU = "nvidia.com/gpu"


def _documents() -> list[tuple[str, dict]]:
    found = []
    for path in sorted(MANIFESTS.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                found.append((str(path.relative_to(MANIFESTS)), doc))
    return found


DOCUMENTS = _documents()
OBJECTS = [(name, doc) for name, doc in DOCUMENTS if doc["kind"] != "Kustomization"]


def _one(kind: str, name: str) -> dict:
    matches = [d for _, d in OBJECTS if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, (kind, name, len(matches))
    return matches[0]


@pytest.fixture
def statefulset() -> dict:
    return _one("StatefulSet", "model-swap-worker")


@pytest.fixture
def headless() -> dict:
    return _one("Service", "model-swap-worker")


@pytest.fixture
def store() -> dict:
    return _one("Deployment", "model-swap-store")


def _container(workload: dict) -> dict:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return container


def _configmap(workload: dict) -> dict[str, str]:
    (source,) = _container(workload)["envFrom"]
    return _one("ConfigMap", source["configMapRef"]["name"])["data"]


def _env(workload: dict) -> dict[str, dict]:
    return {e["name"]: e for e in _container(workload)["env"]}


def test_the_manifests_are_found():
    kinds = sorted(doc["kind"] for _, doc in DOCUMENTS)
    assert kinds == sorted(
        [
            "ConfigMap",
            "ConfigMap",
            "Deployment",
            "Kustomization",
            "Namespace",
            "NetworkPolicy",
            "NetworkPolicy",
            "PersistentVolumeClaim",
            "Secret",
            "Service",
            "Service",
            "StatefulSet",
        ]
    )


@pytest.mark.parametrize(
    "name, doc", OBJECTS, ids=[f"{n}:{d['kind']}/{d['metadata']['name']}" for n, d in OBJECTS]
)
def test_every_object_is_valid_for_kubernetes_in_strict_mode(name, doc):
    version = kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    assert version == "1.37"


def test_strict_validation_refuses_a_misspelt_field(statefulset):
    broken = yaml.safe_load(yaml.safe_dump(statefulset))
    broken["spec"]["serviceNam"] = broken["spec"].pop("serviceName")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_every_object_is_in_the_namespace_that_dns_names_use():
    (kustomization,) = [d for _, d in DOCUMENTS if d["kind"] == "Kustomization"]
    namespace = kustomization["namespace"]
    for _, doc in OBJECTS:
        if doc["kind"] == "Namespace":
            assert doc["metadata"]["name"] == namespace
        else:
            assert doc["metadata"]["namespace"] == namespace, doc["metadata"]["name"]


def test_the_kustomization_lists_every_manifest_but_the_example_secret():
    (kustomization,) = [d for _, d in DOCUMENTS if d["kind"] == "Kustomization"]
    top_level = {p.name for p in MANIFESTS.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(top_level)
    assert all(d["kind"] != "Secret" for n, d in OBJECTS if "/" not in n)


def test_the_statefulset_is_governed_by_the_headless_service(statefulset, headless):
    assert statefulset["spec"]["serviceName"] == headless["metadata"]["name"]
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is False


def test_selectors_match_the_pods_they_select(statefulset, headless, store):
    workers = statefulset["spec"]["template"]["metadata"]["labels"]
    assert headless["spec"]["selector"].items() <= workers.items()
    assert statefulset["spec"]["selector"]["matchLabels"].items() <= workers.items()
    stores = store["spec"]["template"]["metadata"]["labels"]
    store_service = _one("Service", "model-swap-store")
    assert store_service["spec"]["selector"].items() <= stores.items()
    assert store["spec"]["selector"]["matchLabels"].items() <= stores.items()
    # The store's Service must not also pick up workers, nor the workers' the store.
    assert not headless["spec"]["selector"].items() <= stores.items()
    assert not store_service["spec"]["selector"].items() <= workers.items()


def test_the_store_discovers_the_workers_through_the_headless_service(store, headless):
    namespace = headless["metadata"]["namespace"]
    name = headless["metadata"]["name"]
    assert (
        _configmap(store)["WORKER_URLS"] == f"dns+http://{name}.{namespace}.svc.cluster.local:8080"
    )
    assert [p["port"] for p in headless["spec"]["ports"]] == [8080]


def test_the_services_listen_on_every_interface_on_their_ports(store, statefulset):
    store_settings = _configmap(store)
    worker_settings = _configmap(statefulset)
    assert store_settings["STORE_HOST"] == "0.0.0.0"
    assert worker_settings["WORKER_HOST"] == "0.0.0.0"
    assert [p["containerPort"] for p in _container(store)["ports"]] == [
        int(store_settings["STORE_PORT"])
    ]
    assert [p["containerPort"] for p in _container(statefulset)["ports"]] == [
        int(worker_settings["WORKER_PORT"])
    ]
    assert int(worker_settings["WORKER_PORT"]) == 8080


def test_every_configmap_key_is_a_setting_of_its_service(store, statefulset):
    store_keys = set(_configmap(store))
    worker_keys = set(_configmap(statefulset))
    assert store_keys <= set(STORE_DEFAULTS) | NEW_STORE_SETTINGS, store_keys - set(STORE_DEFAULTS)
    assert worker_keys <= set(WORKER_DEFAULTS), worker_keys - set(WORKER_DEFAULTS)
    assert store_keys >= NEW_STORE_SETTINGS


def test_the_configmaps_values_are_accepted_by_the_services(store, statefulset):
    # The four new store settings are not read by this branch's store; the others are.
    StoreSettings.from_env(_configmap(store))
    WorkerSettings.from_env(_configmap(statefulset))


def test_secrets_reach_the_settings_that_read_them(store, statefulset):
    # The workers' DRAIN_KEYS is for the preStop hook (the store's API), not a worker setting;
    # the workers never receive the client keys.
    hook_only = {"DRAIN_KEYS"}
    for workload, settings, extra in (
        (store, STORE_DEFAULTS, set()),
        (statefulset, WORKER_DEFAULTS, hook_only),
    ):
        refs = {
            name: entry["valueFrom"]["secretKeyRef"]
            for name, entry in _env(workload).items()
            if "secretKeyRef" in entry.get("valueFrom", {})
        }
        assert "WORKER_TOKEN" in refs
        assert set(refs) <= set(settings) | extra, set(refs) - set(settings)
        for name, ref in refs.items():
            assert (ref["name"], ref["key"]) == ("model-swap-secrets", name)
    assert "DRAIN_KEYS" in _prestop_script(statefulset)
    assert "API_KEYS" not in _env(statefulset) and "ADMIN_KEYS" not in _env(statefulset)


def test_the_example_secrets_placeholders_stop_both_services():
    secret = _one("Secret", "model-swap-secrets")
    token = secret["stringData"]["WORKER_TOKEN"]
    assert "REPLACE" in token and "REPLACE" in secret["stringData"]["API_KEYS"]
    with pytest.raises(SettingsError, match="WORKER_TOKEN"):
        WorkerSettings.from_env({"WORKER_TOKEN": token})
    with pytest.raises(SettingsError, match="API_KEYS"):
        StoreSettings.from_env({"API_KEYS": secret["stringData"]["API_KEYS"]})


def test_liveness_asks_for_health_and_readiness_for_ready(store, statefulset):
    # /health: the process's loop answers (never queued); /ready: it can do its job.
    for workload in (store, statefulset):
        container = _container(workload)
        for probe, path in (("readinessProbe", "/ready"), ("livenessProbe", "/health")):
            assert container[probe]["httpGet"]["path"] == path, probe
            assert container[probe]["httpGet"]["port"] == "http"
        assert [p["name"] for p in container["ports"]] == ["http"]


def test_the_commands_are_the_projects_console_scripts(store, statefulset):
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert _container(store)["command"] == ["model-store-server"]
    assert _container(statefulset)["command"] == ["inference-worker"]
    assert {"model-store-server", "inference-worker"} <= set(scripts)


def test_one_store_replaced_not_rolled(store):
    assert store["spec"]["replicas"] == 1
    assert store["spec"]["strategy"]["type"] == "Recreate"


def test_each_worker_gets_a_gpu_and_its_own_cache_volume(statefulset):
    container = _container(statefulset)
    assert container["resources"]["requests"][GPU] == 1
    assert container["resources"]["limits"][GPU] == 1
    (template,) = statefulset["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[template["metadata"]["name"]] == _configmap(statefulset)["MODEL_CACHE_DIR"]


def test_the_store_mounts_its_models_volume_at_models_dir(store):
    pod = store["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in _container(store)["volumeMounts"]}
    (volume,) = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert mounts[volume["name"]] == _configmap(store)["MODELS_DIR"]
    claim = volume["persistentVolumeClaim"]["claimName"]
    assert _one("PersistentVolumeClaim", claim)


def _prestop_script(statefulset: dict) -> str:
    command = _container(statefulset)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:2] == ["python", "-c"]
    return command[2]


def test_the_workers_know_the_store_and_their_pod_ip(statefulset):
    env = _env(statefulset)
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    service = _one("Service", "model-swap-store")
    namespace = service["metadata"]["namespace"]
    port = service["spec"]["ports"][0]["port"]
    assert env["STORE_URL"]["value"] == (
        f"http://{service['metadata']['name']}.{namespace}.svc.cluster.local:{port}"
    )


def test_the_grace_period_covers_the_drain_and_the_shutdown(statefulset):
    hook_timeout = int(re.search(r"timeout=(\d+)", _prestop_script(statefulset)).group(1))
    grace = float(_configmap(statefulset)["SHUTDOWN_GRACE_SECONDS"])
    pod = statefulset["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= hook_timeout + grace


@pytest.fixture
def drain_recorder():
    """Stand-in for the store's ``POST /workers/{id}/drain``: records what the preStop hook
    sends."""
    with recording_server(b'{"drained": true}') as recorded:
        yield recorded


@pytest.mark.parametrize(
    "drain_key, authorization",
    [
        ("drain-key-0123456789", "Bearer drain-key-0123456789"),
        (None, None),
    ],
)
def test_the_prestop_hook_asks_the_store_to_drain_this_worker(
    statefulset, drain_recorder, drain_key, authorization
):
    url, seen = drain_recorder
    env = {"PATH": os.environ["PATH"], "STORE_URL": url, "POD_IP": "10.1.2.3"}
    if drain_key:
        env["DRAIN_KEYS"] = drain_key
    done = subprocess.run(
        [sys.executable, "-c", _prestop_script(statefulset)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    sent = [(path, headers.get("Authorization")) for path, headers in seen]
    assert sent == [("/workers/10.1.2.3:8080/drain", authorization)]
