"""The deploy files, validated offline (no Docker engine or cluster here): compose services, ports, volumes and
health checks; Prometheus scrapes the server's /metrics; the Grafana dashboard queries only exported metrics;
Kubernetes resources against the API schemas; the Dockerfile installs through the README's script."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from server.metrics import ServerMetrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def compose() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(ROOT / "docker-compose.yml")
    return data


def test_compose_services_ports_volumes_and_health_checks() -> None:
    c = compose()
    services = c["services"]
    assert set(services) == {"steerserve", "redis", "prometheus", "grafana"}
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"
    server = services["steerserve"]
    port = 8000  # vLLM's default port, and the one every deploy file names
    assert f"{port}:{port}" in server["ports"] and f"--port {port}" in server["entrypoint"][-1]
    assert "--host 0.0.0.0" in server["entrypoint"][-1] and server["restart"] == "unless-stopped"
    assert server["environment"]["STEERSERVE_REDIS_URL"] == "redis://redis:6379/0"
    assert server["depends_on"]["redis"]["condition"] == "service_healthy"
    assert f"http://127.0.0.1:{port}/health" in server["healthcheck"]["test"]
    redis = services["redis"]
    assert "--appendonly" in redis["command"] and redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    # every named volume is declared; every bind mount exists in the repository
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source
            else:
                assert source in c["volumes"], source
    assert any(v.startswith("redis-data:") for v in redis["volumes"])


def test_prometheus_scrapes_the_servers_metrics_endpoint() -> None:
    config = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    port = 8000
    assert job["static_configs"][0]["targets"] == [f"steerserve:{port}"]
    datasource = load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090" and "9090:9090" in compose()["services"]["prometheus"]["ports"]
    provider = load_yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "steerserve.yml")["providers"][0]
    mounts = compose()["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/steerserve.json:{provider['options']['path']}/steerserve.json:ro" in mounts


def test_promtool_accepts_the_prometheus_config() -> None:
    """`promtool check config` (Debian's prometheus package; scripts/install.sh --dev unpacks promtool)."""
    promtool = shutil.which("promtool") or str(ROOT / ".venv" / "tools" / "promtool")
    if not Path(promtool).exists():
        pytest.fail("promtool is missing: scripts/install.sh --dev installs it")
    done = subprocess.run(
        [promtool, "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0 and "SUCCESS" in done.stdout + done.stderr, done.stdout + done.stderr


def exported_series() -> set[str]:
    """Every series name the server's families expose (counters as *_total, histograms as _bucket/_sum/_count)."""
    registry = CollectorRegistry()
    ServerMetrics(registry)
    names: set[str] = set()
    for family in registry.collect():
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names.update(f"{family.name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(family.name)
    return names


def test_dashboard_queries_only_metrics_the_server_exports() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "steerserve.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    queried = {m for e in exprs for m in re.findall(r"steerserve:[a-z0-9_]+", e)}
    exported = exported_series()
    assert queried and queried <= exported, queried - exported
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("latency", "first token", "tokens/s", "steered share", "reflection rate", "tokens per response"):
        assert topic in titles, topic
    # reflection and tokens are broken down by preset and experiment arm
    assert any("by (preset, arm)" in e and "responses_with_reflection" in e for e in exprs)


def test_kubernetes_resources_validate_against_the_api_schemas() -> None:
    core = [DEPLOY / "k8s" / "steerserve.yaml", DEPLOY / "k8s" / "redis.yaml"]
    run = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", *map(str, core)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    kinds = [d["kind"] for path in core for d in yaml.safe_load_all(path.read_text())]
    assert sorted(kinds) == ["Deployment", "HorizontalPodAutoscaler", "Service", "Service", "StatefulSet"]
    deployment = next(d for d in yaml.safe_load_all(core[0].read_text()) if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert all(
        container[p]["httpGet"]["path"] == "/health" for p in ("startupProbe", "readinessProbe", "livenessProbe")
    )


def test_service_monitor_selects_the_service_and_scrapes_metrics() -> None:
    (monitor,) = yaml.safe_load_all((DEPLOY / "k8s" / "servicemonitor.yaml").read_text())
    service = next(
        d for d in yaml.safe_load_all((DEPLOY / "k8s" / "steerserve.yaml").read_text()) if d["kind"] == "Service"
    )
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["kind"] == "ServiceMonitor"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics" and endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}


def test_dockerfile_targets_install_through_the_readme_script() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = dict(re.findall(r"^FROM \S+ AS (\w+)\n(.*?)(?=^FROM |\Z)", text, flags=re.M | re.S))
    assert set(stages) == {"source", "cpu", "cuda"}
    for source in re.findall(r"^COPY (.+) \S+$", stages["source"], flags=re.M):
        for path in source.split():
            assert (ROOT / path).exists(), path
    for target in ("cpu", "cuda"):
        body = stages[target]
        assert "COPY --from=source /src ./" in body and f"RUN bash scripts/install.sh {target}" in body
        assert 'ENTRYPOINT ["steerserve", "serve", "--host", "0.0.0.0"' in body and "/health" in body
