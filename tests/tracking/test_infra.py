"""infra/mlflow: the compose file, env example, systemd unit and Ray runtime env are valid and lean."""

from __future__ import annotations

import configparser
import re
import subprocess
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit

INFRA = Path(__file__).resolve().parents[2] / "infra" / "mlflow"


def test_compose_defines_postgres_minio_and_a_lean_mlflow() -> None:
    doc = yaml.safe_load((INFRA / "docker-compose.yaml").read_text())
    services = doc["services"]
    assert {"postgres", "minio", "minio-init", "mlflow"} <= set(services)
    ml = services["mlflow"]
    env = ml["environment"]
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://")
    assert env["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert env["MLFLOW_WORKERS"] == "1" and env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert env["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert ml["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert ml["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    assert ml["ports"] == ["${MLFLOW_PUBLISH:-127.0.0.1:5000}:5000"]  # loopback unless asked
    for name in ("postgres", "minio"):
        assert "ports" not in services[name], f"{name} must stay on the compose network"
        assert "healthcheck" in services[name]
    assert (INFRA / ml["build"]["dockerfile"]).exists()
    assert ml["build"]["args"]["MLFLOW_VERSION"] in (INFRA / "Dockerfile").read_text()


def test_env_example_covers_the_compose_variables() -> None:
    compose = (INFRA / "docker-compose.yaml").read_text()
    used = set(re.findall(r"\$\{([A-Z_]+)", compose))
    example = dict(line.split("=", 1) for line in (INFRA / "mlflow.env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert used - {"MLFLOW_PUBLISH"} <= set(example)
    assert example["MLFLOW_WORKERS"] == "1" and example["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"


def test_env_example_binds_loopback_and_says_how_to_expose_it_safely() -> None:
    """The server has no authentication: whoever copies the example must not get it on every interface."""
    text = (INFRA / "mlflow.env.example").read_text()
    example = dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert example["MLFLOW_HOST"] == "127.0.0.1"
    assert "0.0.0.0" not in example.values()
    assert "reverse proxy" in text and "basic-auth" in text
    readme = (INFRA / "README.md").read_text()
    assert "reverse proxy" in readme and "--app-name basic-auth" in readme


def test_server_script_and_systemd_unit() -> None:
    script = INFRA / "mlflow-server.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    assert 'WORKERS="${MLFLOW_WORKERS:-1}"' in text and 'HOST="${MLFLOW_HOST:-127.0.0.1}"' in text
    assert "MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false" in text and "--serve-artifacts" in text
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string((INFRA / "mlflow-server.service").read_text())
    assert unit["Service"]["ExecStart"].endswith("mlflow-server.sh")
    assert unit["Service"]["EnvironmentFile"] == "/etc/blockprune/mlflow.env"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_ray_runtime_env_passes_the_tracking_uri() -> None:
    doc = yaml.safe_load((INFRA / "ray-runtime-env.yaml").read_text())
    assert doc["env_vars"]["MLFLOW_TRACKING_URI"].startswith("http://")
    assert doc["env_vars"]["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert "MLFLOW_TRACKING_URI" in (INFRA / "README.md").read_text()
