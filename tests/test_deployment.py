"""The shared deployment: docker-compose.yml, the Dockerfile and .env.example.

No Docker engine runs here or in CI, so the files are checked as files, and the commands the
containers would run are run natively: the PostgreSQL init script, `mlflow server`, two
workers at once and optuna-dashboard, against the local PostgreSQL server, with only hosts,
ports, paths and database names substituted.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from _checks import assert_mirrored_once, assert_study_is_whole, mlflow_runs
from _servers import free_port, serving

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
INIT_DIR = ROOT / "docker" / "postgres-init"
BIN = Path(sys.executable).parent  # the venv's console scripts: hpo, mlflow, optuna-dashboard

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}; $$ is a literal $.
_VARIABLE = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_]\w*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")
_SECRET_KEY = re.compile(r"PASSWORD|SECRET|TOKEN", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"://[^/\s:@\"]+:([^@\s\"]+)@")


# -- reading the files -------------------------------------------------------------------------


def _compose_text() -> str:
    return COMPOSE.read_text(encoding="utf-8")


def _env_example() -> dict[str, str]:
    """The assignments of .env.example (compose reads .env in the same format)."""
    values = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f".env.example: not NAME=value: {line!r}"
            values[name.strip()] = value.strip()
    return values


def _interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """`value` with compose's variable syntax substituted from `env`, as `docker compose` does."""
    if isinstance(value, dict):
        return {key: _interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [_interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name", "op", "arg")
        found = env.get(name)
        missing = found is None or (found == "" and op is not None and op.startswith(":"))
        if not missing or op is None:
            return found or ""
        if op.endswith("?"):
            raise KeyError(f"{name} is required: {arg}")
        return arg

    return _VARIABLE.sub(substitute, value)


TEST_PASSWORD = "a-password-set-in-env"


def _stack(**overrides: str) -> dict[str, Any]:
    """docker-compose.yml as `docker compose config` would see it with .env.example as .env,
    the password set (as the user must)."""
    env = _env_example() | {"POSTGRES_PASSWORD": TEST_PASSWORD} | overrides
    return _interpolate(yaml.safe_load(_compose_text()), env)


def _services(**overrides: str) -> dict[str, dict[str, Any]]:
    return _stack(**overrides)["services"]


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    instructions = []
    for line in joined.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, _, arguments = line.strip().partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def _dockerfile_env() -> dict[str, str]:
    env = {}
    for keyword, arguments in _dockerfile():
        if keyword == "ENV":
            env |= dict(item.split("=", 1) for item in shlex.split(arguments))
    return env


def _flag_value(command: list[str], flag: str) -> str:
    assert flag in command, f"{flag} is missing from {command}"
    return command[command.index(flag) + 1]


def _with_values(command: list[str], **values: str) -> list[str]:
    """`command` with the value after each flag replaced: `port="5001"` sets `--port 5001`."""
    command = list(command)
    for name, value in values.items():
        flag = "--" + name.replace("_", "-")
        _flag_value(command, flag)
        command[command.index(flag) + 1] = value
    return command


def _url(text: str):
    from sqlalchemy.engine import make_url

    return make_url(text)


# -- static checks -----------------------------------------------------------------------------


def test_the_stack_has_its_four_services():
    assert set(_services()) == {"postgres", "mlflow", "worker", "dashboard"}


def test_every_published_port_is_on_localhost_only():
    published = 0
    for name, service in _services().items():
        for port in service.get("ports", []):
            host_ip = port.get("host_ip") if isinstance(port, dict) else str(port).split(":")[0]
            assert host_ip == "127.0.0.1", f"{name}: port {port} is not bound to 127.0.0.1"
            published += 1
    assert published == 3  # postgres (for tunnels), mlflow, dashboard


def test_no_password_is_written_down():
    raw = yaml.safe_load(_compose_text())["services"]
    for name, service in raw.items():
        environment = service.get("environment", {})
        assert isinstance(environment, dict), f"{name}: write environment as a mapping"
        for key, value in environment.items():
            if _SECRET_KEY.search(key):
                assert re.fullmatch(r"\$\{[^}]+\}", str(value)), f"{name}: {key} is literal"
    # Every password in a URL is the variable's value, wherever the URL is.
    sentinel = "sentinel-from-env"
    passwords = re.findall(_URL_PASSWORD, json.dumps(_stack(POSTGRES_PASSWORD=sentinel)))
    assert len(passwords) == 3  # the worker's and the dashboard's storage, MLflow's store
    assert set(passwords) == {sentinel}
    dockerfile = DOCKERFILE.read_text(encoding="utf-8")
    assert not _URL_PASSWORD.search(dockerfile)
    assert not [a for k, a in _dockerfile() if k in ("ENV", "ARG") and _SECRET_KEY.search(a)]


def test_every_variable_is_in_env_example_and_nothing_else_is():
    text = _compose_text()
    used = {m.group("name") for m in _VARIABLE.finditer(text) if m.group("name")}
    assert not re.search(r"\$(?![{$])", text.replace("$$", "")), "use ${NAME}, never $NAME"
    assert used == set(_env_example())


def test_a_missing_password_stops_compose_with_a_message():
    env = _env_example()
    del env["POSTGRES_PASSWORD"]
    with pytest.raises(KeyError, match=r"POSTGRES_PASSWORD is required: .*\.env"):
        _interpolate(yaml.safe_load(_compose_text()), env)


def test_an_unedited_copy_of_env_example_does_not_start_with_a_known_password():
    """.env.example ships no password: a copy used as it is stops compose, saying why."""
    assert _env_example()["POSTGRES_PASSWORD"] == ""
    with pytest.raises(KeyError, match=r"POSTGRES_PASSWORD is required: .*\.env"):
        _interpolate(yaml.safe_load(_compose_text()), _env_example())


def test_the_env_file_stays_out_of_git_and_of_the_image():
    assert ".env" in (ROOT / ".gitignore").read_text(encoding="utf-8").split()
    assert ".env" in (ROOT / ".dockerignore").read_text(encoding="utf-8").split()


def test_postgres_is_checked_with_pg_isready_and_keeps_its_data_in_a_volume():
    stack = _stack()
    postgres = stack["services"]["postgres"]
    assert re.fullmatch(r"postgres:\d+", postgres["image"]), "pin a major version"
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    mounts = dict(reversed(volume.split(":")[:2]) for volume in postgres["volumes"])
    assert mounts["/var/lib/postgresql/data"] in stack["volumes"]
    init = ROOT / mounts["/docker-entrypoint-initdb.d"]
    assert init == INIT_DIR
    scripts = sorted(INIT_DIR.iterdir())
    assert scripts, f"no init script in {INIT_DIR}"
    assert all(os.access(script, os.X_OK) for script in scripts), "the image sources others"


def test_every_service_depends_on_what_it_connects_to():
    services = _services()
    for name in ("mlflow", "worker", "dashboard"):
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["worker"]["depends_on"]["mlflow"]["condition"] == "service_healthy"
    assert "healthcheck" in services["mlflow"]
    assert "restart" in services["dashboard"]  # it exits until the first worker made the schema


def test_the_worker_can_be_scaled():
    worker = _services()["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker


def test_the_worker_runs_a_study_file_that_loads(monkeypatch):
    from hpo.cli.main import build_parser
    from hpo.spec.study_file import load_study_file

    command = _services()["worker"]["command"]
    assert command[0] == "hpo"
    args = build_parser().parse_args(command[1:])
    assert args.command == "run"
    assert args.storage is None, "the storage comes from the environment"
    assert args.tracking_uri is None, "the tracking URI comes from the environment"
    monkeypatch.chdir(ROOT)  # the image's working directory holds studies/ as here
    spec = load_study_file(args.study_file)
    assert spec.data.dataset == "digits", "the image holds no other data"
    assert ("COPY", "studies ./studies") in _dockerfile()


def test_the_services_share_one_database_server_and_mlflow_has_its_own_database():
    from hpo.storage.database import STORAGE_ENV
    from hpo.tracking.runs import TRACKING_URI_ENV

    services = _services()
    postgres_env = services["postgres"]["environment"]
    worker_env = services["worker"]["environment"]
    optuna = _url(worker_env[STORAGE_ENV])
    mlflow = _url(_flag_value(services["mlflow"]["command"], "--backend-store-uri"))
    for url in (optuna, mlflow):
        assert url.drivername == "postgresql+psycopg"
        assert (url.host, url.port) == ("postgres", 5432)
        assert url.username == postgres_env["POSTGRES_USER"]
        assert url.password == TEST_PASSWORD
    assert optuna.database == postgres_env["POSTGRES_DB"]
    assert mlflow.database == postgres_env["MLFLOW_DB"] != optuna.database
    assert services["dashboard"]["command"][1] == worker_env[STORAGE_ENV]
    port = _flag_value(services["mlflow"]["command"], "--port")
    assert worker_env[TRACKING_URI_ENV] == f"http://mlflow:{port}"


def test_the_mlflow_command_parses_as_mlflow_server():
    from mlflow.cli import server  # the click command behind `mlflow server --help`

    stack = _stack()
    mlflow = stack["services"]["mlflow"]
    assert mlflow["command"][:2] == ["mlflow", "server"]
    params = server.make_context("mlflow server", mlflow["command"][2:]).params
    assert params["serve_artifacts"]
    assert params["host"] == "0.0.0.0"
    volumes = dict(reversed(volume.split(":")[:2]) for volume in mlflow["volumes"])
    assert volumes[params["artifacts_destination"]] in stack["volumes"]
    assert "mlflow:5000" in params["allowed_hosts"].split(",")  # see the native test


def test_the_dashboard_command_has_only_flags_optuna_dashboard_knows():
    dashboard_cli = BIN / "optuna-dashboard"
    if not dashboard_cli.exists():
        pytest.skip("optuna-dashboard is not installed: pip install -e '.[dev]'")
    help_text = subprocess.run(
        [dashboard_cli, "--help"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    known = set(re.findall(r"--[a-z][a-z-]*", help_text))
    command = _services()["dashboard"]["command"]
    assert command[0] == "optuna-dashboard"
    assert {arg for arg in command if arg.startswith("--")} <= known
    assert _flag_value(command, "--host") == "0.0.0.0"
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert any("optuna-dashboard" in r for r in extras["optional-dependencies"]["dashboard"])
    assert any("[dashboard]" in a for k, a in _dockerfile() if k == "RUN" and "pip" in a)


def test_the_image_runs_as_a_user_with_one_blas_thread():
    instructions = _dockerfile()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    users = [arguments for keyword, arguments in instructions if keyword == "USER"]
    assert users, "the image runs as root"
    assert users[-1].split(":")[0] not in ("root", "0")
    assert _dockerfile_env()["OPENBLAS_NUM_THREADS"] == "1"


# -- the same commands, run natively -----------------------------------------------------------


def _status(url: str, host: str) -> int:
    request = urllib.request.Request(url, headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


@pytest.fixture
def mlflow_database_url(fresh_postgres_url: str) -> Iterator[str]:
    """MLflow's database beside the study's, made by the stack's own init script."""
    import sqlalchemy

    if not shutil.which("psql"):
        pytest.skip("psql is not installed (the init script runs it)")
    study_db = _url(fresh_postgres_url)
    name = f"{study_db.database}_mlflow"
    env = os.environ | {
        "PGHOST": study_db.host or "127.0.0.1",
        "PGPORT": str(study_db.port or 5432),
        "PGPASSWORD": study_db.password or "",
        "POSTGRES_USER": study_db.username or "postgres",
        "POSTGRES_DB": study_db.database,
        "MLFLOW_DB": name,
    }
    for script in sorted(INIT_DIR.iterdir()):
        subprocess.run([script], env=env, check=True, capture_output=True, timeout=60)
    try:
        yield study_db.set(database=name).render_as_string(hide_password=False)
    finally:
        engine = sqlalchemy.create_engine(study_db, isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


@pytest.mark.slow
def test_the_stacks_commands_run_a_study_with_two_workers(
    fresh_postgres_url, mlflow_database_url, tiny_study_file, tmp_path
):
    from hpo.storage.database import STORAGE_ENV
    from hpo.tracking.runs import TRACKING_URI_ENV

    if not (BIN / "optuna-dashboard").exists():
        pytest.skip("optuna-dashboard is not installed: pip install -e '.[dev]'")
    n_trials = 6
    study_file = tiny_study_file(n_trials=n_trials, epochs=3)
    services = _services(HPO_STUDY=str(study_file))
    mlflow_port, dashboard_port = free_port(), free_port()
    mlflow_uri = f"http://127.0.0.1:{mlflow_port}"
    artifacts = tmp_path / "artifacts"

    mlflow_command = _with_values(
        services["mlflow"]["command"],
        backend_store_uri=mlflow_database_url,
        artifacts_destination=str(artifacts),
        host="127.0.0.1",
        port=str(mlflow_port),
    )
    with serving(
        [str(BIN / "mlflow"), *mlflow_command[1:]],
        f"{mlflow_uri}/health",
        tmp_path / "mlflow.log",
    ):
        # The server accepts the Host header the workers send in the stack, and refuses others.
        search = f"{mlflow_uri}/api/2.0/mlflow/experiments/search?max_results=1"
        in_stack = services["worker"]["environment"][TRACKING_URI_ENV].removeprefix("http://")
        assert _status(search, in_stack) == 200
        assert _status(search, f"localhost:{mlflow_port}") == 200
        assert _status(search, "example.com") == 403

        local = {STORAGE_ENV: fresh_postgres_url, TRACKING_URI_ENV: mlflow_uri}
        assert set(services["worker"]["environment"]) == set(local)
        env = os.environ | _dockerfile_env() | local
        worker_command = [str(BIN / "hpo"), *services["worker"]["command"][1:]]
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
        workers = [  # both at once, as `docker compose up --scale worker=2` starts them
            subprocess.Popen(worker_command, env=env, cwd=tmp_path, **pipes) for _ in range(2)
        ]
        for worker in workers:
            _out, err = worker.communicate(timeout=180)
            assert worker.returncode == 0, err
            assert "Traceback" not in err, err

        states = assert_study_is_whole(fresh_postgres_url, n_trials)
        assert states == {"COMPLETE": n_trials}
        assert_mirrored_once(fresh_postgres_url, mlflow_uri, "tiny")  # one parent, one child each
        assert len(mlflow_runs(mlflow_uri, "tiny")[1]) == n_trials
        assert list(artifacts.rglob(study_file.name)), "the study file went through the server"

    dashboard_command = services["dashboard"]["command"]
    assert dashboard_command[1] == services["worker"]["environment"][STORAGE_ENV]
    dashboard_command = _with_values(
        [str(BIN / "optuna-dashboard"), fresh_postgres_url, *dashboard_command[2:]],
        host="127.0.0.1",
        port=str(dashboard_port),
    )
    dashboard = f"http://127.0.0.1:{dashboard_port}"
    with serving(dashboard_command, f"{dashboard}/", tmp_path / "dashboard.log"):
        with urllib.request.urlopen(f"{dashboard}/api/studies", timeout=10) as response:
            studies = json.load(response)["study_summaries"]
        assert [s["study_name"] for s in studies] == ["tiny"]
