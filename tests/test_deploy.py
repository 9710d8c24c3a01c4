"""The deployment artifacts hold together: every manifest under deploy/ parses
and names itself, the KServe runtime and the plain Kubernetes objects point at
the port and the health routes Depot really serves, and the Dockerfile builds
from files that exist and reach the build context.

These are static checks: nothing here builds an image or talks to a cluster.
"""
from __future__ import annotations

import ast
import fnmatch
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from flask import Flask

from app import api

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
YAML_FILES = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))
PORT = 8080
MODELS_DIR = "/mnt/models"
# Which route each probe must hit: ready says "serve me traffic", live says
# "do not restart me"; swapping them restarts pods that are only loading.
PROBES = [("readinessProbe", "/v2/health/ready"), ("livenessProbe", "/v2/health/live")]


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


@pytest.fixture(scope="module")
def get_routes() -> set[str]:
    """The GET routes Depot serves, read from its own blueprint."""
    app = Flask("routes")
    app.register_blueprint(api.bp)
    return {rule.rule for rule in app.url_map.iter_rules() if "GET" in rule.methods}


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


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
    ("deploy/kubernetes/depot.yaml", "apps/v1", "Deployment", "depot"),
    ("deploy/kubernetes/depot.yaml", "v1", "Service", "depot"),
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

@pytest.fixture(scope="module")
def deployment(documents) -> dict[str, Any]:
    return only(documents, "Deployment")


@pytest.fixture(scope="module")
def service(documents) -> dict[str, Any]:
    return only(documents, "Service")


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


@pytest.mark.parametrize("kind", ["Deployment", "ServingRuntime"])
def test_gunicorn_binds_the_container_port(documents, kind):
    spec = only(documents, kind)["spec"]
    pod = spec["template"]["spec"] if kind == "Deployment" else spec
    container = pod["containers"][0]
    args = env_of(container).get("GUNICORN_CMD_ARGS") or dockerfile_env()["GUNICORN_CMD_ARGS"]
    # gunicorn.conf.py binds 127.0.0.1, which no probe or Service can reach.
    assert binds(args) == [f"0.0.0.0:{PORT}"]


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
