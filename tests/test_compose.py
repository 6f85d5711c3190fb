"""Offline checks of the GPU-workstation deployment: docker-compose.yml, the Dockerfiles, .env.example.

No Docker engine is needed. The structural checks read the YAML and always run. When a Compose
implementation that can render a file without an engine is installed (`docker compose` v2, or
Debian's `docker-compose` v1), its `config` is checked too: it must accept the file, refuse it
without POSTGRES_PASSWORD, and keep every published port on 127.0.0.1.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
DOCKER = REPO / "docker"

SERVICES = ("postgres", "mlflow", "dashboard", "worker")
PASSWORD_VAR = re.compile(r"^\$\{POSTGRES_PASSWORD:\?[^}]+\}$")
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?+][^}]*)?\}")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict) -> dict:
    return compose["services"]


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def depends(service: dict) -> dict[str, str]:
    dep = service.get("depends_on") or {}
    if isinstance(dep, list):
        return {name: "service_started" for name in dep}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in dep.items()}


def published_hosts(ports: list) -> list[str]:
    """The host IP of each published port (short 'IP:HOST:CONTAINER' or long syntax)."""
    hosts = []
    for port in ports:
        if isinstance(port, dict):
            hosts.append(str(port.get("host_ip", "")))
        else:
            parts = re.sub(r"\$\{[^}]*\}", "VAR", str(port)).split(":")  # ${X:-5000} has colons
            hosts.append(parts[0] if len(parts) == 3 else "")
    return hosts


# ------------------------------------------------------------------------- structure (always)


def test_services_and_volumes(compose: dict, services: dict):
    assert set(SERVICES) <= set(services), sorted(services)
    assert {"pgdata", "mlartifacts", "data"} <= set(compose.get("volumes") or {})
    mounts = {name: [str(v) for v in (svc.get("volumes") or [])] for name, svc in services.items()}
    assert "pgdata:/var/lib/postgresql/data" in mounts["postgres"]
    assert any(m.startswith("mlartifacts:/mlartifacts") for m in mounts["mlflow"])
    assert any(m.startswith("data:/data") for m in mounts["worker"])


def test_ports_only_on_loopback(services: dict):
    published = {name: svc.get("ports") or [] for name, svc in services.items()}
    assert not published["postgres"], "PostgreSQL must not be published"
    assert not published["worker"], "workers publish nothing (and could not scale if they did)"
    assert published["mlflow"] and published["dashboard"]
    for name, ports in published.items():
        for host in published_hosts(ports):
            assert host == "127.0.0.1", f"{name}: port published on '{host or 'all interfaces'}'"


def test_worker_gpu_reservation_and_scaling(services: dict):
    worker = services["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    gpu = [d for d in devices if "gpu" in d.get("capabilities", [])]
    assert gpu and gpu[0].get("driver") == "nvidia"
    assert gpu[0].get("count") == "all" or gpu[0].get("device_ids"), gpu[0]
    # `--scale worker=N` needs replicas without fixed names or host ports
    assert "container_name" not in worker
    assert worker.get("stop_signal") == "SIGINT"


def test_worker_environment(services: dict):
    env = env_of(services["worker"])
    assert env["RECSTUDIO_DATA_DIR"].startswith("/data/")
    assert env["RECSTUDIO_CACHE_DIR"].startswith("/data/")
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    storage = env["RECSTUDIO_OPTUNA_STORAGE"]
    assert storage.startswith("postgresql+psycopg://") and "@postgres:5432/" in storage
    assert PASSWORD_VAR.match(env["PGPASSWORD"])


def test_healthchecks_and_startup_order(services: dict):
    for name in SERVICES:
        check = services[name].get("healthcheck")
        assert check and check.get("test") and not check.get("disable"), f"{name} has no health check"
    assert depends(services["mlflow"]) == {"postgres": "service_healthy"}
    assert depends(services["dashboard"]).get("postgres") == "service_healthy"
    worker = depends(services["worker"])
    assert worker.get("postgres") == "service_healthy"
    assert worker.get("mlflow") == "service_healthy"


def test_mlflow_server_command(services: dict):
    command = services["mlflow"]["command"]
    text = " ".join(command) if isinstance(command, list) else command
    assert "--backend-store-uri=postgresql+psycopg://recstudio@postgres:5432/mlflow" in text
    assert "--serve-artifacts" in text and "--artifacts-destination=/mlartifacts" in text
    assert "--host=0.0.0.0" in text  # inside the container; the published port is loopback-only
    allowed = env_of(services["mlflow"])["MLFLOW_SERVER_ALLOWED_HOSTS"]
    assert "mlflow:5000" in allowed and "*" != allowed.split(":-")[-1].strip("}")


def test_no_literal_passwords():
    text = COMPOSE_FILE.read_text()
    # credentials never sit in a URL
    assert not re.search(r"://[^/\s:@]+:[^@\s/]+@", text), "a URL with user:password@"
    data = yaml.safe_load(text)
    for name, svc in data["services"].items():
        for key, value in env_of(svc).items():
            if re.search(r"PASSWORD|SECRET|TOKEN", key) and not key.endswith("_FILE"):
                assert PASSWORD_VAR.match(value), (
                    f"{name}.{key} = {value!r}: must be ${{POSTGRES_PASSWORD:?...}}"
                )
    assert "${POSTGRES_PASSWORD:?" in text


def test_env_example_has_placeholders_only(compose: dict):
    lines = [
        ln for ln in ENV_EXAMPLE.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")
    ]
    values = dict(ln.split("=", 1) for ln in lines)
    assert values.get("POSTGRES_PASSWORD", None) == "", "POSTGRES_PASSWORD must be empty in .env.example"
    for key, value in values.items():
        if re.search(r"PASSWORD|SECRET|TOKEN", key):
            assert value == "", f"{key} has a value in .env.example"
    # every variable the compose file reads is documented there
    used = set(INTERPOLATION.findall(COMPOSE_FILE.read_text()))
    documented = set(values) | set(re.findall(r"^#\s*([A-Z_][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), re.M))
    assert used <= documented, f"undocumented in .env.example: {sorted(used - documented)}"


def test_env_file_is_ignored():
    if shutil.which("git") is None or not (REPO / ".git").exists():
        assert ".env" in (REPO / ".gitignore").read_text().split()
        return
    result = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=REPO, check=False)
    assert result.returncode == 0, ".env is not git-ignored"
    result = subprocess.run(["git", "check-ignore", "-q", ".env.example"], cwd=REPO, check=False)
    assert result.returncode == 1, ".env.example must not be ignored"


# ------------------------------------------------------------------------- images


def copy_sources(dockerfile: Path) -> list[str]:
    sources = []
    for line in dockerfile.read_text().splitlines():
        parts = line.split()
        if parts and parts[0] == "COPY" and not any(p.startswith("--from") for p in parts):
            sources += [p for p in parts[1:-1] if not p.startswith("--")]
    return sources


def dockerignored(path: str) -> bool:
    patterns = [
        p.strip()
        for p in (REPO / ".dockerignore").read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]
    first = path.split("/")[0]
    return any(p.rstrip("/") in (path, first) for p in patterns if not p.startswith("!"))


@pytest.mark.parametrize("name", ["Dockerfile", "mlflow.Dockerfile", "dashboard.Dockerfile"])
def test_dockerfiles(name: str, services: dict):
    path = DOCKER / name
    text = path.read_text()
    assert "HEALTHCHECK" in text
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0"), f"{name} runs as root"
    for source in copy_sources(path):
        assert (REPO / source).exists(), f"{name}: COPY {source} is missing"
        assert not dockerignored(source), f"{name}: COPY {source} is excluded by .dockerignore"
    built = {svc["build"]["dockerfile"] for svc in services.values() if "build" in svc}
    assert f"docker/{name}" in built


def test_gpu_image():
    text = (DOCKER / "Dockerfile").read_text()
    assert re.search(r"^ARG CUDA_BASE=nvidia/cuda:12\.\S+-ubuntu", text, re.M)
    assert "download.pytorch.org/whl/${TORCH_CUDA}" in text
    assert '".[gpu]"' in text and "pip uninstall -y faiss-cpu" in text
    assert "entrypoint-worker.sh" in text and "STOPSIGNAL SIGINT" in text


def test_scripts_parse():
    for script in (DOCKER / "entrypoint-worker.sh", DOCKER / "postgres-init" / "10-optuna-database.sh"):
        assert os.access(script, os.X_OK), f"{script} is not executable"
        subprocess.run(["bash", "-n", str(script)], check=True)
    compile((DOCKER / "healthcheck.py").read_text(), "healthcheck.py", "exec")


# ------------------------------------------------------------------------- with a Compose tool


def compose_commands() -> list[list[str]]:
    found = []
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, check=False)
        if probe.returncode == 0:
            found.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        found.append(["docker-compose"])
    return found


def run_config(tool: list[str], tmp_path: Path, password: str | None) -> subprocess.CompletedProcess:
    env_file = tmp_path / "empty.env"  # never the developer's .env
    env_file.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "COMPOSE_", "DOCKER_"))}
    if password is not None:
        env["POSTGRES_PASSWORD"] = password
    return subprocess.run(
        [*tool, "--env-file", str(env_file), "-f", str(COMPOSE_FILE), "config"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.skipif(not compose_commands(), reason="no docker compose / docker-compose to render the file")
def test_compose_config_renders(tmp_path: Path):
    for tool in compose_commands():
        refused = run_config(tool, tmp_path, None)
        assert refused.returncode != 0, f"{tool}: accepted the file without POSTGRES_PASSWORD"
        assert "POSTGRES_PASSWORD" in refused.stderr + refused.stdout

        secret = "only-for-this-test-3141"
        result = run_config(tool, tmp_path, secret)
        assert result.returncode == 0, f"{' '.join(tool)} config failed:\n{result.stderr}"
        rendered = yaml.safe_load(result.stdout)
        assert set(SERVICES) <= set(rendered["services"])
        for name, svc in rendered["services"].items():
            for host in published_hosts(svc.get("ports") or []):
                assert host == "127.0.0.1", f"{name}: rendered port on '{host}'"
        worker = rendered["services"]["worker"]
        assert worker["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
        assert env_of(worker)["PGPASSWORD"] == secret
        assert env_of(rendered["services"]["postgres"])["POSTGRES_PASSWORD"] == secret


def test_optional_serving_service(services: dict):
    """The serve profile answers for a registered model from the tracking server, on loopback."""
    serve = services["serve"]
    assert serve["profiles"] == ["serve"]  # not started by a plain `docker compose up`
    assert serve["image"] == services["worker"]["image"]
    text = " ".join(serve["command"])
    assert text.startswith("mlflow models serve") and "--env-manager=local" in text
    assert "--model-uri=models:/${RECSTUDIO_SERVE_MODEL" in text and "--host=0.0.0.0" in text
    assert env_of(serve)["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert published_hosts(serve["ports"]) == ["127.0.0.1"]
    assert depends(serve) == {"mlflow": "service_healthy"}
    assert "/ping" in " ".join(serve["healthcheck"]["test"])
