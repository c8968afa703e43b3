"""The deployment files say what operators will run: one image, a compose stack and
Kubernetes manifests. Checked structurally here (the suite has no container engine);
`docker compose config` also runs where a compose plugin is installed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import kubernetes_validate
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from services.common.settings import Settings
from services.platform.cli import PROCESSES

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
SETTINGS = {name.upper() for name in Settings.model_fields}
SECRET_SETTINGS = {
    "JWT_SECRET",
    "SERVICE_TOKEN",
    "STAFF_PASSWORD",
    "PAYMENTS_API_KEY",
    "PAYMENTS_WEBHOOK_SECRET",
    "WECHAT_APP_SECRET",
    "DATABASE_URL",
    "CELERY_BROKER_URL",
}
APP_PROCESSES = {"gateway", "catalog", "orders", "leaders", "settlement", "worker", "beat"}


def _stages(dockerfile: str) -> list[list[str]]:
    stages: list[list[str]] = []
    for raw in dockerfile.replace("\\\n", " ").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        stages[-1].append(line)
    return stages


def test_one_multi_stage_non_root_image_with_a_healthcheck():
    stages = _stages((DEPLOY / "Dockerfile").read_text())
    assert len(stages) >= 2, "build tools must stay out of the runtime image"
    final = stages[-1]
    assert final[0].split()[1].endswith("-slim-bookworm")
    assert not any("build-essential" in line for line in final)
    users = [line.split()[1] for line in final if line.upper().startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert any(line.upper().startswith("HEALTHCHECK ") and "healthcheck" in line for line in final)
    entry = next(line for line in final if line.upper().startswith("ENTRYPOINT "))
    assert json.loads(entry.split(None, 1)[1]) == ["groupbuy"]
    cmd = json.loads(
        next(line for line in final if line.upper().startswith("CMD ")).split(None, 1)[1]
    )
    assert cmd[0] == "serve" and cmd[1] in PROCESSES
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".data", ".git"} <= set(ignored)


def test_the_package_the_image_installs_carries_migrations_and_the_payment_fake(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("groupbuy-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for svc in ("catalog", "orders", "leaders", "settlement"):
        assert f"services/{svc}/migrations/env.py" in names
        assert any(n.startswith(f"services/{svc}/migrations/versions/") for n in names)
    assert "services/platform/fakes/payments_server.py" in names
    assert "gateway/app.py" in names


# --- compose -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_runs_every_piece_with_its_infrastructure(compose):
    services = compose["services"]
    assert set(services) == APP_PROCESSES | {
        "postgres",
        "rabbitmq",
        "redis",
        "localstripe",
        "migrations",
        "flower",
    }
    for name in APP_PROCESSES:
        svc = services[name]
        assert svc["command"][:2] == ["serve", name]
        deps = svc["depends_on"]
        # nothing starts on a database the migrations have not finished with
        assert deps["migrations"] == {"condition": "service_completed_successfully"}
        assert deps["postgres"]["condition"] == "service_healthy"
        assert deps["rabbitmq"]["condition"] == "service_healthy"
        assert svc["healthcheck"]["test"] == ["CMD", "groupbuy", "healthcheck"]
        env = svc["environment"]
        assert (
            env["DATABASE_URL"].startswith("postgresql://")
            and "@postgres:5432/" in env["DATABASE_URL"]
        )
        assert (
            env["CELERY_BROKER_URL"].startswith("amqp://")
            and "@rabbitmq:5672/" in env["CELERY_BROKER_URL"]
        )
        assert env["PAYMENTS_API_BASE"] == "http://localstripe:8420"
        assert set(env) <= SETTINGS, set(env) - SETTINGS
    for peer in ("catalog", "orders", "leaders", "settlement"):
        assert services["gateway"]["depends_on"][peer] == {"condition": "service_healthy"}
        assert services["gateway"]["environment"][f"{peer.upper()}_URL"] == f"http://{peer}:8000"
    assert services["worker"]["environment"]["WORKER_METRICS_PORT"]


def test_compose_migrations_run_once_and_exit(compose):
    job = compose["services"]["migrations"]
    assert job["command"] == ["serve", "migrate"]
    assert job["restart"] == "no"
    assert job["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert job["healthcheck"] == {"disable": True}


def test_compose_infrastructure_is_healthchecked_and_private(compose):
    services = compose["services"]
    for name in ("postgres", "rabbitmq", "redis", "localstripe"):
        assert services[name]["healthcheck"]["test"], name
    assert services["localstripe"]["entrypoint"] == [
        "python",
        "-m",
        "services.platform.fakes.payments_server",
    ]
    assert services["flower"]["environment"]["CELERY_BROKER_URL"].startswith("amqp://")
    published = {name for name, svc in services.items() if svc.get("ports")}
    assert published == {"gateway", "flower"}
    assert services["beat"]["deploy"]["replicas"] == 1
    if shutil.which("docker") and (
        subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    ):
        done = subprocess.run(
            ["docker", "compose", "-f", str(DEPLOY / "compose.yaml"), "config", "--quiet"],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr


def test_env_example_names_only_real_settings_and_holds_no_secret():
    names = set()
    for raw in (DEPLOY / "env.example").read_text().splitlines():
        m = re.match(r"^#?\s*([A-Z][A-Z0-9_]+)=(.*)$", raw.strip())
        if m:
            names.add(m.group(1))
            if m.group(1) in SECRET_SETTINGS:
                assert raw.startswith("#"), f"{m.group(1)} must not hold a value in the repo"
    compose_only = {
        "POSTGRES_PASSWORD",
        "RABBITMQ_PASSWORD",
        "FLOWER_BASIC_AUTH",
        "GATEWAY_PUBLISH",
        "FLOWER_PUBLISH",
    }
    assert names - compose_only <= SETTINGS, names - compose_only - SETTINGS
    assert {"JWT_SECRET", "SERVICE_TOKEN", "PAYMENTS_WEBHOOK_SECRET"} <= names


# --- Kubernetes ----------------------------------------------------------------------------


def _k8s_docs() -> list[tuple[str, dict]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((path.name, doc))
    return out


def _of_kind(kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for _, d in _k8s_docs() if d["kind"] == kind}


def test_every_manifest_is_valid_kubernetes():
    docs = _k8s_docs()
    assert len(docs) > 20
    checked = 0
    for filename, doc in docs:
        if doc["kind"] == "Kustomization":
            continue
        try:
            kubernetes_validate.validate(doc, "1.30", strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{filename} {doc['kind']}/{doc['metadata']['name']}: {e.message}")
        checked += 1
    assert checked == len(docs) - 1


def test_kustomization_lists_every_manifest_but_the_per_release_job():
    (kust,) = _of_kind_kustomization()
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "migrate-job.yaml"}
    assert set(kust["resources"]) == files


def _of_kind_kustomization() -> list[dict]:
    return [d for _, d in _k8s_docs() if d["kind"] == "Kustomization"]


def test_deployments_probe_limit_and_take_settings_from_config_and_secret_refs():
    deployments = _of_kind("Deployment")
    assert set(deployments) == APP_PROCESSES
    for name, dep in deployments.items():
        pod = dep["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        (ctr,) = pod["containers"]
        assert ctr["args"][:2] == ["serve", name]
        res = ctr["resources"]
        assert {"cpu", "memory"} <= set(res["requests"]) and {"cpu", "memory"} <= set(res["limits"])
        refs = {next(iter(r)): next(iter(r.values()))["name"] for r in ctr["envFrom"]}
        assert refs == {"configMapRef": "groupbuy-config", "secretRef": "groupbuy-secrets"}
        if name not in ("worker", "beat"):
            assert ctr["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert ctr["livenessProbe"]["httpGet"]["path"] == "/healthz"
            assert ctr["ports"][0]["containerPort"] == 8000
    assert deployments["beat"]["spec"]["replicas"] == 1
    assert deployments["beat"]["spec"]["strategy"]["type"] == "Recreate"


def test_no_secret_value_lives_in_the_repo():
    assert "Secret" not in {d["kind"] for _, d in _k8s_docs()}
    (config,) = _of_kind("ConfigMap").values()
    assert not set(config["data"]) & SECRET_SETTINGS
    assert set(config["data"]) <= SETTINGS
    assert config["data"]["ENVIRONMENT"] == "production"
    assert config["data"]["DEV_IDENTITY_PROVIDER"] == "false"


def test_gateway_and_orders_autoscale_and_nothing_drains_to_zero():
    hpas = _of_kind("HorizontalPodAutoscaler")
    deployments = _of_kind("Deployment")
    assert {h["spec"]["scaleTargetRef"]["name"] for h in hpas.values()} == {"gateway", "orders"}
    for hpa in hpas.values():
        target = deployments[hpa["spec"]["scaleTargetRef"]["name"]]
        assert hpa["spec"]["minReplicas"] >= 2
        # the autoscaler owns the count: an apply must not reset it
        assert "replicas" not in target["spec"]
    pdbs = _of_kind("PodDisruptionBudget")
    assert set(pdbs) == APP_PROCESSES - {"beat"}
    for pdb in pdbs.values():
        assert pdb["spec"]["minAvailable"] >= 1


def test_migration_job_runs_migrate_once():
    (job,) = _of_kind("Job").values()
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["containers"][0]["args"] == ["serve", "migrate"]
    assert job["spec"]["backoffLimit"] >= 1


def test_network_policy_lets_only_the_gateway_and_peers_reach_the_services():
    policies = _of_kind("NetworkPolicy")
    deny = policies["default-deny-ingress"]["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress"]}
    svc = policies["services-from-gateway-and-peers"]["spec"]
    assert svc["podSelector"] == {"matchLabels": {"app.kubernetes.io/component": "service"}}
    (rule,) = svc["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8000}]
    sources = [s.get("podSelector", {}).get("matchLabels") for s in rule["from"]]
    assert {"app.kubernetes.io/name": "gateway"} in sources
    # no ipBlock and no open namespace: the internet and other tenants stay out
    for s in rule["from"]:
        assert "ipBlock" not in s
        if "namespaceSelector" in s:
            assert s["namespaceSelector"]["matchLabels"] == {
                "kubernetes.io/metadata.name": "monitoring"
            }
    deployments = _of_kind("Deployment")
    services_labelled = {
        n
        for n, d in deployments.items()
        if d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component")
        == "service"
    }
    assert services_labelled == {"catalog", "orders", "leaders", "settlement"}


# --- the dashboard -----------------------------------------------------------------------


def test_dashboard_queries_only_metrics_the_processes_export(ops_platform, ops_api):
    dash = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert len(exprs) >= 8
    used = set()
    for e in exprs:
        used |= set(re.findall(r"\b(groupbuy_[a-z_]+)", e))
    exported = set()
    urls = [f"{ops_platform.gateway_url}/metrics", ops_platform.worker_metrics_url]
    urls += [f"{ops_platform.service_url(s)}/metrics" for s in ("orders", "settlement")]
    for url in urls:
        for family in text_string_to_metric_families(httpx.get(url, timeout=10).text):
            # a labelled metric not yet observed has a family but no samples
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}
            exported |= {s.name for s in family.samples}
            exported |= {family.name + x for x in suffixes.get(family.type, [""])}
    assert used <= exported, used - exported
