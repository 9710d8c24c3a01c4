"""The deployment artifacts hold together: every manifest under deploy/ parses
and names itself, the KServe runtime and the plain Kubernetes objects point at
the port and the health routes Depot really serves, and the Dockerfile builds
from files that exist and reach the build context.

These are static checks: nothing here builds an image or talks to a cluster.
"""
from __future__ import annotations

import ast
import base64
import fnmatch
import json
import re
import shlex
from pathlib import Path
from urllib.parse import urlsplit
from typing import Any

import pytest
import yaml
from flask import Flask

from app.web import api

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
YAML_FILES = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))
PORT = 8080
MODELS_DIR = "/mnt/models"
# Which route each probe must hit: ready says "serve me traffic", live says
# "do not restart me"; swapping them restarts pods that are only loading.
PROBES = [("readinessProbe", "/v2/health/ready"), ("livenessProbe", "/v2/health/live")]
# The plain Kubernetes variants: one pod on SQLite, several on PostgreSQL.
ONE_HOST = "deploy/kubernetes/depot.yaml"
REPLICAS = "deploy/kubernetes/depot-replicas.yaml"


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def load(path: Path) -> list[dict[str, Any]]:
    with path.open() as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


@pytest.fixture(scope="module")
def documents() -> list[tuple[str, dict[str, Any]]]:
    return [(rel(path), doc) for path in YAML_FILES for doc in load(path)]


def only(documents: list[tuple[str, dict[str, Any]]], kind: str) -> dict[str, Any]:
    found = [doc for _, doc in documents if doc.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind} under deploy/, found {len(found)}"
    return found[0]


def in_file(documents: list[tuple[str, dict[str, Any]]], path: str, kind: str,
            name: str | None = None) -> dict[str, Any]:
    """The one object of that kind (and name) in one file: objects refer to
    each other by name within the file that is applied together."""
    found = [doc for where, doc in documents if where == path and doc.get("kind") == kind
             and name in (None, doc["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''} in {path}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def get_routes() -> set[str]:
    """The GET routes Depot serves, read from its own blueprint."""
    app = Flask("routes")
    app.register_blueprint(api.bp)
    return {rule.rule for rule in app.url_map.iter_rules() if "GET" in rule.methods}


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def secret_ref(container: dict[str, Any], name: str) -> dict[str, Any]:
    [ref] = [e["valueFrom"]["secretKeyRef"] for e in container.get("env", [])
             if e["name"] == name and "secretKeyRef" in e.get("valueFrom", {})]
    return ref


def secret_value(secret: dict[str, Any], key: str) -> str:
    """A Secret's key, written plain (stringData) or base64 (data)."""
    if key in secret.get("stringData", {}):
        return secret["stringData"][key]
    assert key in secret.get("data", {}), f"Secret {secret['metadata']['name']} has no {key!r}"
    return base64.b64decode(secret["data"][key]).decode()


def binds(gunicorn_args: str) -> list[str]:
    args = shlex.split(gunicorn_args)
    found = [args[i + 1] for i, a in enumerate(args[:-1]) if a in ("--bind", "-b")]
    return found + [a.split("=", 1)[1] for a in args if a.startswith("--bind=")]


def resolve_port(container: dict[str, Any], ref: int | str) -> int:
    """A probe or Service port given by number or by the container port's name."""
    if isinstance(ref, int):
        return ref
    named = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
    assert ref in named, f"port {ref!r} names no port of container {container['name']}"
    return named[ref]


UNITS = {"m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9,
         "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}


def quantity(value: str | int) -> float:
    match = re.fullmatch(r"([0-9.]+)(m|k|M|G|Ki|Mi|Gi)?", str(value))
    assert match, f"unreadable quantity {value!r}"
    return float(match[1]) * UNITS[match[2] or ""]


def check_resources(container: dict[str, Any]) -> None:
    """Requests and limits for cpu and memory, requests within limits (the API
    server rejects a request above its limit)."""
    resources = container["resources"]
    for name in ("cpu", "memory"):
        request, limit = resources["requests"][name], resources["limits"][name]
        assert quantity(request) <= quantity(limit), f"{name}: request {request} > limit {limit}"


# -- every manifest ------------------------------------------------------------

@pytest.mark.parametrize("path", YAML_FILES, ids=rel)
def test_every_document_names_itself(path):
    docs = load(path)
    assert docs, f"{rel(path)} holds no document"
    for doc in docs:
        assert isinstance(doc.get("apiVersion"), str) and doc["apiVersion"]
        assert isinstance(doc.get("kind"), str) and doc["kind"]
        assert isinstance(doc.get("metadata", {}).get("name"), str) and doc["metadata"]["name"]


@pytest.mark.parametrize("path, api_version, kind, name", [
    ("deploy/kserve/servingruntime.yaml", "serving.kserve.io/v1alpha1", "ServingRuntime", "depot"),
    ("deploy/kserve/inferenceservice.yaml", "serving.kserve.io/v1beta1", "InferenceService",
     "mnist-svm"),
    (ONE_HOST, "apps/v1", "Deployment", "depot"),
    (ONE_HOST, "v1", "Service", "depot"),
    (REPLICAS, "v1", "Secret", "depot-state"),
    (REPLICAS, "apps/v1", "StatefulSet", "depot-postgres"),
    (REPLICAS, "v1", "Service", "depot-postgres"),
    (REPLICAS, "v1", "PersistentVolumeClaim", "depot-models"),
    (REPLICAS, "apps/v1", "Deployment", "depot"),
    (REPLICAS, "v1", "Service", "depot"),
])
def test_expected_objects(documents, path, api_version, kind, name):
    found = [doc for where, doc in documents
             if where == path and doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(found) == 1, f"no {kind} {name!r} in {path}"
    assert found[0]["apiVersion"] == api_version


# -- KServe --------------------------------------------------------------------

@pytest.fixture(scope="module")
def runtime(documents) -> dict[str, Any]:
    return only(documents, "ServingRuntime")


@pytest.fixture(scope="module")
def runtime_container(runtime) -> dict[str, Any]:
    # KServe merges an InferenceService's settings into the container of this name.
    [container] = [c for c in runtime["spec"]["containers"] if c["name"] == "kserve-container"]
    return container


@pytest.mark.parametrize("model_format", ["sklearn", "xgboost"])
def test_runtime_supports_format(runtime, model_format):
    formats = runtime["spec"]["supportedModelFormats"]
    # KServe's version is a string: an unquoted 1 in YAML would be an int.
    assert {"name": model_format, "version": "1"} in [
        {"name": f["name"], "version": f.get("version")} for f in formats]


def test_runtime_speaks_v2(runtime):
    assert "v2" in runtime["spec"]["protocolVersions"]


def test_runtime_container_serves_port_and_models(runtime_container):
    ports = [(p["containerPort"], p.get("protocol", "TCP")) for p in runtime_container["ports"]]
    assert (PORT, "TCP") in ports
    assert env_of(runtime_container)["DEPOT_MODELS"] == MODELS_DIR


@pytest.mark.parametrize("probe, path", PROBES)
def test_runtime_probes(runtime_container, get_routes, probe, path):
    check = runtime_container[probe]["httpGet"]
    assert check["path"] == path and path in get_routes
    assert resolve_port(runtime_container, check["port"]) == PORT


def test_runtime_resources(runtime_container):
    check_resources(runtime_container)


def test_runtime_state_url_from_optional_secret(runtime_container):
    # Optional, so an InferenceService without the Secret still starts (on
    # SQLite); a required one would leave its pod stuck in CreateContainerConfigError.
    ref = secret_ref(runtime_container, "DEPOT_STATE_URL")
    assert (ref["name"], ref["key"]) == ("depot-state", "url")
    assert ref.get("optional") is True


@pytest.fixture(scope="module")
def inference_service(documents) -> dict[str, Any]:
    return only(documents, "InferenceService")


def test_inference_service_uses_depot(inference_service, runtime):
    model = inference_service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"] == "depot"
    assert model["protocolVersion"] == "v2" and "v2" in runtime["spec"]["protocolVersions"]
    # KServe refuses a runtime that does not list the model's format.
    formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["modelFormat"]["name"] in formats
    assert re.match(r"^[a-z0-9]+://", model["storageUri"])


# -- plain Kubernetes ----------------------------------------------------------

# Every test below that takes a Deployment runs once per variant.
@pytest.fixture(scope="module", params=[ONE_HOST, REPLICAS])
def manifest(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def deployment(documents, manifest) -> dict[str, Any]:
    return in_file(documents, manifest, "Deployment", "depot")


@pytest.fixture(scope="module")
def service(documents, manifest) -> dict[str, Any]:
    return in_file(documents, manifest, "Service", "depot")


@pytest.fixture(scope="module")
def container(deployment) -> dict[str, Any]:
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return container


def test_labels_connect(deployment, service):
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    # The API server rejects a selector the template does not match, and a
    # Service whose selector matches no pod has no endpoints.
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()


def test_service_reaches_the_server_port(service, container):
    [port] = service["spec"]["ports"]
    assert port["port"] == 80
    assert resolve_port(container, port["targetPort"]) == PORT
    assert PORT in [p["containerPort"] for p in container["ports"]]
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"


@pytest.mark.parametrize("probe, path", PROBES)
def test_deployment_probes(container, service, get_routes, probe, path):
    check = container[probe]["httpGet"]
    assert check["path"] == path and path in get_routes
    target = resolve_port(container, service["spec"]["ports"][0]["targetPort"])
    assert resolve_port(container, check["port"]) == target


def test_deployment_startup_probe_waits_for_ready(container, get_routes):
    # Optional, but when present it must wait on a route Depot serves.
    check = container.get("startupProbe", {}).get("httpGet")
    if check is not None:
        assert check["path"] in get_routes


def test_deployment_runs_as_non_root(deployment, container):
    pod = deployment["spec"]["template"]["spec"].get("securityContext", {})
    own = container.get("securityContext", {})
    assert own.get("runAsNonRoot", pod.get("runAsNonRoot")) is True
    assert own.get("runAsUser", pod.get("runAsUser", dockerfile_uid())) == dockerfile_uid()


def test_deployment_mounts_models_and_writable_state(deployment, container):
    env = env_of(container)
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert env["DEPOT_MODELS"] == MODELS_DIR and MODELS_DIR in mounts
    volumes = {v["name"] for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert {m["name"] for m in mounts.values()} <= volumes
    if container.get("securityContext", {}).get("readOnlyRootFilesystem"):
        # Depot writes its registry, snapshots and metrics to the state folder.
        state = Path(env.get("DEPOT_STATE_DIR") or dockerfile_env()["DEPOT_STATE_DIR"])
        assert any(state.is_relative_to(path) and not m.get("readOnly")
                   for path, m in mounts.items()), f"{state} is on the read-only root"


def test_deployment_resources(container):
    check_resources(container)


@pytest.mark.parametrize("path, kind", [
    (ONE_HOST, "Deployment"),
    (REPLICAS, "Deployment"),
    ("deploy/kserve/servingruntime.yaml", "ServingRuntime"),
])
def test_gunicorn_binds_the_container_port(documents, path, kind):
    spec = in_file(documents, path, kind)["spec"]
    pod = spec["template"]["spec"] if kind == "Deployment" else spec
    container = pod["containers"][0]
    args = env_of(container).get("GUNICORN_CMD_ARGS") or dockerfile_env()["GUNICORN_CMD_ARGS"]
    # gunicorn.conf.py binds 127.0.0.1, which no probe or Service can reach.
    assert binds(args) == [f"0.0.0.0:{PORT}"]


# -- several replicas on one PostgreSQL -----------------------------------------

@pytest.fixture(scope="module")
def replicas(documents) -> dict[str, Any]:
    return in_file(documents, REPLICAS, "Deployment", "depot")


@pytest.fixture(scope="module")
def replica_container(replicas) -> dict[str, Any]:
    [container] = replicas["spec"]["template"]["spec"]["containers"]
    return container


@pytest.fixture(scope="module")
def state_url(documents, replica_container) -> str:
    ref = secret_ref(replica_container, "DEPOT_STATE_URL")
    return secret_value(in_file(documents, REPLICAS, "Secret", ref["name"]), ref["key"])


def mount_of(container: dict[str, Any], path: str) -> dict[str, Any]:
    """The mount that holds path (the deepest, as the kernel resolves it)."""
    found = [m for m in container["volumeMounts"] if Path(path).is_relative_to(m["mountPath"])]
    assert found, f"{path} is on no volume"
    return max(found, key=lambda m: len(m["mountPath"]))


def volume_of(deployment: dict[str, Any], mount: dict[str, Any]) -> dict[str, Any]:
    [volume] = [v for v in deployment["spec"]["template"]["spec"]["volumes"]
                if v["name"] == mount["name"]]
    return volume


def test_replicas_scale_out(replicas):
    assert replicas["spec"]["replicas"] >= 2


def test_replicas_state_url_from_the_secret(replica_container, state_url):
    ref = secret_ref(replica_container, "DEPOT_STATE_URL")
    # A replica started without the URL would keep a state of its own on
    # SQLite and serve it behind the same Service: the Secret is required.
    assert not ref.get("optional", False)
    assert urlsplit(state_url).scheme in ("postgresql", "postgres")
    assert "DEPOT_STATE_URL" not in env_of(replica_container), "a plain value beside the Secret"


def test_replicas_share_a_read_only_models_volume(documents, replicas, replica_container):
    models = env_of(replica_container)["DEPOT_MODELS"]
    mount = mount_of(replica_container, models)
    assert mount["mountPath"] == models and mount.get("readOnly") is True
    claim = volume_of(replicas, mount)["persistentVolumeClaim"]["claimName"]
    pvc = in_file(documents, REPLICAS, "PersistentVolumeClaim", claim)
    # Every pod, on any node, must mount the same folder at once.
    assert "ReadOnlyMany" in pvc["spec"]["accessModes"]


def test_replicas_state_dir_is_each_pods_own(replicas, replica_container):
    mount = mount_of(replica_container, env_of(replica_container)["DEPOT_STATE_DIR"])
    assert not mount.get("readOnly")
    # Snapshots, metrics files and locks are per host: a shared volume here
    # would mix the pods' files.
    assert "emptyDir" in volume_of(replicas, mount)


def test_postgres_service_is_the_state_urls_host(documents, state_url):
    url = urlsplit(state_url)
    postgres = in_file(documents, REPLICAS, "Service", url.hostname)
    [port] = postgres["spec"]["ports"]
    assert port["port"] == (url.port or 5432)
    server = in_file(documents, REPLICAS, "StatefulSet", "depot-postgres")
    pod = server["spec"]["template"]
    assert postgres["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    [container] = pod["spec"]["containers"]
    assert resolve_port(container, port["targetPort"]) == 5432
    # Depot's Service must not send inference traffic to the database.
    depot = in_file(documents, REPLICAS, "Service", "depot")
    assert not depot["spec"]["selector"].items() <= pod["metadata"]["labels"].items()


def test_postgres_takes_the_credentials_of_the_state_url(documents, state_url):
    url = urlsplit(state_url)
    server = in_file(documents, REPLICAS, "StatefulSet", "depot-postgres")
    [container] = server["spec"]["template"]["spec"]["containers"]
    env = env_of(container)
    assert (env["POSTGRES_USER"], env["POSTGRES_DB"]) == (url.username, url.path.lstrip("/"))
    ref = secret_ref(container, "POSTGRES_PASSWORD")
    secret = in_file(documents, REPLICAS, "Secret", ref["name"])
    assert secret_value(secret, ref["key"]) == url.password
    assert "change-me" in url.password, "the example password must look like a placeholder"


def test_postgres_statefulset(documents):
    server = in_file(documents, REPLICAS, "StatefulSet", "depot-postgres")
    assert server["spec"]["replicas"] == 1
    pod = server["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["image"].startswith("postgres:16")
    assert container["readinessProbe"]["exec"]["command"][0] == "pg_isready"
    # The data survives a restart: its folder is on the claim template.
    claims = {c["metadata"]["name"] for c in server["spec"]["volumeClaimTemplates"]}
    data = Path(env_of(container).get("PGDATA", "/var/lib/postgresql/data"))
    assert mount_of(container, str(data))["name"] in claims
    assert pod["securityContext"]["runAsNonRoot"] is True
    check_resources(container)


# -- Dockerfile ----------------------------------------------------------------

def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    lines = [line for line in (ROOT / "Dockerfile").read_text().splitlines()
             if not line.lstrip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    return [(m[1].upper(), m[2].strip())
            for m in re.finditer(r"^\s*([A-Za-z]+)\s+(.*)$", text, re.MULTILINE)]


def instructions(name: str) -> list[str]:
    return [args for instruction, args in dockerfile() if instruction == name]


def exec_form(name: str) -> list[str]:
    [args] = instructions(name)
    return json.loads(args)


def dockerfile_env() -> dict[str, str]:
    return dict(item.split("=", 1) for args in instructions("ENV") for item in shlex.split(args))


def dockerfile_uid() -> int:
    user = instructions("USER")[-1].split(":")[0]
    # Numeric, so Kubernetes can check runAsNonRoot without the image's passwd.
    assert user.isdigit(), f"USER {user!r} is not a numeric uid"
    return int(user)


def copy_sources() -> list[str]:
    sources = []
    for args in instructions("COPY"):
        words = shlex.split(args)
        if any(w.startswith("--from") for w in words):
            continue
        sources += [w.rstrip("/") or "." for w in words[:-1] if not w.startswith("--")]
    return sources


def docker_ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore's rule: the last pattern matching the path or one of its
    parents decides; ``!`` re-includes."""
    parts = path.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    ignored = False
    for pattern in patterns:
        keep = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        if any(fnmatch.fnmatchcase(c, pattern) for c in candidates):
            ignored = not keep
    return ignored


def test_base_image():
    assert instructions("FROM") == ["python:3.11-slim"]


def test_runs_as_non_root():
    assert dockerfile_uid() != 0


def test_listens_on_port():
    assert str(PORT) in " ".join(instructions("EXPOSE")).split()
    assert binds(dockerfile_env()["GUNICORN_CMD_ARGS"]) == [f"0.0.0.0:{PORT}"]


def test_models_location():
    assert dockerfile_env()["DEPOT_MODELS"] == MODELS_DIR


def test_healthcheck_asks_ready(get_routes):
    [healthcheck] = instructions("HEALTHCHECK")
    argv = json.loads(healthcheck.split(" CMD ", 1)[1])
    url = f"http://127.0.0.1:{PORT}/v2/health/ready"
    assert argv[:2] == ["python", "-c"] and url in argv[2]
    assert "/v2/health/ready" in get_routes
    compile(argv[2], "HEALTHCHECK", "exec")  # a typo here would mark every container unhealthy


def test_cmd_runs_gunicorn_with_its_config():
    argv = exec_form("CMD")
    assert argv[0] == "gunicorn"
    assert argv[argv.index("-c") + 1] == "gunicorn.conf.py"


def test_installs_server_requirements_only():
    assert "requirements.txt" in copy_sources()
    text = " ".join(args for _, args in dockerfile())
    assert "pip install -r requirements.txt" in text and "requirements-test" not in text


@pytest.mark.parametrize("source", copy_sources())
def test_copied_files_exist_and_reach_the_context(source):
    path = ROOT / source
    assert path.exists(), f"COPY {source}: no such file in the repository"
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for file in files:
        if "__pycache__" not in file.parts:
            assert not docker_ignored(rel(file), patterns), f"{rel(file)} is in .dockerignore"


def test_image_holds_every_local_module_the_server_imports():
    copied = set(copy_sources())
    todo = [ROOT / "gunicorn.conf.py"]
    seen: set[Path] = set()
    while todo:
        file = todo.pop()
        if file in seen:
            continue
        seen.add(file)
        for node in ast.walk(ast.parse(file.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            for top in {n.split(".")[0] for n in names if n}:
                local = ROOT / top if (ROOT / top).is_dir() else ROOT / f"{top}.py"
                if local.exists():
                    assert rel(local) in copied, f"{rel(file)} imports {top}, not in the image"
                    todo += [local] if local.is_file() else list(local.rglob("*.py"))
