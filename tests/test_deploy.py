"""The production deployment in docker/: compose file, Dockerfiles, workspace and the Dagster instance config.

Nothing here builds images or starts containers (no Docker daemon in CI). Instead each file is checked by the
real parser of its format: the Compose Specification JSON schema (and ``docker compose config`` when the plugin
exists), a Dockerfile parser, and Dagster's own instance-config schema, and the instance config is exercised
for real against a PostgreSQL server started for the session, the way the containers will use it.
"""

from __future__ import annotations

import copy
import fnmatch
import importlib.util
import json
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from importlib.resources import files
from pathlib import Path
from typing import Any

import dagster as dg
import jsonschema
import pytest
import yaml
from dagster._core.instance.config import PoolGranularity, dagster_instance_config
from dagster._core.instance.ref import InstanceRef
from dockerfile_parse import DockerfileParser

from tests.postgres import PostgresServer, ensure_installed

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
COMPOSE = DOCKER / "docker-compose.yml"
ENV_EXAMPLE = DOCKER / ".env.example"
DAGSTER_SERVICES = ("webserver", "daemon", "code-location")
DAGSTER_HOME = "/opt/dagster/dagster_home"


# ------------------------------------------------------------------------------------------------
# Helpers: Compose variable interpolation, the compose schema, Dockerfile instructions
# ------------------------------------------------------------------------------------------------

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a Compose .env file (comments and blank lines skipped)."""
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path}: not KEY=VALUE: {line!r}"
            env[key.strip()] = value.strip()
    return env


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?error}`` and ``$$``, strictly.

    A variable with neither a value nor a default is an error here (Compose would warn and use ""), so a typo
    in a variable name fails the test instead of deploying an empty setting.
    """
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        op, arg = m.group(2), m.group(3)
        present = name in env and (env[name] != "" or op in (None, "-", "?"))
        if op in (":-", "-"):
            return env[name] if present else arg
        if op in (":?", "?") and not present:
            raise ValueError(f"required variable {name} is unset: {arg}")
        if name not in env:
            raise ValueError(f"variable {name} has no value and no default")
        return env[name]

    return _VAR.sub(sub, value)


def load_compose(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The compose file as Compose sees it: YAML (with merge keys) interpolated with ``env``."""
    raw = yaml.safe_load(COMPOSE.read_text())
    return raw if env is None else interpolate(raw, env)


def compose_spec_schema() -> dict[str, Any]:
    """The Compose Specification schema (compose-spec/compose-spec ``schema/compose-spec.json``).

    Read from the copy that check-jsonschema vendors and keeps current (with its licence), so the repo holds
    no copy of its own that could go stale.
    """
    path = files("check_jsonschema") / "builtin_schemas" / "vendor" / "compose-spec.json"
    return json.loads(path.read_text())


def compose_errors(doc: Any) -> list[str]:
    schema = compose_spec_schema()
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def dockerfile(path: Path) -> list[dict[str, Any]]:
    """Instructions of a Dockerfile (continuations joined, comments dropped), from dockerfile-parse."""
    with path.open("rb") as f:
        parser = DockerfileParser(fileobj=f, env_replace=False)
        return [i for i in parser.structure if i["instruction"] != "COMMENT"]


def instructions(structure: list[dict[str, Any]], name: str) -> list[str]:
    return [i["value"] for i in structure if i["instruction"] == name]


def arg_defaults(structure: list[dict[str, Any]]) -> dict[str, str]:
    args: dict[str, str] = {}
    for value in instructions(structure, "ARG"):
        key, _, default = value.partition("=")
        args[key.strip()] = default.strip().strip('"')
    return args


def json_form(value: str) -> list[str]:
    """CMD/ENTRYPOINT in exec form (a JSON array): shell form would break signals to the server."""
    parsed = json.loads(value)
    assert isinstance(parsed, list), f"not exec form: {value}"
    return parsed


def option(argv: list[str], *names: str) -> str | None:
    for i, arg in enumerate(argv[:-1]):
        if arg in names:
            return argv[i + 1]
    return None


def dockerignored(rel: str, patterns: list[str]) -> bool:
    """Whether a context path is excluded by .dockerignore patterns (last match wins; ``!`` re-includes)."""
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").strip("/")
        if fnmatch.fnmatch(rel, pat) or rel.startswith(pat + "/") or pat == "*":
            excluded = not negate
    return excluded


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE)


@pytest.fixture(scope="module")
def compose(env: dict[str, str]) -> dict[str, Any]:
    return load_compose(env)


# ------------------------------------------------------------------------------------------------
# The compose file
# ------------------------------------------------------------------------------------------------


def test_compose_file_matches_the_compose_specification(env: dict[str, str]) -> None:
    raw = load_compose()
    assert compose_errors(raw) == []
    assert compose_errors(interpolate(raw, env)) == []

    # The schema is strict where it matters: a misspelt GPU reservation or a missing capability is caught.
    bad = copy.deepcopy(raw)
    device = bad["services"]["code-location"]["deploy"]["resources"]["reservations"]["devices"][0]
    device["capabilites"] = device.pop("capabilities")
    errors = compose_errors(bad)
    assert any("capabilites" in e for e in errors) and any("capabilities" in e for e in errors), errors
    bad = copy.deepcopy(raw)
    bad["services"]["webserver"]["depends_on"]["postgres"]["condition"] = "service_ready"
    assert compose_errors(bad)


def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    """``docker compose config`` (the real Compose parser and interpolation) where the CLI plugin exists."""
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("`docker compose` (the Compose CLI plugin) is not installed; the schema test covers the file")
    cmd = [docker, "compose", "-f", str(COMPOSE), "--env-file", str(ENV_EXAMPLE), "config", "--format", "json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    config = json.loads(proc.stdout)
    assert set(config["services"]) == set(load_compose()["services"])
    devices = config["services"]["code-location"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"]


def test_every_compose_variable_has_a_value_or_default(env: dict[str, str]) -> None:
    raw = load_compose()
    interpolate(raw, env)  # raises on an unset variable without default
    used = {m.group(1) or m.group(4) for m in _VAR.finditer(COMPOSE.read_text()) if m.group(0) != "$$"}
    for secret in ("POSTGRES_PASSWORD", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"):
        assert secret in used and secret in env, f"{secret} must come from docker/.env"
        assert f"${{{secret}:?" in COMPOSE.read_text(), f"{secret} must be required, with no default in the file"
    with pytest.raises(ValueError, match="POSTGRES_PASSWORD"):
        interpolate(raw, {k: v for k, v in env.items() if k != "POSTGRES_PASSWORD"})


def test_compose_services_and_wiring(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"postgres", "minio", "minio-init", "webserver", "daemon", "code-location"} <= set(services)

    # Every dependency exists; the stack comes up in order.
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
    assert services["code-location"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["code-location"]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    for name in ("webserver", "daemon"):
        assert services[name]["depends_on"]["code-location"]["condition"] == "service_healthy"
    for name in ("postgres", "minio", "code-location"):
        assert "test" in services[name]["healthcheck"], f"{name} needs a healthcheck for depends_on"

    # Dagster's processes: the webserver on 3000, the daemon, and the gRPC code server.
    assert "3000:3000" in services["webserver"]["ports"]
    assert services["webserver"]["command"][0] == "dagster-webserver"
    assert services["daemon"]["command"][:2] == ["dagster-daemon", "run"]
    code_cmd = services["code-location"]["command"]
    assert code_cmd[:3] == ["dagster", "code-server", "start"] or code_cmd[:3] == ["dagster", "api", "grpc"]
    assert option(code_cmd, "--host", "-h") == "0.0.0.0"
    assert option(code_cmd, "--module-name", "-m") == "assets.definitions"
    assert option(code_cmd, "--attribute", "-a") == "defs"
    assert importlib.util.find_spec("assets.definitions") is not None
    assert re.search(r"^defs = ", (REPO / "assets" / "definitions.py").read_text(), re.M)

    # The webserver and the daemon load the code over gRPC from the code-location service, on its port.
    port = option(code_cmd, "--port", "-p")
    assert port in [str(p) for p in services["code-location"]["expose"]]
    for name in ("webserver", "daemon"):
        workspace = option(services[name]["command"], "--workspace", "-w")
        assert workspace == "/opt/dagster/app/workspace.yaml"
    (entry,) = yaml.safe_load((DOCKER / "workspace.yaml").read_text())["load_from"]
    assert entry["grpc_server"]["host"] == "code-location"
    assert str(entry["grpc_server"]["port"]) == port


def test_gpu_is_reserved_for_the_code_location_where_runs_execute(compose: dict[str, Any]) -> None:
    services = compose["services"]
    with_gpu = [name for name, svc in services.items() if "devices" in str(svc.get("deploy", {}))]
    assert with_gpu == ["code-location"]
    (device,) = services["code-location"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia"
    assert device["capabilities"] == ["gpu"]
    assert str(device["count"]) == "all" or int(device["count"]) >= 1
    # DataLoader workers need more shared memory than Docker's 64 MB default.
    assert "shm_size" in services["code-location"]
    # ... and the runs do execute there: the instance launches them in the code server's container.
    config, _ = dagster_instance_config(str(DOCKER))
    assert config["run_launcher"]["class"] == "DefaultRunLauncher"


def test_code_location_reads_and_writes_minio(compose: dict[str, Any], env: dict[str, str]) -> None:
    services = compose["services"]
    code_env = services["code-location"]["environment"]
    assert code_env["GAN_DATA_ROOT"].startswith("s3://")
    assert code_env["GAN_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert code_env["AWS_ACCESS_KEY_ID"] == env["MINIO_ROOT_USER"]
    assert code_env["AWS_SECRET_ACCESS_KEY"] == env["MINIO_ROOT_PASSWORD"]
    bucket = code_env["GAN_DATA_ROOT"].removeprefix("s3://").split("/")[0]

    minio = services["minio"]
    assert "9000:9000" in minio["ports"] and minio["command"][:2] == ["server", "/data"]
    init = services["minio-init"]
    assert init["image"].split(":")[0] == "minio/mc"
    assert init["environment"]["GAN_BUCKET"] == bucket
    script = " ".join(init["command"])
    assert "mc alias set" in script and "http://minio:9000" in script
    assert "mc mb --ignore-existing" in script and "$GAN_BUCKET" in script
    assert init["restart"] == "no"


def test_dagster_services_share_instance_config_and_storage(compose: dict[str, Any], env: dict[str, str]) -> None:
    services = compose["services"]
    dagster_yaml_text = (DOCKER / "dagster.yaml").read_text()
    needed = set(re.findall(r"env:\s*(\w+)", dagster_yaml_text))
    assert needed, "dagster.yaml should read its connection settings from the environment"
    for name in DAGSTER_SERVICES:
        svc_env = services[name]["environment"]
        assert svc_env["DAGSTER_HOME"] == DAGSTER_HOME
        assert needed <= set(svc_env), f"{name} lacks {needed - set(svc_env)}"
        assert svc_env["DAGSTER_POSTGRES_HOST"] == "postgres"
        assert svc_env["DAGSTER_POSTGRES_PASSWORD"] == env["POSTGRES_PASSWORD"]
        volumes = services[name]["volumes"]
        assert f"./dagster.yaml:{DAGSTER_HOME}/dagster.yaml:ro" in volumes
        assert f"dagster-home:{DAGSTER_HOME}" in volumes, "compute logs must be visible to the webserver"
        assert (COMPOSE.parent / "dagster.yaml").is_file()
    pg = services["postgres"]["environment"]
    assert services["webserver"]["environment"]["DAGSTER_POSTGRES_USER"] == pg["POSTGRES_USER"]
    assert services["webserver"]["environment"]["DAGSTER_POSTGRES_DB"] == pg["POSTGRES_DB"]
    for volume in ("postgres-data", "minio-data", "dagster-home"):
        assert volume in compose["volumes"]


# ------------------------------------------------------------------------------------------------
# The Dockerfiles
# ------------------------------------------------------------------------------------------------


def _built_services(compose: dict[str, Any]) -> dict[str, tuple[Path, Path]]:
    """Service -> (build context, Dockerfile), resolved as Compose does: relative to the compose file."""
    built = {}
    for name, svc in compose["services"].items():
        if "build" in svc:
            context = (COMPOSE.parent / svc["build"]["context"]).resolve()
            built[name] = (context, context / svc["build"].get("dockerfile", "Dockerfile"))
    return built


def test_dockerfiles_copy_existing_paths_and_expose_the_compose_ports(compose: dict[str, Any]) -> None:
    built = _built_services(compose)
    assert built["code-location"][1] == DOCKER / "Dockerfile.code"
    assert built["webserver"][1] == built["daemon"][1] == DOCKER / "Dockerfile.dagster"
    for name, (context, path) in built.items():
        assert context.is_dir() and path.is_file(), name
        structure = dockerfile(path)
        first = next(i for i in structure if i["instruction"] != "ARG")
        assert first["instruction"] == "FROM", f"{path.name}: FROM must come first"
        ignore = path.with_name(path.name + ".dockerignore")
        patterns = [ln.strip() for ln in ignore.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        for value in instructions(structure, "COPY") + instructions(structure, "ADD"):
            parts = [p for p in value.split() if not p.startswith("--")]
            assert "--from" not in value
            for src in parts[:-1]:
                assert (context / src).exists(), f"{path.name}: COPY {src}: not in the build context {context}"
                assert not dockerignored(src, patterns), f"{path.name}: COPY {src} is excluded by {ignore.name}"
        users = instructions(structure, "USER")
        assert users and users[-1] not in ("root", "0"), f"{path.name}: run as an unprivileged user"

    code = dockerfile(built["code-location"][1])
    assert instructions(code, "EXPOSE") == [option(compose["services"]["code-location"]["command"], "--port")]
    assert json_form(instructions(code, "CMD")[-1]) == compose["services"]["code-location"]["command"]
    web = dockerfile(built["webserver"][1])
    assert instructions(web, "EXPOSE") == ["3000"]
    assert json_form(instructions(web, "CMD")[-1]) == compose["services"]["webserver"]["command"]


def test_dockerfile_ignore_keeps_the_code_context_small() -> None:
    patterns = [ln for ln in (DOCKER / "Dockerfile.code.dockerignore").read_text().splitlines() if ln.strip()]
    for heavy in (".venv", "data", "runs", ".dagster_home", "benchmarks", "tests"):
        assert dockerignored(heavy, patterns), heavy
    for needed in ("pyproject.toml", "assets", "ganmodels", "pipelines", "config"):
        assert not dockerignored(needed, patterns), needed


def test_dockerfiles_pin_the_dagster_release_the_tests_run_and_cuda_torch() -> None:
    import dagster_postgres

    makefile = (REPO / "Makefile").read_text()
    torch_version = re.search(r"^TORCH_VERSION\s*\?=\s*(\S+)", makefile, re.M)
    assert torch_version
    for name in ("Dockerfile.code", "Dockerfile.dagster"):
        structure = dockerfile(DOCKER / name)
        args = arg_defaults(structure)
        assert args["DAGSTER_VERSION"] == dg.__version__, f"{name}: update DAGSTER_VERSION to {dg.__version__}"
        assert args["DAGSTER_LIBS_VERSION"] == dagster_postgres.__version__
        runs = " ".join(instructions(structure, "RUN"))
        assert '"dagster-postgres==${DAGSTER_LIBS_VERSION}"' in runs
        assert "pip check" in runs

    code = dockerfile(DOCKER / "Dockerfile.code")
    args = arg_defaults(code)
    runs = " ".join(instructions(code, "RUN"))
    assert args["TORCH_VERSION"] == torch_version.group(1)
    # The CUDA build: PyPI's Linux wheel or a CUDA index, never the CPU-only index.
    assert '"torch==${TORCH_VERSION}"' in runs
    assert "whl/cpu" not in (DOCKER / "Dockerfile.code").read_text()
    assert args["TORCH_INDEX_URL"] == "" or "/whl/cu" in args["TORCH_INDEX_URL"]
    assert re.search(r"pip install \.(\s|$)", runs), "the code image installs the project"
    env = " ".join(instructions(code, "ENV"))
    assert f"DAGSTER_HOME={DAGSTER_HOME}" in env and "GAN_PROJECT_DIR=/opt/gan-pipelines" in env


# ------------------------------------------------------------------------------------------------
# dagster.yaml: Dagster's schema, then a real Postgres
# ------------------------------------------------------------------------------------------------


def test_dagster_yaml_passes_dagsters_instance_schema() -> None:
    config, custom_class = dagster_instance_config(str(DOCKER))
    assert custom_class is None
    db = config["storage"]["postgres"]["postgres_db"]
    for key in ("hostname", "port", "username", "password", "db_name"):
        assert isinstance(db[key], dict) and "env" in db[key], f"postgres_db.{key} must come from the environment"
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert config["concurrency"]["pools"]["default_limit"] >= 1
    assert config["concurrency"]["pools"]["granularity"] in ("run", "op")

    # The real check rejects what it should: a misspelt key fails validation.
    broken = yaml.safe_load((DOCKER / "dagster.yaml").read_text())
    broken["concurrency"]["pools"]["default_limt"] = broken["concurrency"]["pools"].pop("default_limit")
    with pytest.raises(dg.DagsterInvalidConfigError):
        _validate(broken)


def _validate(config: dict[str, Any]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "dagster.yaml").write_text(yaml.safe_dump(config))
        dagster_instance_config(d)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for the session (installed from Debian's package when missing and allowed)."""
    bindir, reason = ensure_installed()
    if bindir is None:
        pytest.skip(reason)
    server = PostgresServer(bindir).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def instance(postgres: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dg.DagsterInstance]:
    """docker/dagster.yaml as the containers load it, its env vars (set by compose there) naming the test server."""
    for key, value in {
        "DAGSTER_POSTGRES_HOST": postgres.host,
        "DAGSTER_POSTGRES_PORT": str(postgres.port),
        "DAGSTER_POSTGRES_USER": postgres.user,
        "DAGSTER_POSTGRES_PASSWORD": postgres.password,
        "DAGSTER_POSTGRES_DB": postgres.dbname,
    }.items():
        monkeypatch.setenv(key, value)
    home = tmp_path / "dagster_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    ref = InstanceRef.from_dir(str(home), config_dir=str(DOCKER))
    inst = dg.DagsterInstance.from_ref(ref)
    try:
        yield inst
    finally:
        inst.dispose()


def _query(postgres: PostgresServer, sql: str, *params: object) -> list[tuple[Any, ...]]:
    import psycopg2

    conn = psycopg2.connect(postgres.url)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()
    finally:
        conn.close()


def test_instance_uses_postgres_queued_coordinator_and_default_launcher(instance: dg.DagsterInstance) -> None:
    from dagster._core.launcher import DefaultRunLauncher
    from dagster._core.run_coordinator import QueuedRunCoordinator
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

    assert isinstance(instance.run_storage, PostgresRunStorage)
    assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
    assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
    assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
    assert isinstance(instance.run_launcher, DefaultRunLauncher)
    config = yaml.safe_load((DOCKER / "dagster.yaml").read_text())
    queue = instance.get_concurrency_config().run_queue_config
    assert queue is not None and queue.max_concurrent_runs == config["concurrency"]["runs"]["max_concurrent_runs"]
    assert instance.run_monitoring_enabled


def test_materialisation_lands_in_postgres(instance: dg.DagsterInstance, postgres: PostgresServer) -> None:
    @dg.asset(pool="gpu")
    def deploy_check_asset() -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"rows": 3})

    result = dg.materialize([deploy_check_asset], instance=instance)
    assert result.success
    run_id = result.run_id

    # Through Dagster...
    record = instance.get_run_record_by_id(run_id)
    assert record is not None and record.dagster_run.status == dg.DagsterRunStatus.SUCCESS
    event = instance.get_latest_materialization_event(dg.AssetKey("deploy_check_asset"))
    assert event is not None and event.run_id == run_id
    # ... and in the database itself, so the rows are not in some SQLite file next to DAGSTER_HOME.
    assert _query(postgres, "SELECT status FROM runs WHERE run_id = %s", run_id) == [("SUCCESS",)]
    (count,) = _query(
        postgres,
        "SELECT count(*) FROM event_logs WHERE run_id = %s AND dagster_event_type = 'ASSET_MATERIALIZATION'",
        run_id,
    )[0]
    assert count == 1
    keys = [k for (k,) in _query(postgres, "SELECT asset_key FROM asset_keys")]
    assert json.dumps(["deploy_check_asset"]) in keys
    assert not list(Path(instance.root_directory).rglob("*.db")), "no SQLite storage may be created"


def test_concurrency_pools_round_trip(instance: dg.DagsterInstance, postgres: PostgresServer) -> None:
    config = yaml.safe_load((DOCKER / "dagster.yaml").read_text())["concurrency"]["pools"]
    pools = instance.get_concurrency_config().pool_config
    assert pools.default_pool_limit == config["default_limit"] == instance.global_op_concurrency_default_limit
    assert pools.pool_granularity == PoolGranularity(config["granularity"])

    storage = instance.event_log_storage
    assert storage.supports_global_concurrency_limits
    # What the daemon does when a queued run first uses a pool: it gets the default limit (one GPU).
    storage.initialize_concurrency_limit_to_default("gpu")
    assert storage.get_concurrency_info("gpu").slot_count == config["default_limit"]
    # `dagster instance concurrency set gpu 2` on a two-GPU machine, stored in Postgres.
    storage.set_concurrency_slots("gpu", 2)
    try:
        assert storage.get_concurrency_info("gpu").slot_count == 2
        assert "gpu" in storage.get_concurrency_keys()
        assert _query(postgres, "SELECT count(*) FROM concurrency_slots WHERE concurrency_key = 'gpu'")[0][0] == 2
    finally:
        storage.set_concurrency_slots("gpu", config["default_limit"])
    assert storage.get_concurrency_info("gpu").slot_count == config["default_limit"]
