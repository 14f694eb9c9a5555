"""infra/: every deployment file parses, and its cross-references hold.

No Docker engine or Kubernetes cluster here, so this proves what can be proven statically: the
files parse; services, ports, variables, images, secrets and commands refer to things that exist
(the real CLI parser, the real config loader, Prefect's work-pool validator, Ray's cluster
schema); `kubectl kustomize` and `docker compose config` run where those clients can run offline.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from p2p.settings import ENV_VARS

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
COMPOSE_DIR = INFRA / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
K8S = INFRA / "k8s"
CLUSTER_YAML = INFRA / "ray" / "cluster.yaml"
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
CPU_IMAGE, CUDA_IMAGE = f"p2p:{VERSION}-cpu", f"p2p:{VERSION}-cuda"

SECRET_WORDS = re.compile(r"PASSWORD|SECRET|TOKEN|AUTH_STRING|ACCESS_KEY")
# Variables p2p containers may carry besides the settings names (Ray auth, telemetry, paths).
EXTRA_ENV = {
    "RAY_AUTH_MODE",
    "RAY_AUTH_TOKEN",
    "RAY_USAGE_STATS_ENABLED",
    "DO_NOT_TRACK",
    "PREFECT_API_AUTH_STRING",
    "P2P_GIT_URL",
}
IMAGE_PARAMS = ("params.yaml", "/app/params.yaml")  # the repo's params file, in and out of images
COMPOSE_VAR = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?([-?])([^}]*))?\}")


def infra_yaml_files() -> list[Path]:
    files = [*INFRA.rglob("*.yml"), *INFRA.rglob("*.yaml"), COMPOSE_DIR / ".env.example"]
    return sorted(p for p in files if p.suffix in (".yml", ".yaml"))


def load_all(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    out = {}
    for line in (COMPOSE_DIR / ".env.example").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f".env.example: not KEY=VALUE: {line!r}"
            out[key] = value
    return out


@pytest.fixture(scope="module")
def k8s_docs() -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p in sorted(K8S.rglob("*.yaml")) for d in load_all(p)]


def walk(node: Any, path: tuple = ()):
    """Yield (path, value) for every scalar and container in a parsed YAML/JSON tree."""
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from walk(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, (*path, i))


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Every container spec anywhere in a manifest (Deployments, RayCluster groups, RayJob...)."""
    return [
        c
        for path, node in walk(doc)
        if path and path[-1] in ("containers", "initContainers") and isinstance(node, list)
        for c in node
    ]


def command_text(cmd: Any) -> str:
    return cmd if isinstance(cmd, str) else shlex.join(str(c) for c in cmd)


# ----------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("path", infra_yaml_files(), ids=lambda p: str(p.relative_to(INFRA)))
def test_every_yaml_file_parses(path):
    docs = load_all(path)
    assert docs, f"{path}: empty"
    assert all(isinstance(d, dict) for d in docs), f"{path}: every document must be a mapping"


def test_every_infra_file_is_covered():
    """New file types under infra/ must get a check here, not slip through unparsed."""
    known = {".yml", ".yaml", ".json", ".md", ".sh", ".lock", ".example", ".dockerignore", ""}
    for p in INFRA.rglob("*"):
        if p.is_file():
            assert p.suffix in known or p.name.startswith("Dockerfile"), f"unchecked file {p}"


def test_shell_scripts_are_valid():
    scripts = sorted(INFRA.rglob("*.sh"))
    assert scripts
    for script in scripts:
        shell = "bash" if script.read_text().startswith("#!/bin/bash") else "sh"
        result = subprocess.run([shell, "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, f"{script}: {result.stderr}"


# ----------------------------------------------------------------------------- compose


def test_compose_dependencies_exist(compose):
    services = compose["services"]
    for name, svc in services.items():
        deps = svc.get("depends_on", {})
        for dep, cond in deps.items() if isinstance(deps, dict) else ((d, {}) for d in deps):
            assert dep in services, f"{name} depends on unknown service {dep}"
            condition = (cond or {}).get("condition", "service_started")
            assert condition in (
                "service_started",
                "service_healthy",
                "service_completed_successfully",
            )
            if condition == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep}'s health check"
            if condition == "service_completed_successfully":
                assert services[dep].get("restart") == "no", f"{dep} is one-shot"


def test_long_running_services_have_health_checks(compose):
    for name, svc in compose["services"].items():
        if svc.get("restart") != "no":
            assert "healthcheck" in svc, f"{name}: no health check"


def test_compose_variables_are_documented(compose, env_example):
    text = COMPOSE_FILE.read_text()
    used = {m.group(1) for m in COMPOSE_VAR.finditer(text)}
    assert used, "the compose file reads no variables?"
    undefined = used - set(env_example) - set(ENV_VARS)
    assert not undefined, f"compose variables missing from .env.example: {sorted(undefined)}"
    unused = set(env_example) - used
    assert not unused, f".env.example variables compose never reads: {sorted(unused)}"


def test_no_default_secrets_in_compose(compose, env_example):
    text = COMPOSE_FILE.read_text()
    for m in COMPOSE_VAR.finditer(text):
        name, op = m.group(1), m.group(2)
        if SECRET_WORDS.search(name):
            assert op == "?", f"${{{name}}} must be required (${{{name}:?...}}), not defaulted"
    for key, value in env_example.items():
        if SECRET_WORDS.search(key):
            assert value == "", f".env.example ships a value for the secret {key}"
    # Literal values for secret-like variables anywhere in the services' environments.
    for name, svc in compose["services"].items():
        for key, value in (svc.get("environment") or {}).items():
            if SECRET_WORDS.search(key) and key != "RAY_AUTH_MODE":
                refs = COMPOSE_VAR.findall(str(value))
                assert refs, f"{name}.{key} is a literal secret"
                for var, op, _default in refs:
                    if SECRET_WORDS.search(var):
                        assert op == "?", f"{name}.{key}: ${{{var}}} must be required"
    for weak in ("minioadmin", "changeme", "password123"):
        assert weak not in text.lower()


def test_p2p_services_use_the_settings_names(compose):
    services = compose["services"]
    p2p = {n: s for n, s in services.items() if str(s.get("image", "")).startswith("p2p:")}
    assert {"mlflow", "prefect-server", "prefect-worker", "ray-head", "ray-gpu-worker"} <= set(p2p)
    clients = ("prefect-worker", "ray-head", "ray-gpu-worker", "mlflow")
    wanted = set(ENV_VARS) - {"RAY_ADDRESS"}
    for name in clients:
        env = set(services[name]["environment"])
        assert wanted <= env, f"{name} lacks {sorted(wanted - env)}"
    # The worker submits training to Ray; Ray nodes must not carry RAY_ADDRESS (their jobs
    # run `p2p train --address auto` and RAY_ADDRESS would override it).
    assert services["prefect-worker"]["environment"]["RAY_ADDRESS"].startswith("http://ray-head:")
    for name in ("ray-head", "ray-gpu-worker"):
        assert "RAY_ADDRESS" not in services[name]["environment"]
        env = services[name]["environment"]
        assert env["RAY_AUTH_MODE"] == "token" and "RAY_AUTH_TOKEN" in env
    for name, svc in p2p.items():
        for key in svc.get("environment") or {}:
            assert (
                key in ENV_VARS
                or key in EXTRA_ENV
                or key.startswith(("PREFECT_", "MLFLOW_", "AWS_"))
                or key in ("P2P_REPO_DIR", "HOME")
            ), f"{name}: unexpected variable {key}"


def _exposed(svc: dict[str, Any]) -> set[int]:
    return {int(p) for p in svc.get("expose", [])}


def _service_refs(value: str, services: set[str]) -> list[tuple[str, int]]:
    """(service, port) pairs a string points at: http://svc:port, @svc:port, svc:port."""
    refs = []
    for m in re.finditer(r"(?:^|[/@=\s'\"])([a-z][a-z0-9-]*):(\d{2,5})\b", value):
        if m.group(1) in services:
            refs.append((m.group(1), int(m.group(2))))
    return refs


def test_compose_ports_are_consistent(compose):
    services = compose["services"]
    names = set(services)
    for name, svc in services.items():
        texts = [command_text(svc.get("command", "")), command_text(svc.get("entrypoint", ""))]
        texts += [str(v) for v in (svc.get("environment") or {}).values()]
        for text in texts:
            for target, port in _service_refs(text, names):
                exposed = sorted(_exposed(services[target]))
                assert port in exposed, f"{name} uses {target}:{port}; {target} exposes {exposed}"
        # Every exposed port is one the service is told to listen on (or probes).
        own = command_text(svc.get("command", "")) + command_text(
            (svc.get("healthcheck") or {}).get("test", "")
        )
        own += " ".join(str(v) for v in (svc.get("environment") or {}).values())
        for port in _exposed(svc):
            assert str(port) in own, f"{name} exposes {port} but neither listens nor probes it"
        for mapping in svc.get("ports", []):
            container_port = int(str(mapping).rsplit(":", 1)[1])
            assert container_port in _exposed(svc), f"{name} publishes unexposed {mapping}"
        health = command_text((svc.get("healthcheck") or {}).get("test", ""))
        for m in re.finditer(r"127\.0\.0\.1:(\d+)", health):
            assert int(m.group(1)) in _exposed(svc), f"{name} probes a port it does not expose"
    env = services["prefect-worker"]["environment"]
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert env["PREFECT_API_URL"].startswith("http://prefect-server:4200/")
    assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"


def test_compose_images_and_builds(compose):
    services = compose["services"]
    built = {}
    for name, svc in services.items():
        image = svc["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin {image} by tag"
        if "build" in svc:
            dockerfile = REPO / "infra" / "compose" / svc["build"]["context"]
            dockerfile = (dockerfile / svc["build"]["dockerfile"]).resolve()
            assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
            built[image] = dockerfile.name
        elif image.startswith("p2p:"):
            assert svc.get("pull_policy") == "never", f"{name}: local image, never pull"
    assert built == {CPU_IMAGE: "Dockerfile.cpu", CUDA_IMAGE: "Dockerfile"}
    for name, svc in services.items():
        if svc["image"].startswith("p2p:"):
            assert svc["image"] in built, f"{name} uses {svc['image']}, which nothing builds"
    gpu = services["ray-gpu-worker"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert gpu["image"] == CUDA_IMAGE


def test_compose_config_offline(tmp_path, env_example):
    docker = shutil.which("docker")
    probe = (
        subprocess.run([docker or "docker", "compose", "version"], capture_output=True, text=True)
        if docker
        else None
    )
    if probe is None or probe.returncode != 0:
        reason = "no docker client" if probe is None else probe.stderr.strip().splitlines()[0]
        pytest.skip(f"`docker compose` unavailable here ({reason}); static checks cover the file")
    filled = {k: (v or f"x{k.lower().replace('_', '')}1234") for k, v in env_example.items()}
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in filled.items()))
    argv = ["docker", "compose", "--env-file", str(env_file), "-f", str(COMPOSE_FILE), "config"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    rendered = yaml.safe_load(result.stdout)
    assert set(rendered["services"]) == set(yaml.safe_load(COMPOSE_FILE.read_text())["services"])
    # An unset secret stops compose with our message.
    env_file.write_text("".join(f"{k}={v}\n" for k, v in filled.items() if k != "RAY_AUTH_TOKEN"))
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "set it in .env" in result.stderr


# ----------------------------------------------------------------------------- images


def dockerfile_steps(path: Path) -> list[str]:
    """Instructions with continuation lines joined, comments dropped."""
    steps, current = [], ""
    for line in path.read_text().splitlines():
        if line.strip().startswith("#") and not current:
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            if current.strip():
                steps.append(current.strip())
            current = ""
    return steps


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cpu"])
def test_dockerfiles(name):
    path = INFRA / "docker" / name
    steps = dockerfile_steps(path)
    base = [s.split()[1] for s in steps if s.startswith("FROM ")]
    assert base and all(":" in b and not b.endswith(":latest") for b in base), base
    run = " ".join(s for s in steps if s.startswith("RUN "))
    torch_at = run.index("torch==${TORCH_VERSION}")
    lock_at = run.index("--no-deps -r requirements.lock")
    assert torch_at < lock_at < run.index("--no-deps -r requirements-cluster.lock")
    assert "pip check" in run
    torch_version = re.search(r"ARG TORCH_VERSION=(\S+)", path.read_text()).group(1)
    makefile = (REPO / "Makefile").read_text()
    assert f"torch=={torch_version}" in makefile, "the image and `make setup` install one torch"
    ignore = (path.parent / f"{name}.dockerignore").read_text().splitlines()
    allowed = [p[1:] for p in ignore if p.startswith("!")]
    for step in steps:
        if step.startswith("COPY "):
            for src in step.split()[1:-1]:
                if src.startswith("--"):
                    continue
                assert (REPO / src).exists(), f"{name}: COPY {src}: no such path"
                assert any(a == src or a.startswith(src.rstrip("/") + "/") for a in allowed), (
                    f"{name}: COPY {src} is excluded by {name}.dockerignore"
                )


def test_cluster_lock_extends_the_main_lock():
    def pins(path: Path) -> dict[str, str]:
        out = {}
        for line in path.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                name, sep, version = line.partition("==")
                assert sep and version, f"{path.name}: {line!r} is not pinned with =="
                out[re.sub(r"[-_.]+", "-", name).lower()] = version
        return out

    main = pins(REPO / "requirements.lock")
    extra = pins(INFRA / "docker" / "requirements-cluster.lock")
    assert not set(main) & set(extra), "a package pinned twice"
    assert {"psycopg2-binary", "prefect-kubernetes"} <= set(extra)
    # ray[default,client] (dashboard, Jobs API, Ray Client) is in the main lock: laptops submit jobs
    assert {"aiohttp-cors", "grpcio", "opencensus", "py-spy", "smart-open"} <= set(main)


# ----------------------------------------------------------------------------- versions


def test_ray_version_everywhere(k8s_docs):
    import ray

    versions = [
        (p, d["spec"].get("rayVersion") or d["spec"]["rayClusterSpec"]["rayVersion"])
        for p, d in k8s_docs
        if d.get("kind") in ("RayCluster", "RayJob")
    ]
    assert len(versions) == 2
    for path, version in versions:
        assert version == ray.__version__, f"{path}: rayVersion {version} != {ray.__version__}"
    assert f"ray=={ray.__version__}" in (REPO / "requirements.lock").read_text()
    assert f"'{ray.__version__}'" in CLUSTER_YAML.read_text()  # setup_commands assert it


def test_every_image_is_a_built_p2p_image(k8s_docs):
    images = []
    for path, doc in k8s_docs:
        for c in containers(doc):
            images.append((path, c["name"], c["image"], c.get("resources", {})))
    assert images
    for path, name, image, resources in images:
        assert image in (CPU_IMAGE, CUDA_IMAGE), f"{path}:{name}: {image}"
        gpus = (resources.get("limits") or {}).get("nvidia.com/gpu")
        if gpus:
            assert image == CUDA_IMAGE, f"{path}:{name}: GPU container needs the CUDA image"
            assert resources["requests"]["nvidia.com/gpu"] == gpus
    template = json.loads((K8S / "prefect" / "base-job-template.json").read_text())
    assert template["variables"]["properties"]["image"]["default"] == CPU_IMAGE
    cluster = yaml.safe_load(CLUSTER_YAML.read_text())
    assert cluster["docker"]["image"] == CUDA_IMAGE
    for dep in yaml.safe_load((K8S / "prefect" / "prefect.yaml").read_text())["deployments"]:
        assert dep["work_pool"]["job_variables"]["image"] == CPU_IMAGE


# ----------------------------------------------------------------------------- kubernetes


def test_k8s_references_resolve(k8s_docs):
    secrets = {
        d["metadata"]["name"]: set(d.get("stringData") or d.get("data") or {})
        for _, d in k8s_docs
        if d.get("kind") == "Secret"
    }
    configmaps = {
        d["metadata"]["name"]: set(d["data"]) for _, d in k8s_docs if d.get("kind") == "ConfigMap"
    }
    accounts = {d["metadata"]["name"] for _, d in k8s_docs if d.get("kind") == "ServiceAccount"}
    template = json.loads((K8S / "prefect" / "base-job-template.json").read_text())
    docs = [*k8s_docs, (K8S / "prefect" / "base-job-template.json", template)]
    n_refs = 0
    for path, doc in docs:
        namespace = (doc.get("metadata") or {}).get("namespace")
        if namespace:
            assert namespace == "p2p", f"{path}: namespace {namespace}"
        for _, node in walk(doc):
            if not isinstance(node, dict):
                continue
            if "secretKeyRef" in node:
                ref = node["secretKeyRef"]
                assert ref["key"] in secrets.get(ref["name"], set()), f"{path}: {ref}"
                assert node.get("name") in (None, ref["key"]), "env name = secret key"
                n_refs += 1
            if "configMapRef" in node:
                assert node["configMapRef"]["name"] in configmaps, f"{path}: {node}"
            if "serviceAccountName" in node and not str(node["serviceAccountName"]).startswith(
                "{{"
            ):
                assert node["serviceAccountName"] in accounts
            if "value" in node and "name" in node and isinstance(node.get("name"), str):
                assert not SECRET_WORDS.search(node["name"]) or node["name"] == "RAY_AUTH_MODE", (
                    f"{path}: {node['name']} has a literal value; use secretKeyRef"
                )
    assert n_refs >= 10
    for name, keys in configmaps.items():
        extra = keys - set(ENV_VARS) - EXTRA_ENV
        assert not extra, f"ConfigMap {name}: unknown settings {sorted(extra)}"
    for keys in secrets.values():
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "RAY_AUTH_TOKEN"} <= keys
        doc = next(d for _, d in k8s_docs if d.get("kind") == "Secret")
        assert all(v == "" for v in doc["stringData"].values()), "the example holds no secrets"


def test_k8s_ray_address_points_at_the_raycluster(k8s_docs):
    (cluster,) = [d for _, d in k8s_docs if d.get("kind") == "RayCluster"]
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in head["ports"]}
    svc = f"{cluster['metadata']['name']}-head-svc.{cluster['metadata']['namespace']}"
    expected = f"http://{svc}.svc.cluster.local:{ports['dashboard']}"
    template = json.loads((K8S / "prefect" / "base-job-template.json").read_text())
    assert template["variables"]["properties"]["ray_address"]["default"] == expected
    deployments = yaml.safe_load((K8S / "prefect" / "prefect.yaml").read_text())["deployments"]
    assert all(d["parameters"]["address"] == expected for d in deployments)
    # Token auth on every Ray container: mode from the ConfigMap, token from the Secret.
    (settings,) = [d for _, d in k8s_docs if d.get("kind") == "ConfigMap"]
    assert settings["data"]["RAY_AUTH_MODE"] == "token"
    for _, doc in k8s_docs:
        if doc.get("kind") in ("RayCluster", "RayJob"):
            for c in containers(doc):
                names = {e["name"] for e in c.get("env", [])}
                assert "RAY_AUTH_TOKEN" in names, f"{doc['kind']}:{c['name']} lacks the token"
                assert {"configMapRef": {"name": "p2p-settings"}} in c.get("envFrom", [])
                assert "RAY_ADDRESS" not in names


def test_prefect_work_pool_template_is_valid():
    from prefect.server.schemas.actions import validate_base_job_template

    template = json.loads((K8S / "prefect" / "base-job-template.json").read_text())
    validate_base_job_template(template)
    manifest = template["job_configuration"]["job_manifest"]
    assert manifest["kind"] == "Job" and manifest["apiVersion"] == "batch/v1"
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["RAY_ADDRESS"]["value"] == "{{ ray_address }}"
    assert template["variables"]["properties"]["namespace"]["default"] == "p2p"


def test_kustomization_resources_exist_and_render():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource
    assert "secret.example.yaml" not in kustomization["resources"]  # secrets stay out of git
    if not shutil.which("kubectl"):
        pytest.skip("kubectl not installed: rendering not checked")
    result = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(result.stdout) if d]
    assert {"Namespace", "ConfigMap", "RayCluster", "Deployment", "Role"} <= set(kinds)


# ----------------------------------------------------------------------------- ray launcher


def test_ray_cluster_yaml_passes_rays_schema():
    import copy

    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(CLUSTER_YAML.read_text())
    validate_config(prepare_config(copy.deepcopy(config)))
    assert config["provider"]["type"] == "aws"
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    gpu_types = [t for t in types.values() if t.get("resources", {}).get("GPU")]
    assert gpu_types, "no GPU worker type"
    assert "~/.ray/auth_token" in config["file_mounts"]
    assert "--env RAY_AUTH_MODE=token" in config["docker"]["run_options"]
    for opt in config["docker"]["run_options"]:
        m = re.match(r"--env (\w+)=", opt)
        if m:
            assert not SECRET_WORDS.search(m.group(1)), f"secret in cluster.yaml: {opt}"


# ----------------------------------------------------------------------------- commands


def simple_commands(line: str) -> list[list[str]]:
    """Split a shell line into simple commands at ; && || | (quotes respected, comments dropped)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    commands, current = [], []
    for token in lexer:
        if token and set(token) <= set(";&|"):
            commands.append(current)
            current = []
        else:
            current.append(token)
    return [c for c in [*commands, current] if c]


def p2p_commands() -> list[tuple[str, list[str]]]:
    """(where, argv after `p2p`) for every p2p invocation in the infra configs and README."""
    texts: list[tuple[str, str]] = []
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    header = re.findall(r"^#   (.*)$", COMPOSE_FILE.read_text(), re.M)  # the usage lines
    texts.append(("compose header", "\n".join(header)))
    for name, svc in compose["services"].items():
        texts.append((f"compose {name}", command_text(svc.get("command", ""))))
    for path in sorted(K8S.rglob("*.yaml")):
        for doc in load_all(path):
            for c in containers(doc):
                texts.append((f"{path.name} {c['name']}", command_text(c.get("command", []))))
            if doc.get("kind") == "RayJob":
                texts.append((f"{path.name} entrypoint", doc["spec"]["entrypoint"]))
    cluster = yaml.safe_load(CLUSTER_YAML.read_text())
    for key in ("setup_commands", "head_start_ray_commands", "worker_start_ray_commands"):
        texts += [(f"cluster.yaml {key}", c) for c in cluster[key]]
    readme = (INFRA / "README.md").read_text()
    for block in re.findall(r"```bash\n(.*?)```", readme, re.S):
        texts.append(("infra/README.md", block.replace("\\\n", " ")))
    found = []
    for where, text in texts:
        for line in text.splitlines() or [text]:
            for words in simple_commands(line):
                words = [w for w in words if not re.match(r"^[A-Z_]+=", w)]  # VAR=x p2p ...
                if words[:3] in (["docker", "compose", "run"], ["docker", "compose", "exec"]):
                    words = words[words.index("p2p") :] if "p2p" in words else []
                if words and words[0] == "p2p":
                    argv = [re.sub(r"\$\{?\w+\}?", "X", w) for w in words[1:]]
                    found.append((where, argv))
    return found


def test_p2p_commands_exist_in_the_cli():
    from p2p.cli import build_parser
    from p2p.config import load_config

    commands = p2p_commands()
    where = {w for w, _ in commands}
    assert any("entrypoint" in w for w in where) and any("README" in w for w in where)
    assert any(argv[:1] == ["train"] for _, argv in commands)
    assert any(argv[:1] == ["doctor"] for _, argv in commands)
    for place, argv in commands:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as e:
            assert e.code == 0, f"{place}: `p2p {shlex.join(argv)}` does not parse"
            continue
        if getattr(args, "overrides", None):
            # Every --set key and value is valid against the params file the command reads
            # (the images hold the repository's params.yaml at /app).
            params = REPO / Path(args.params).name if args.params in IMAGE_PARAMS else args.params
            load_config(params, args.overrides)


def test_pipelines_and_prefect_deployments_exist():
    from p2p.config import load_config

    prefect_files = [REPO / "prefect.yaml", K8S / "prefect" / "prefect.yaml"]
    pools = {}
    for path in prefect_files:
        for dep in yaml.safe_load(path.read_text())["deployments"]:
            file, _, func = dep["entrypoint"].partition(":")
            source = REPO / file
            assert source.is_file(), f"{path}: entrypoint {file} missing"
            tree = ast.parse(source.read_text())
            (fn,) = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == func]
            params = {a.arg for a in fn.args.args + fn.args.kwonlyargs}
            unknown = set(dep.get("parameters", {})) - params
            assert not unknown, f"{path}: {func} has no parameters {sorted(unknown)}"
            parameters = dep.get("parameters", {})
            load_config(REPO / parameters.get("params", "params.yaml"), parameters.get("overrides"))
            pools[dep["work_pool"]["name"]] = path
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    worker = compose["services"]["prefect-worker"]["command"]
    assert worker[worker.index("--pool") + 1] in pools
    assert pools[worker[worker.index("--pool") + 1]] == REPO / "prefect.yaml"
    k8s_worker = [
        c
        for _, d in ((p, d) for p in K8S.rglob("*.yaml") for d in load_all(p))
        for c in containers(d)
        if c["name"] == "worker"
    ]
    (container,) = k8s_worker
    pool = container["command"][container["command"].index("--pool") + 1]
    assert pools[pool] == K8S / "prefect" / "prefect.yaml"
    for _, text in [("readme", (INFRA / "README.md").read_text())]:
        for module in re.findall(r"python -m (pipelines\.\w+)", text):
            assert (REPO / (module.replace(".", "/") + ".py")).is_file(), module


def test_readme_documents_the_cluster_paths():
    readme = (INFRA / "README.md").read_text()
    assert readme.startswith("# Running on a cluster")
    for name in ENV_VARS:
        assert f"`{name}`" in readme, f"README does not map {name}"
    for needle in ("RAY_AUTH_TOKEN", "RAY_AUTH_MODE=token", "docker compose", "kubectl", "ray up"):
        assert needle in readme
