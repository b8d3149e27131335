"""deploy/ checked against the code, so that the two cannot drift apart unnoticed.

No Docker engine or cluster is needed: the files are read as text (PyYAML is not a dependency;
where it happens to be installed the YAML is also parsed fully) and compared with what the code
defines: settings, `nebula serve` flags, routes, Prometheus metric names. Each checker also has a
test of its own showing that it rejects a wrong input. `promtool`, when on PATH, checks the
rules, runs their unit tests and parses every dashboard query.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from click.testing import CliRunner

from nebula.cli.main import main as cli_main
from nebula.cli.server import serve
from nebula.config import DEFAULT_DB, DEFAULT_PAYLOAD_DIR, Settings, load_settings
from nebula.store.db import normalize_url
from nebula.web.app import create_app
from nebula.web.keys import METRICS
from tests.conftest import require_tools

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
RULES = DEPLOY / "prometheus" / "nebula-rules.yaml"
DASHBOARD = DEPLOY / "grafana" / "nebula-dashboard.json"
CLIENT_ENV = {"NEBULA_URL", "NEBULA_TOKEN", "NEBULA_CONFIG"}


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def find(pattern: str, text: str, group: int = 1) -> str:
    """The group of the first match of `pattern` (multi-line), failing the test if none."""
    m = re.search(pattern, text, re.M)
    assert m, f"no match for {pattern!r}"
    return m.group(group)


def deploy_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def app() -> web.Application:
    # Built, never started: no database is opened.
    return create_app(Settings(db="sqlite:///unused.db", payload_dir="unused"))


# ---------------------------------------------------------------------------------------------
# Helpers (each tested on a bad input below)


def known_series(app: web.Application) -> set[str]:
    """Every series name the app's /metrics can expose (counters' _created aside)."""
    names: set[str] = set()
    for family in app[METRICS].registry.collect():
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + s for s in ("_bucket", "_sum", "_count"))
        else:
            names.add(family.name)
    return names


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bnebula_[a-z0-9_]+", expr))


def unknown_metrics(exprs: list[str], known: set[str]) -> set[str]:
    return {name for e in exprs for name in metric_names(e)} - known


def yaml_values(text: str, key: str) -> list[str]:
    """The values of `key:` in a simple YAML text: inline scalars and `|`/`>` blocks (joined)."""
    lines = text.splitlines()
    pattern = re.compile(rf"^(\s*)(?:- )?{re.escape(key)}:\s*(.*)$")
    values = []
    i = 0
    while i < len(lines):
        m = pattern.match(lines[i])
        i += 1
        if not m:
            continue
        value = m.group(2).strip()
        if value[:1] in ("|", ">"):
            indent = len(m.group(1))
            block = []
            while i < len(lines) and (
                not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent
            ):
                block.append(lines[i].strip())
                i += 1
            value = " ".join(b for b in block if b)
        elif len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values.append(value)
    return values


def yaml_block(text: str, key: str) -> str:
    """The literal block scalar under `key: |`, dedented, as a string."""
    m = re.search(rf"^(\s*){re.escape(key)}:\s*\|\s*\n((?:\1\s+.*\n|\s*\n)+)", text, re.M)
    assert m, f"no block {key}"
    lines = m.group(2).splitlines()
    indent = min(len(x) - len(x.lstrip()) for x in lines if x.strip())
    return "\n".join(x[indent:] for x in lines) + "\n"


def unknown_env_names(text: str) -> set[str]:
    settings = {f"NEBULA_{f.name.upper()}" for f in fields(Settings)}
    return set(re.findall(r"\bNEBULA_[A-Z0-9_]+", text)) - settings - CLIENT_ENV


def prefix_matches(prefix: str, path: str) -> bool:
    """Kubernetes' `pathType: Prefix`: matches whole path elements."""
    want = [e for e in prefix.split("/") if e]
    have = [e for e in path.split("/") if e]
    return have[: len(want)] == want


def serve_flags() -> set[str]:
    return {opt for p in serve.params for opt in (*p.opts, *p.secondary_opts)}


def unknown_flags(argv: list[str]) -> set[str]:
    return {a.split("=")[0] for a in argv if a.startswith("--")} - serve_flags()


def dockerfile_lines(instruction: str) -> list[str]:
    """The Dockerfile's `instruction` lines, continuation lines joined, without the keyword."""
    text = re.sub(r"\\\n", " ", read(DEPLOY / "Dockerfile"))
    return re.findall(rf"^{instruction}\s+(.*)$", text, re.M)


def dockerfile_json(instruction: str) -> list[str]:
    found = [x.strip() for x in dockerfile_lines(instruction)]
    assert len(found) == 1, f"one {instruction} in exec form expected, got {found}"
    return list(json.loads(found[0]))


def env_file(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if re.match(r"^[A-Z_]+=", line))
    return {k: v for k, v in pairs}


def route_paths(app: web.Application) -> set[str]:
    return {r.resource.canonical for r in app.router.routes() if r.resource is not None}


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(read(DASHBOARD))
    return data


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]


def rule_exprs() -> list[str]:
    return yaml_values(read(RULES), "expr")


# ---------------------------------------------------------------------------------------------
# The checkers reject what they should


def test_checkers_reject_wrong_inputs(app: web.Application) -> None:
    known = known_series(app)
    assert unknown_metrics(["rate(nebula_omaha_requests_total[5m])"], known) == set()
    assert unknown_metrics(["rate(nebula_omaha_request_total[5m])"], known) == {
        "nebula_omaha_request_total"
    }
    assert unknown_metrics(["nebula_omaha_requests"], known) == {"nebula_omaha_requests"}
    assert unknown_env_names("NEBULA_DB=x NEBULA_DATABASE_URL=y") == {"NEBULA_DATABASE_URL"}
    assert unknown_flags(["serve", "--listen", "0.0.0.0:8000"]) == set()
    assert unknown_flags(["serve", "--port=8000"]) == {"--port"}
    assert prefix_matches("/v1/", "/v1/update/")
    assert not prefix_matches("/v1/", "/api/v1/packages")
    assert not prefix_matches("/v1", "/v10/x")
    assert yaml_values("a:\n  expr: |\n    x\n    + y\n  for: 5m\n", "expr") == ["x + y"]
    assert yaml_values('- expr: "up == 0"\n', "expr") == ["up == 0"]


def test_known_series_match_the_code(app: web.Application) -> None:
    known = known_series(app)
    # The instance gauge comes from the collector that nebula.web.status registers.
    assert {"nebula_instances", "nebula_omaha_request_duration_seconds_bucket"} <= known
    assert "nebula_updates_granted_total" in known


# ---------------------------------------------------------------------------------------------
# Settings and environment variables


def test_every_nebula_variable_in_deploy_is_a_setting() -> None:
    bad = {str(p.relative_to(ROOT)): unknown_env_names(read(p)) for p in deploy_files()}
    assert {k: v for k, v in bad.items() if v} == {}


def test_systemd_env_file_loads() -> None:
    env = env_file(read(DEPLOY / "systemd" / "nebula.env"))
    assert "NEBULA_DB" in env and "NEBULA_PUBLIC_URL" in env
    settings = load_settings({}, environ=env)
    normalize_url(settings.db)


def test_compose_environment_loads() -> None:
    text = read(DEPLOY / "compose.yaml")
    pairs = re.findall(r"^\s+(NEBULA_[A-Z_]+):\s*(\S+)\s*$", text, re.M)
    env = {k: re.sub(r"\$\{[^}]*\}", "secret", v) for k, v in pairs}
    assert {"NEBULA_DB", "NEBULA_PUBLIC_URL"} <= env.keys()
    settings = load_settings({}, environ=env)
    url = normalize_url(settings.db)
    assert url.get_backend_name() == "postgresql"
    # The database URL names the compose service and the user and database PostgreSQL creates.
    assert re.search(rf"^  {url.host}:\s*$", text, re.M), url.host
    assert re.search(rf"POSTGRES_USER:\s*{url.username}\s*$", text, re.M)
    assert re.search(rf"POSTGRES_DB:\s*{url.database}\s*$", text, re.M)


def test_kubernetes_configmap_toml_loads(tmp_path: Path) -> None:
    toml_text = yaml_block(read(K8S / "configmap.yaml"), "nebula.toml")
    (tmp_path / "nebula.toml").write_text(toml_text)
    settings = load_settings({}, environ={}, config_file=str(tmp_path / "nebula.toml"))
    assert settings.public_url.startswith("https://")
    # The payloads go to the shared volume: under a mount of the PVC, not the read-only root.
    deployment = read(K8S / "deployment.yaml")
    mount = re.search(r"- name: payloads\s+mountPath:\s*(\S+)", deployment)
    assert mount and Path(settings.payload_dir).is_relative_to(mount.group(1))
    assert "claimName: nebula-payloads" in deployment
    assert re.search(r"^\s+- ReadWriteMany\s*$", read(K8S / "pvc.yaml"), re.M)
    # The file the pods are told to read is where the ConfigMap is mounted.
    config_path = re.search(r"name: NEBULA_CONFIG\s+value:\s*(\S+)", deployment)
    config_mount = re.search(r"- name: config\s+mountPath:\s*(\S+)", deployment)
    assert config_path and config_mount
    assert Path(config_path.group(1)) == Path(config_mount.group(1)) / "nebula.toml"


def test_kubernetes_secret_example_is_a_database_url() -> None:
    text = read(K8S / "secret.example.yaml")
    (db_url,) = re.findall(r"^\s+NEBULA_DB:\s*(\S+)\s*$", text, re.M)
    assert normalize_url(db_url).get_backend_name() == "postgresql"
    assert "key: NEBULA_DB" in read(K8S / "deployment.yaml")


def test_dockerfile_bakes_in_no_settings() -> None:
    # The environment outranks a --config file: a baked-in NEBULA_* would shadow nebula.toml.
    env_lines = dockerfile_lines("ENV")
    assert any("PATH=" in line for line in env_lines)
    assert not any("NEBULA_" in line for line in env_lines)


def test_container_defaults_land_in_the_volume() -> None:
    text = read(DEPLOY / "Dockerfile")
    runtime = re.split(r"^FROM\s", text, flags=re.M)[-1]
    (workdir,) = re.findall(r"^WORKDIR\s+(\S+)\s*$", runtime, re.M)
    volumes = json.loads(find(r"^VOLUME\s+(\[.*\])", text))
    assert volumes == [workdir]
    # Relative defaults resolve in the working directory, i.e. in the volume.
    assert not Path(DEFAULT_PAYLOAD_DIR).is_absolute()
    db_path = normalize_url(DEFAULT_DB).database
    assert db_path and not Path(db_path).is_absolute()


def test_systemd_writes_only_to_its_state_directory() -> None:
    unit = read(DEPLOY / "systemd" / "nebula.service")
    state = Path("/var/lib") / find(r"^StateDirectory=(\S+)$", unit)
    assert re.search(rf"^WorkingDirectory={state}$", unit, re.M)
    for line in ("ProtectSystem=strict", "NoNewPrivileges=yes", "Restart=on-failure"):
        assert re.search(rf"^{line}$", unit, re.M), line
    env = env_file(read(DEPLOY / "systemd" / "nebula.env"))
    settings = load_settings({}, environ=env)
    assert Path(settings.payload_dir).is_relative_to(state)
    db = normalize_url(settings.db)
    if db.get_backend_name() == "sqlite":
        assert Path(db.database or "").is_relative_to(state)
    env_path = find(r"^EnvironmentFile=-?(\S+)$", unit)
    assert env_path == "/etc/nebula/nebula.env"


# ---------------------------------------------------------------------------------------------
# Commands, flags, ports and paths


def test_dockerfile_entrypoint_and_cmd() -> None:
    scripts = tomllib.loads(read(ROOT / "pyproject.toml"))["project"]["scripts"]
    entrypoint = dockerfile_json("ENTRYPOINT")
    assert entrypoint == ["nebula"] and "nebula" in scripts
    cmd = dockerfile_json("CMD")
    assert cmd[0] == "serve" and unknown_flags(cmd) == set()
    help_text = CliRunner().invoke(cli_main, ["serve", "--help"]).output
    for flag in (a for a in cmd if a.startswith("--")):
        assert flag in help_text


def test_other_serve_command_lines_use_real_flags() -> None:
    args = re.search(r"^\s+args:\s*(\[.*\])\s*$", read(K8S / "deployment.yaml"), re.M)
    assert args
    k8s_args = json.loads(args.group(1))
    assert k8s_args == dockerfile_json("CMD")
    argv = find(r"^ExecStart=(.*)$", read(DEPLOY / "systemd" / "nebula.service")).split()
    assert Path(argv[0]).name == "nebula" and argv[1] == "serve"
    assert unknown_flags(argv[2:]) == set()


def test_dockerfile_builds_from_what_pyproject_needs() -> None:
    project = tomllib.loads(read(ROOT / "pyproject.toml"))
    text = read(DEPLOY / "Dockerfile")
    copied = {
        src.rstrip("/")
        for line in re.findall(r"^COPY\s+(?!--from)(.*)$", text, re.M)
        for src in line.split()[:-1]
    }
    needed = {"pyproject.toml", project["project"]["readme"]}
    needed |= {d.split("/")[0] for d in project["tool"]["setuptools"]["package-dir"].values()}
    assert needed <= copied, needed - copied
    assert all((ROOT / src).exists() for src in copied)
    ignore = read(DEPLOY / "Dockerfile.dockerignore").splitlines()
    for src in copied:
        assert f"!{src}" in ignore or f"!{src}/" in ignore, src
    # The base image's Python satisfies requires-python.
    base = re.search(r"^ARG PYTHON_IMAGE=python:(\d+)\.(\d+)", text, re.M)
    need = re.match(r">=(\d+)\.(\d+)", project["project"]["requires-python"])
    assert base and need
    assert tuple(map(int, base.groups())) >= tuple(map(int, need.groups()))


def test_ports_agree(app: web.Application) -> None:
    text = read(DEPLOY / "Dockerfile")
    cmd = dockerfile_json("CMD")
    port = cmd[cmd.index("--listen") + 1].rpartition(":")[2]
    assert re.search(rf"^EXPOSE\s+{port}\s*$", text, re.M)
    (health,) = dockerfile_lines("HEALTHCHECK")
    assert re.search(r"\bCMD\s+\[\s*\"python\"", health)
    url = re.search(r"http://127\.0\.0\.1:(\d+)(/\w+)", health)
    assert url and url.group(1) == port and url.group(2) in route_paths(app)
    deployment = read(K8S / "deployment.yaml")
    assert re.search(rf"containerPort:\s*{port}\s*$", deployment, re.M)
    assert re.search(rf'prometheus.io/port:\s*"{port}"', deployment)
    assert re.search(rf'"127\.0\.0\.1:\d+:{port}"', read(DEPLOY / "compose.yaml"))


def test_kubernetes_probes_and_metrics_paths_exist(app: web.Application) -> None:
    deployment = read(K8S / "deployment.yaml")
    paths = set(re.findall(r"httpGet:\s*\n\s*path:\s*(\S+)", deployment))
    assert paths == {"/healthz", "/readyz"}
    assert paths <= route_paths(app)
    assert re.search(r"readinessProbe:\s*\n\s*httpGet:\s*\n\s*path:\s*/readyz", deployment)
    assert re.search(r"livenessProbe:\s*\n\s*httpGet:\s*\n\s*path:\s*/healthz", deployment)
    scrape = find(r"prometheus.io/path:\s*(\S+)", deployment)
    assert scrape in route_paths(app)
    assert re.search(r"^\s+replicas:\s*2\s*$", deployment, re.M)
    assert "readOnlyRootFilesystem: true" in deployment
    assert re.search(r"mountPath:\s*/tmp\s*$", deployment, re.M)
    # The pod's UID is the image's.
    uid = find(r"^USER\s+(\d+)", read(DEPLOY / "Dockerfile"))
    assert re.search(rf"runAsUser:\s*{uid}\s*$", deployment, re.M)


def test_only_v1_is_public(app: web.Application) -> None:
    prefixes = yaml_values(read(K8S / "ingress.yaml"), "path")
    assert prefixes, "the Ingress routes nothing"
    routes = route_paths(app)
    host_routes = {r for r in routes if r.startswith("/v1/")}
    assert {"/v1/update/", "/v1/payloads/{package_id}/{name}"} <= host_routes
    for route in routes:
        exposed = any(prefix_matches(p, route) for p in prefixes)
        assert exposed == (route in host_routes), route
    # The reverse-proxy examples forward /v1/ only (outside comments).
    nginx = "\n".join(
        x
        for x in read(DEPLOY / "proxy" / "nginx.conf").splitlines()
        if not x.lstrip().startswith("#")
    )
    assert re.findall(r"location\s+(\S+)\s*\{[^}]*proxy_pass", nginx) == ["/v1/"]
    caddy = "\n".join(
        x
        for x in read(DEPLOY / "proxy" / "Caddyfile").splitlines()
        if not x.lstrip().startswith("#")
    )
    assert re.findall(r"handle\s+(\S+)\s*\{\s*reverse_proxy", caddy) == ["/v1/*"]
    assert caddy.count("reverse_proxy") == 1


# ---------------------------------------------------------------------------------------------
# YAML files and the kustomization


def test_yaml_files_are_plausible() -> None:
    for path in DEPLOY.rglob("*.yaml"):
        text = read(path)
        assert "\t" not in text, f"{path}: tab characters"
        assert text.strip(), path
    kustomization = read(K8S / "kustomization.yaml")
    listed = set(re.findall(r"^\s+- (\S+\.yaml)\s*$", kustomization, re.M))
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    # Every manifest is listed except the example Secret, which must never be applied as is.
    assert listed == present - {"secret.example.yaml"}
    for name in present:
        text = read(K8S / name)
        assert re.search(r"^apiVersion: \S+", text, re.M) and re.search(r"^kind: \w+", text, re.M)
        assert not re.search(r"^\s+namespace:", text, re.M), f"{name} names a namespace"


def test_yaml_parses_when_pyyaml_is_there() -> None:
    yaml = pytest.importorskip("yaml")
    for path in DEPLOY.rglob("*.yaml"):
        docs = [d for d in yaml.safe_load_all(read(path)) if d is not None]
        assert docs, path
    rules = yaml.safe_load(read(RULES))
    parsed = [r["expr"].strip() for g in rules["groups"] for r in g["rules"]]
    assert [" ".join(e.split()) for e in parsed] == [" ".join(e.split()) for e in rule_exprs()]
    compose = yaml.safe_load(read(DEPLOY / "compose.yaml"))
    assert compose["services"]["postgres"]["image"] == "postgres:16"
    assert set(compose["volumes"]) == {"payloads", "database"}


# ---------------------------------------------------------------------------------------------
# Prometheus rules and the Grafana dashboard


def test_rules_reference_real_metrics(app: web.Application) -> None:
    exprs = rule_exprs()
    assert len(exprs) >= 10
    assert unknown_metrics(exprs, known_series(app)) == set()
    text = read(RULES)
    recorded = set(yaml_values(text, "record"))
    used = {n for e in exprs for n in re.findall(r"\bnebula:[a-z0-9_:]+", e)}
    assert used <= recorded, used - recorded
    alerts = yaml_values(text, "alert")
    assert "NebulaDown" in alerts and len(alerts) == len(set(alerts))
    assert len(re.findall(r"^\s+severity:", text, re.M)) == len(alerts)


# Gauges read from the database at scrape: every replica reports the same fleet-wide values, with
# every label they have.
DATABASE_GAUGES = {
    "nebula_instances": {"app", "group", "arch", "channel", "version", "status"},
    "nebula_rollout_progress_ratio": {"group", "arch"},
    "nebula_rollout_paused": {"group", "arch", "kind"},
    "nebula_policy_holds": {"group", "arch", "reason"},
    "nebula_group_paused": {"group", "arch"},
    "nebula_reboot_overdue_instances": {"group", "arch"},
}


def test_database_gauges_are_never_summed_across_replicas() -> None:
    """Every replica reports the same database-read gauges: a query takes the max across
    replicas first, by all of the series' labels (a max by group and status alone would pick
    one version's count of nebula_instances, not their total)."""
    for expr in rule_exprs() + dashboard_exprs():
        for name, labels in DATABASE_GAUGES.items():
            raw = len(re.findall(rf"\b{name}\b", expr))
            maxed = re.findall(rf"max by \(([^)]*)\) \({name}\b", expr)
            assert raw == len(maxed), expr
            for by in maxed:
                assert labels <= {x.strip() for x in by.split(",")}, (name, expr)


def test_database_gauges_have_the_labels_listed(app: web.Application) -> None:
    """DATABASE_GAUGES lists the labels the collector really exports."""
    from nebula.web.status import InstanceCounts

    counts = InstanceCounts()
    counts.rows = [("flatcar", "stable", "amd64", "stable", "1.2.3", "idle", 1)]
    counts.paused = [("stable", "amd64", None)]
    counts.overdue = [("stable", "amd64", 0)]
    counts.progress = [("stable", "amd64", 0.5)]
    counts.holds = [("stable", "amd64", "paused", 1)]
    exported = {f.name: set(f.samples[0].labels) for f in counts.collect()}
    assert exported == DATABASE_GAUGES


def test_dashboard(app: web.Application) -> None:
    dash = dashboard()
    assert 36 <= dash["schemaVersion"] <= 41
    assert dash["uid"] and dash["title"] and dash["id"] is None
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = dash["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not mine & cells, f"{p['title']} overlaps another panel"
        cells |= mine
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs))
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}"
            used = set(re.findall(r"\$(\w+)", t["expr"])) - {"__rate_interval", "__interval"}
            assert used <= variables.keys(), used - variables.keys()
    exprs = dashboard_exprs()
    exprs += [v["query"]["query"] for v in variables.values() if isinstance(v["query"], dict)]
    assert unknown_metrics(exprs, known_series(app)) == set()
    # The panels the operators asked for are there.
    wanted = {
        "nebula_instances",
        "nebula_update_checks_total",
        "nebula_updates_granted_total",
        "nebula_update_failures_total",
        "nebula_omaha_requests_total",
        "nebula_omaha_request_duration_seconds_bucket",
        "nebula_payload_bytes_sent_total",
        "nebula_payload_uploads_total",
        "nebula_rollout_progress_ratio",
        "nebula_rollout_paused",
        "nebula_policy_holds",
        "nebula_http_request_duration_seconds_bucket",
        "nebula_db_pool_connections_in_use",
        "nebula_db_pool_waiting",
    }
    assert wanted <= {n for e in exprs for n in metric_names(e)}
    # The fleet's versions: hosts summed by version, and by group and version.
    by_version = [
        e for e in exprs if "nebula_instances" in e and re.match(r"sum by \([^)]*version", e)
    ]
    assert len(by_version) >= 2, by_version
    titles = {p["title"] for p in panels}
    assert {"Hosts by version", "Rollout progress", "Hosts by group and version"} <= titles
    latency = " ".join(e for e in exprs if "duration_seconds_bucket" in e)
    for q in ("0.50", "0.95", "0.99"):
        assert f"histogram_quantile({q}," in latency


def test_promtool(tmp_path: Path) -> None:
    require_tools("promtool")  # .ci/run installs Debian's prometheus, so CI runs this
    promtool = shutil.which("promtool")
    assert promtool
    run = [promtool, "check", "rules", str(RULES)]
    assert subprocess.run(run, capture_output=True, text=True).returncode == 0
    tests = RULES.with_name("nebula-rules.test.yaml")
    done = subprocess.run(
        [promtool, "test", "rules", tests.name], cwd=tests.parent, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # Every dashboard query parses: as recording rules, with Grafana's variables filled in.
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for i, expr in enumerate(dashboard_exprs()):
        expr = expr.replace("$__rate_interval", "5m")
        expr = re.sub(r"\$\w+", ".*", expr)
        lines += [f"      - record: dashboard:q{i}", f"        expr: {json.dumps(expr)}"]
    (tmp_path / "dash.yaml").write_text("\n".join(lines) + "\n")
    done = subprocess.run(
        [promtool, "check", "rules", str(tmp_path / "dash.yaml")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
