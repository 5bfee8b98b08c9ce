"""The Docker delivery files say what the README promises (no Docker engine needed)."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_runs_migrations_once_before_api_and_worker() -> None:
    services = _compose()["services"]
    assert set(services) == {"postgres", "redis", "migrate", "api", "worker"}
    assert services["migrate"]["command"] == ["stripesync", "migrate"]
    assert services["migrate"]["restart"] == "no"
    for name in ("api", "worker"):
        depends = services[name]["depends_on"]
        assert depends["migrate"] == {"condition": "service_completed_successfully"}
        assert depends["redis"] == {"condition": "service_healthy"}
    assert services["migrate"]["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert services["api"]["command"][:2] == ["stripesync", "serve"]
    assert services["worker"]["command"] == ["stripesync", "worker"]


def test_compose_points_every_stripesync_service_at_its_postgres_and_redis() -> None:
    services = _compose()["services"]
    for name in ("migrate", "api", "worker"):
        env = services[name]["environment"]
        assert "@postgres:5432/" in env["STRIPESYNC_DATABASE_URL"]
        assert env["STRIPESYNC_REDIS_URL"].startswith("redis://redis:6379/")


def test_image_runs_serve_as_a_non_root_user_with_migrations_apart() -> None:
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    stages = [line for line in lines if line.startswith("FROM ")]
    assert len(stages) >= 2, "multi-stage build"
    runtime = lines[lines.index(stages[-1]) :]
    users = [line.split()[1] for line in runtime if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    cmd = next(line for line in reversed(runtime) if line.startswith("CMD "))
    assert cmd.startswith('CMD ["stripesync", "serve"')
    assert "migrate" not in cmd
    assert any("COPY" in line and "migrations" in line for line in runtime)
