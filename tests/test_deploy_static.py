"""docker-compose.yml, .env.example, the Dockerfile and the requirement locks agree with each other and with the code.

The Settings fields are read from ``service.config.Settings`` (not listed here), so a new setting that the
compose file does not pass on fails this test.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from service.config import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict = COMPOSE["services"]
#: the services that run chexcurate code and so read Settings
SETTINGS_READERS = ["migrate", "api", "worker-gpu", "worker-cpu"]
VAR = re.compile(r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?])?(?P<arg>[^}]*)\}|(?P<bare>[A-Za-z_]\w*))")


def env_example() -> dict[str, str]:
    env = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            env[key.strip()] = value.strip()
    return env


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?error}``, ``${VAR?error}``, ``$$``."""

    def one(m: re.Match[str]) -> str:
        name = m["braced"] or m["bare"]
        op, arg = m["op"] or "", m["arg"] or ""
        present = name in env and (env[name] != "" or not op.startswith(":"))
        if present:
            return env[name]
        if op.endswith("?"):
            raise KeyError(f"{name} is required: {arg}")
        return arg if op.endswith("-") else ""

    return "$".join(VAR.sub(one, part) for part in value.split("$$"))


def settings_env_names() -> set[str]:
    prefix = Settings.model_config.get("env_prefix", "")
    return {(prefix + name).upper() for name in Settings.model_fields}


def strings(node: object) -> list[str]:
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in strings(k) + strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in strings(v)]
    return [node] if isinstance(node, str) else []


def compose_vars() -> set[str]:
    """Every variable the compose file interpolates (in any value or key, comments aside)."""
    return {m["braced"] or m["bare"] for text in strings(COMPOSE) for m in VAR.finditer(text.replace("$$", ""))}


def test_every_setting_is_passed_to_the_services_that_read_them() -> None:
    wanted = settings_env_names()
    assert "CHEX_DATABASE_URL" in wanted and "CHEX_BROKER_URL" in wanted
    for name in SETTINGS_READERS:
        environment = SERVICES[name]["environment"]
        assert isinstance(environment, dict), name
        missing = wanted - set(environment)
        assert not missing, f"{name} does not set {sorted(missing)}"


@pytest.mark.parametrize("service", SETTINGS_READERS)
def test_settings_accept_the_compose_environment_and_urls_name_services(service, monkeypatch) -> None:
    env = env_example()
    resolved = {k: interpolate(str(v), env) for k, v in SERVICES[service]["environment"].items()}
    for key in list(os.environ):
        if key.startswith("CHEX_"):
            monkeypatch.delenv(key)
    for key, value in resolved.items():
        monkeypatch.setenv(key, value)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.database_url.startswith("postgresql+psycopg://")
    assert settings.broker_url and settings.broker_url.startswith("redis://")
    ports = {"postgres": 5432, "redis": 6379}
    for field, value in settings.model_dump().items():
        if isinstance(value, str) and "://" in value:
            url = urlsplit(value)
            assert url.hostname in SERVICES, f"{field}: host {url.hostname!r} is not a compose service"
            assert url.port == ports.get(url.hostname, url.port), f"{field}: port {url.port}"
    assert urlsplit(settings.database_url).password == env["POSTGRES_PASSWORD"]


def test_env_example_covers_every_compose_variable() -> None:
    documented = set(env_example())
    missing = compose_vars() - documented
    assert not missing, f".env.example lacks {sorted(missing)}"


def test_no_secret_is_baked_in() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    assert "${POSTGRES_PASSWORD:?" in text
    assert SERVICES["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    # without a password the file does not even interpolate
    with pytest.raises(KeyError, match="POSTGRES_PASSWORD"):
        interpolate(SERVICES["api"]["environment"]["CHEX_DATABASE_URL"], {})
    assert ".env" in (ROOT / ".gitignore").read_text().split()


def test_topology() -> None:
    pg, redis, migrate, api = (SERVICES[s] for s in ("postgres", "redis", "migrate", "api"))
    assert any(v.startswith("pgdata:") for v in pg["volumes"]) and "pgdata" in COMPOSE["volumes"]
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    assert "ping" in redis["healthcheck"]["test"]
    assert migrate["command"] == ["db", "upgrade"] and migrate["restart"] == "no"
    assert api["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert api["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    for worker in ("worker-gpu", "worker-cpu"):
        command = SERVICES[worker]["command"]
        assert command[0] == "worker" and command[command.index("--pool") + 1] == "solo"
        assert "healthcheck" in SERVICES[worker]
    devices = SERVICES["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"]
    assert len(devices[0]["device_ids"]) == 1  # one GPU per worker process
    assert "profiles" not in SERVICES["worker-gpu"] and "profiles" not in api
    for name, profile in (("worker-cpu", "cpu"), ("trainer", "trainer"), ("flower", "flower")):
        assert SERVICES[name]["profiles"] == [profile]
    for name, spec in SERVICES.items():
        for port in spec.get("ports", []):
            assert interpolate(port, env_example()).startswith("127.0.0.1:"), f"{name} publishes {port} widely"
    assert "ports" not in pg and "ports" not in redis, "Postgres and Redis are never published"


def dockerfile_stages() -> dict[str, list[str]]:
    """Stage name -> its instructions (continuation lines joined); ARG defaults substituted in FROM lines."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    args: dict[str, str] = {}
    stages: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in lines:
        word = line.split()[0].upper()
        if word == "ARG" and current is None and "=" in line:
            key, value = line.split(None, 1)[1].split("=", 1)
            args[key] = value
        elif word == "FROM":
            base, _, name = line.split()[1:4]
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], base)
            current = stages.setdefault(name, [f"FROM {base}"])
        elif current is not None:
            current.append(line)
    return stages


def lineage(stages: dict[str, list[str]], name: str) -> list[str]:
    """The instructions of a stage and of the stages it is built FROM, base first."""
    base = stages[name][0].split()[1]
    return (lineage(stages, base) if base in stages else [stages[name][0]]) + stages[name][1:]


def test_dockerfile_stages_user_healthcheck_and_locked_install() -> None:
    stages = dockerfile_stages()
    assert {"cpu", "gpu", "cpu-build", "gpu-build"} <= set(stages)
    assert lineage(stages, "cpu")[0].startswith("FROM python:3.11-slim")
    assert lineage(stages, "gpu")[0].startswith("FROM nvidia/cuda:")
    for target, lock in (("cpu", "requirements/cpu.txt"), ("gpu", "requirements/gpu.txt")):
        final = lineage(stages, target)
        users = [ln.split()[1] for ln in final if ln.upper().startswith("USER ")]
        assert users and users[-1].split(":")[0] not in ("root", "0"), f"{target} runs as {users}"
        assert any(ln.upper().startswith("HEALTHCHECK CMD") or ln.upper().startswith("HEALTHCHECK --") for ln in final)
        build = " ".join(lineage(stages, f"{target}-build"))
        assert f"COPY {lock} " in build
        assert re.search(r"pip install --no-deps -r /tmp/requirements.txt", build), target
        assert f"COPY --from={target}-build /opt/venv /opt/venv" in final
        image = " ".join(final)
        assert "pip install --no-deps --no-build-isolation -e ." in image and "pip check" in image


def lock(name: str) -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements" / name).read_text().splitlines():
        if line and not line.startswith("#"):
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", line
            pins[canonicalize_name(req.name)] = spec.version
    return pins


def test_locks_pin_torch_and_cover_the_project_dependencies() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    cpu, gpu = lock("cpu.txt"), lock("gpu.txt")
    assert re.fullmatch(r"2\.13\.0(\+cpu)?", cpu["torch"]) and gpu["torch"] == "2.13.0"
    assert "faiss-cpu" in cpu and "faiss-gpu-cu12" in gpu and "faiss-cpu" not in gpu
    assert "chexcurate" not in cpu and "chexcurate" not in gpu
    for name, pins in (("cpu", cpu), ("gpu", gpu)):
        for line in project["dependencies"] + project["optional-dependencies"][name]:
            req = Requirement(line)
            assert canonicalize_name(req.name) in pins, f"{name}.txt lacks {req.name}"
            assert pins[canonicalize_name(req.name)] in req.specifier or req.name == "torch", line


LOCAL = yaml.safe_load((ROOT / "compose.local.yml").read_text())
#: services that run once and exit: judged by their exit code, so no healthcheck
ONE_SHOT = {"migrate", "trainer"}


def test_every_long_running_service_has_a_healthcheck() -> None:
    image_healthcheck = any(ln.upper().startswith("HEALTHCHECK ") for ln in lineage(dockerfile_stages(), "cpu"))
    for name, spec in SERVICES.items():
        if name in ONE_SHOT:
            assert spec["restart"] == "no" and spec["healthcheck"] == {"disable": True}, name
            continue
        check = spec.get("healthcheck")
        if check is None:  # the app image's own HEALTHCHECK (the API's /healthz)
            assert spec.get("image", "").startswith("${CHEX_IMAGE_CPU") and image_healthcheck, name
        else:
            assert check.get("disable") is not True and check["test"][0] in ("CMD", "CMD-SHELL"), name


def test_services_start_through_the_cli_entry_points() -> None:
    """Commands name the console scripts (chexcurate, chexcurate-train), never module paths, so a package
    reorganisation cannot break the images."""
    entry = next(ln for ln in lineage(dockerfile_stages(), "cpu") if ln.upper().startswith("ENTRYPOINT"))
    assert entry.split(None, 1)[1] == '["chexcurate"]'
    for name, spec in SERVICES.items():
        text = " ".join(strings([spec.get("command", []), spec.get("entrypoint", [])]))
        assert "python -m" not in text and not re.search(r"\b(service|workers|trainer)\.\w", text), name
    assert SERVICES["trainer"]["entrypoint"] == ["chexcurate-train"]


def local_image_tags() -> dict[str, str]:
    script = (ROOT / "deploy" / "local-images.sh").read_text()
    return dict(re.findall(r"^(BASE|POSTGRES|REDIS)=(\S+)$", script, re.MULTILINE))


def test_local_override_swaps_only_base_images_for_the_ones_the_script_builds() -> None:
    tags = local_image_tags()
    assert set(tags) == {"BASE", "POSTGRES", "REDIS"}
    overridden: dict = LOCAL["services"]
    assert set(overridden) <= set(SERVICES)
    assert overridden["postgres"] == {"image": tags["POSTGRES"]}
    assert overridden["redis"] == {"image": tags["REDIS"]}
    cpu_services = {n for n, s in SERVICES.items() if s.get("build", {}).get("target") == "cpu"}
    assert cpu_services == {"migrate", "api", "worker-cpu"}
    for name in cpu_services:
        assert overridden[name] == {"build": {"args": {"PYTHON_IMAGE": tags["BASE"]}}}, name
    # the build argument is the one the CPU stages are built FROM
    assert "ARG PYTHON_IMAGE=python:3.11-slim-bookworm" in (ROOT / "Dockerfile").read_text()
    assert dockerfile_stages()["cpu-base"][0] == "FROM python:3.11-slim-bookworm"
    for name in ("postgres", "redis"):
        dockerfile = (ROOT / "deploy" / "local" / f"{name}.Dockerfile").read_text()
        users = re.findall(r"^USER (\S+)$", dockerfile, re.MULTILINE)
        assert users and users[-1] not in ("root", "0"), name
        assert f"ARG BASE={tags['BASE']}" in dockerfile


def test_build_context_leaves_local_state_out() -> None:
    ignored = {ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln and ln[0] != "#"}
    assert {".git", ".venv", "**/.venv", ".env", "data", "runs", ".cache", "**/__pycache__"} <= ignored
    assert {".pytest_cache", ".mypy_cache", ".ruff_cache", ".hypothesis", "*.db"} <= ignored
    assert not {"deploy", "deploy/wheels", "requirements"} & ignored  # the build needs them
    gitignored = (ROOT / ".gitignore").read_text().split()
    assert "deploy/wheels/*" in gitignored  # wheels a host supplies never land in git
