"""deploy/: the files parse and say what they must (fast), and the multi-replica topology they
describe runs for real without containers (integration: `cscr serve` processes behind a reverse
proxy, the replay upstream as provider, driven by the real `openai` client)."""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import parse_config

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
EXAMPLE_SECRETS = K8S / "examples" / "secrets.example.yaml"


def _checks() -> Any:
    """deploy/check_manifests.py (a script, not a package)."""
    spec = importlib.util.spec_from_file_location("check_manifests", DEPLOY / "check_manifests.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _k8s() -> dict[tuple[str, str], dict[str, Any]]:
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in _docs(path):
            out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


# --- every YAML file -------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(DEPLOY.rglob("*.y*ml")), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses(path: Path) -> None:
    assert _docs(path), f"{path} is empty"


def test_k8s_objects_have_the_basics() -> None:
    objects = _k8s()
    for (kind, name), doc in objects.items():
        assert doc.get("apiVersion"), f"{kind}/{name}: apiVersion"
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), f"{kind}/{name}: not a DNS-1123 name"
    kinds = Counter(kind for kind, _ in objects)
    for kind in ("Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap", "StatefulSet", "NetworkPolicy"):
        assert kinds[kind] >= 1, f"no {kind} in deploy/k8s"
    assert kinds["Secret"] == 0, "Secrets are created out of band, never applied with the manifests"


def test_kustomization_lists_every_manifest() -> None:
    kust = _docs(K8S / "kustomization.yaml")[0]
    listed = set(kust["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


# --- the gateway Deployment ------------------------------------------------------------------


def _gateway_container(objects: dict[tuple[str, str], dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    pod = objects[("Deployment", "cscr-gateway")]["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "gateway"]
    return pod, container


def test_deployment_probes_and_resources() -> None:
    objects = _k8s()
    deploy = objects[("Deployment", "cscr-gateway")]
    assert deploy["apiVersion"] == "apps/v1"
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert deploy["spec"]["selector"]["matchLabels"].items() <= labels.items()
    _, c = _gateway_container(objects)
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["port"] in ("http", ports["http"])
    assert ports["http"] == 8000
    for part in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][part])
    assert c["args"][:2] == ["serve", "--config"] and "/etc/cscr/gateway.yaml" in c["args"]


def test_deployment_runs_as_non_root() -> None:
    pod, c = _gateway_container(_k8s())
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    # a read-only root needs a writable /tmp, and a sized volume where CSCR_CACHE_DIR points
    assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"])
    cache = next(e["value"] for e in c["env"] if e["name"] == "CSCR_CACHE_DIR")
    (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == cache]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["emptyDir"]["sizeLimit"] == "1Gi"  # the converted scorer alone is ~540 MB


def test_service_and_hpa_target_the_deployment() -> None:
    objects = _k8s()
    deploy = objects[("Deployment", "cscr-gateway")]
    svc = objects[("Service", "cscr-gateway")]
    assert svc["spec"]["selector"].items() <= deploy["spec"]["template"]["metadata"]["labels"].items()
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
    hpa = objects[("HorizontalPodAutoscaler", "cscr-gateway")]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "cscr-gateway"}
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_configmap_gateway_yaml_parses_with_the_secret_keys() -> None:
    objects = _k8s()
    _, c = _gateway_container(objects)
    cm_name = next(v["configMap"]["name"] for v in objects[("Deployment", "cscr-gateway")]["spec"]["template"]
                   ["spec"]["volumes"] if "configMap" in v)
    secret_name = next(e["secretRef"]["name"] for e in c["envFrom"] if "secretRef" in e)
    secrets = {d["metadata"]["name"]: d for d in _docs(EXAMPLE_SECRETS)}
    env = {k: "dummy" for k in secrets[secret_name]["stringData"]}
    ref = next(e["valueFrom"]["secretKeyRef"] for e in c["env"] if e["name"] == "REDIS_PASSWORD")
    assert ref["key"] in secrets[ref["name"]]["stringData"]
    env["REDIS_PASSWORD"] = "dummy"
    raw = yaml.safe_load(objects[("ConfigMap", cm_name)]["data"]["gateway.yaml"])
    config = parse_config(raw, "configmap:gateway.yaml", env)  # a name missing from the Secret fails here
    assert config.store == "redis://:dummy@redis:6379/0"
    assert {p.api_key_env for p in config.providers} <= set(env)
    redis_svc = objects[("Service", "redis")]
    assert redis_svc["spec"]["ports"][0]["port"] == 6379
    assert objects[("StatefulSet", "redis")]["spec"]["serviceName"] == "redis"


# --- deploy/check_manifests.py: what a schema cannot say ------------------------------------


def test_manifests_pass_their_checks() -> None:
    assert _checks().all_problems(K8S) == []


def _redis_args(objects: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    (redis,) = objects[("StatefulSet", "redis")]["spec"]["template"]["spec"]["containers"]
    return list(redis["args"])


def test_a_deployment_without_a_redis_password_is_refused() -> None:
    checks = _checks()
    objects = checks.load(K8S)
    assert checks.redis_auth_problems(objects) == []
    # Redis started without requirepass
    no_pass = copy.deepcopy(objects)
    (redis,) = no_pass[("StatefulSet", "redis")]["spec"]["template"]["spec"]["containers"]
    at = redis["args"].index("--requirepass")
    del redis["args"][at:at + 2]
    assert any("--requirepass" in p for p in checks.redis_auth_problems(no_pass))
    # the password written into the manifest instead of taken from the Secret
    literal = copy.deepcopy(objects)
    (redis,) = literal[("StatefulSet", "redis")]["spec"]["template"]["spec"]["containers"]
    redis["env"] = [{"name": "REDIS_PASSWORD", "value": "hunter2"}]
    assert any("Secret" in p for p in checks.redis_auth_problems(literal))
    # a gateway that connects without one
    open_url = copy.deepcopy(objects)
    cm = open_url[("ConfigMap", "cscr-gateway-config")]["data"]
    cm["gateway.yaml"] = cm["gateway.yaml"].replace(":${REDIS_PASSWORD}@", "")
    assert any("store URL" in p for p in checks.redis_auth_problems(open_url))
    # ... or whose password env var is optional (the pod would start without it)
    optional = copy.deepcopy(objects)
    gw = optional[("Deployment", "cscr-gateway")]["spec"]["template"]["spec"]["containers"][0]
    next(e for e in gw["env"] if e["name"] == "REDIS_PASSWORD")["valueFrom"]["secretKeyRef"]["optional"] = True
    assert checks.redis_auth_problems(optional)


def test_redis_never_evicts_and_persists() -> None:
    checks = _checks()
    objects = checks.load(K8S)
    args = _redis_args(objects)
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    assert args[args.index("--appendonly") + 1] == "yes"
    evicting = copy.deepcopy(objects)
    (redis,) = evicting[("StatefulSet", "redis")]["spec"]["template"]["spec"]["containers"]
    redis["args"][redis["args"].index("--maxmemory-policy") + 1] = "allkeys-lru"
    assert checks.redis_memory_problems(evicting)


def test_grace_period_covers_prestop_and_graceful_drain() -> None:
    checks = _checks()
    objects = checks.load(K8S)
    pod, c = _gateway_container(objects)
    graceful = float(c["args"][c["args"].index("--graceful-timeout") + 1])
    assert pod["terminationGracePeriodSeconds"] >= c["lifecycle"]["preStop"]["sleep"]["seconds"] + graceful + 5
    short = copy.deepcopy(objects)
    short[("Deployment", "cscr-gateway")]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 30
    assert any("SIGKILL" in p for p in checks.gateway_pod_problems(short))


def test_only_the_gateway_reaches_redis_and_hpa_is_cpu_only() -> None:
    checks = _checks()
    objects = checks.load(K8S)
    assert checks.policy_problems(objects) == []
    wide = copy.deepcopy(objects)
    wide[("NetworkPolicy", "redis")]["spec"]["ingress"][0]["from"] = [{"podSelector": {}}]
    assert checks.policy_problems(wide)


def test_manifests_validate_against_the_kubernetes_schemas() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install '.[ops]'")
    objects = _checks().load(K8S)
    for doc in [*objects.values(), *_docs(EXAMPLE_SECRETS)]:
        kubernetes_validate.validate(doc, "1.33.0", strict=True)


def test_kustomize_renders_without_secrets() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed")
    out = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=True)
    rendered = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert {d["kind"] for d in rendered} >= {"Deployment", "StatefulSet", "NetworkPolicy"}
    assert not [d for d in rendered if d["kind"] == "Secret"]
    assert all(d["metadata"].get("namespace") == "cscr" for d in rendered if d["kind"] != "Namespace")


def _ops_tool(name: str) -> str:
    """checkov / hadolint from $CSCR_OPS_VENV (deploy/ops_checks.sh makes one), else PATH."""
    venv = os.environ.get("CSCR_OPS_VENV")
    path = str(Path(venv) / "bin" / name) if venv else shutil.which(name)
    if not path or not Path(path).exists():
        pytest.skip(f"{name} not installed (deploy/ops_checks.sh; CSCR_OPS_VENV=/tmp/cscr-ops)")
    return path


def _checkov_failures(checkov: str, manifests: list[dict[str, Any]], tmp_path: Path) -> set[str]:
    (tmp_path / "k8s").mkdir(exist_ok=True)
    (tmp_path / "k8s" / "all.yaml").write_text(yaml.safe_dump_all(manifests))
    out = subprocess.run([checkov, "-d", str(tmp_path / "k8s"), "--framework", "kubernetes", "--skip-download",
                          "--external-checks-dir", str(DEPLOY / "checkov"), "-o", "json", "--quiet"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    report = json.loads(out.stdout)
    return {c["check_id"] for c in report["results"]["failed_checks"]}


@pytest.mark.slow
def test_checkov_refuses_redis_without_a_password(tmp_path: Path) -> None:
    checkov = _ops_tool("checkov")
    objects = _checks().load(K8S)
    for (kind, _), doc in objects.items():  # what the kustomization's `namespace:` does
        if kind != "Namespace":
            doc["metadata"]["namespace"] = "cscr"
    accepted = {"CKV_K8S_43", "CKV_K8S_15", "CKV_K8S_35"}  # why: deploy/ops_checks.sh
    assert _checkov_failures(checkov, list(objects.values()), tmp_path) <= accepted
    (redis,) = objects[("StatefulSet", "redis")]["spec"]["template"]["spec"]["containers"]
    redis["args"] = [a for a in redis["args"] if a not in ("--requirepass", "$(REDIS_PASSWORD)")]
    assert "CKV_CSCR_1" in _checkov_failures(checkov, list(objects.values()), tmp_path)


def test_hadolint_is_clean() -> None:
    hadolint = _ops_tool("hadolint")
    out = subprocess.run([hadolint, str(DEPLOY / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


# --- Dockerfile ------------------------------------------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, argument) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_is_multistage_non_root_with_healthcheck() -> None:
    steps = _dockerfile()
    froms = [i for i, (ins, _) in enumerate(steps) if ins == "FROM"]
    assert len(froms) >= 2, "multi-stage build expected"
    final = steps[froms[-1]:]
    users = [arg for ins, arg in final if ins == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    (health,) = [arg for ins, arg in final if ins == "HEALTHCHECK"]
    assert "/health" in health
    assert any(ins == "COPY" and "--from=build" in arg for ins, arg in final)
    env = " ".join(arg for ins, arg in final if ins == "ENV")
    assert "LITELLM_LOCAL_MODEL_COST_MAP=True" in env
    # lean by default: the base package only; torch (CPU index) only with an EXTRAS build argument
    assert "EXTRAS=\"\"" in [arg for ins, arg in steps if ins == "ARG"]
    run = " ".join(arg for ins, arg in steps if ins == "RUN")
    assert re.search(r"else\s+pip install \.;", run)
    torch_at = run.index("download.pytorch.org/whl/cpu torch==2.13.0")
    assert run.index('if [ -n "$EXTRAS" ]') < torch_at < run.index("else")
    # the router loads from site-packages at build time, without the research stack
    assert "load_routing_policy()" in run and "python -I -c" in run and "'torch'" in run
    assert "CSCR_CACHE_DIR=/var/cache/cscr" in env
    assert not any("cscr-cache" in arg for ins, arg in final if ins == "COPY")  # nothing to bake any more
    entry = json.loads(next(arg for ins, arg in final if ins == "ENTRYPOINT"))
    cmd = json.loads(next(arg for ins, arg in final if ins == "CMD"))
    assert entry + cmd == ["cscr", "serve", "--config", "/etc/cscr/gateway.yaml", "--host", "0.0.0.0",
                           "--port", "8000"]


# --- docker-compose --------------------------------------------------------------------------


def test_compose_topology() -> None:
    compose = _docs(DEPLOY / "docker-compose.yml")[0]
    services = compose["services"]
    gateways = [n for n in services if n.startswith("gateway-")]
    assert len(gateways) >= 2
    assert {"redis", "upstream", "lb"} <= set(services)
    assert services["upstream"]["command"][:3] == ["upstream", "--host", "0.0.0.0"]
    nginx = (DEPLOY / "nginx.conf").read_text()
    for name in gateways:
        assert f"server {name}:8000" in nginx
        mounts = services[name]["volumes"]
        assert "./gateway.compose.yaml:/etc/cscr/gateway.yaml:ro" in mounts
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in services["lb"]["volumes"]


def test_compose_gateway_yaml_parses() -> None:
    compose = _docs(DEPLOY / "docker-compose.yml")[0]
    env = {k: "dummy" for k in compose["services"]["gateway-1"]["environment"]}
    config = parse_config(_docs(DEPLOY / "gateway.compose.yaml")[0], "gateway.compose.yaml", env)
    assert config.store == "redis://redis:6379/0"
    assert len(config.providers) == 11
    assert all(p.api_base == "http://upstream:8100/v1" and p.direct for p in config.providers)


# --- the topology, for real: N `cscr serve` behind a reverse proxy ---------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, proc: subprocess.Popen[bytes], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout}s")


class Processes:
    """Child processes, stopped (SIGTERM, then SIGKILL) in reverse order."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[tuple[subprocess.Popen[bytes], Any]] = []

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        self.procs.append((proc, log))
        return proc

    def stop(self) -> None:
        for proc, _ in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, log in reversed(self.procs):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


def _cscr() -> list[str]:
    return [sys.executable, "-m", "gateway.cli"]


def _gateway_config(upstream: int, store: str, keys: list[dict[str, Any]]) -> dict[str, Any]:
    raw = _docs(DEPLOY / "gateway.compose.yaml")[0]
    raw["store"] = store
    raw["keys"] = keys
    raw["router"]["artifact"] = "none"  # the topology is under test here, not the router
    for p in raw["providers"]:
        p["api_base"] = f"http://127.0.0.1:{upstream}/v1"
    return raw


@pytest.fixture()
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.stop()


def _start_topology(procs: Processes, tmp_path: Path, store: str, balancer: str,
                    keys: list[dict[str, Any]] | None = None, replicas: int = 2) -> tuple[str, list[str]]:
    """Replay upstream + ``replicas`` gateways + a balancer; returns (balancer URL, replica URLs)."""
    up_port = _free_port()
    upstream = procs.start("upstream", _cscr() + ["upstream", "--port", str(up_port), "--log-level", "warning"])
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump(_gateway_config(up_port, store, keys or [])))
    env = {"REPLAY_API_KEY": "unused", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    gateways = []
    for i in range(replicas):
        port = _free_port()
        proc = procs.start(f"gateway-{i + 1}", _cscr() + ["serve", "--config", str(config), "--port", str(port),
                                                          "--log-level", "warning"], env)
        gateways.append((f"http://127.0.0.1:{port}", proc))
    lb_port = _free_port()
    if balancer == "nginx":
        conf = (DEPLOY / "nginx.conf").read_text()
        servers = "".join(f"        server {url[7:]} max_fails=3 fail_timeout=10s;\n" for url, _ in gateways)
        conf = re.sub(r"(        server gateway-\d+:8000[^\n]*\n)+", servers, conf)
        conf = re.sub(r"\n\s*resolver [^\n]*", "", conf).replace("listen 8080;", f"listen 127.0.0.1:{lb_port};")
        conf = conf.replace("pid /tmp/nginx.pid;", f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/nginx.err;")
        conf = conf.replace("worker_processes auto;", "worker_processes 1;")
        (tmp_path / "nginx.conf").write_text(conf)
        lb = procs.start("nginx", [shutil.which("nginx") or "nginx", "-c", str(tmp_path / "nginx.conf"),
                                   "-p", str(tmp_path), "-g", "daemon off;"])
    else:
        lb = procs.start("lb", [sys.executable, str(DEPLOY / "roundrobin.py"), "--port", str(lb_port)]
                         + [url for url, _ in gateways])
    _wait(f"http://127.0.0.1:{up_port}/health", upstream)
    for url, proc in gateways:
        _wait(f"{url}/ready", proc)
    base = f"http://127.0.0.1:{lb_port}"
    _wait(f"{base}/health", lb)
    return base, [url for url, _ in gateways]


def _served(replica: str) -> float:
    """Chat requests a replica has counted on its own /metrics."""
    text = urllib.request.urlopen(f"{replica}/metrics", timeout=5).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("cscr_requests_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _client(base: str, api_key: str = "unused") -> Any:
    from openai import OpenAI

    return OpenAI(base_url=f"{base}/v1", api_key=api_key, max_retries=0, timeout=30)


def _drive(base: str, n: int, api_key: str = "unused") -> Counter[str]:
    client = _client(base, api_key)
    providers: Counter[str] = Counter()
    prompts = ["Write a Python function that reverses a list.", "What is the capital of France?",
               "Explain TCP slow start in two sentences."]
    for i in range(n):
        messages = [{"role": "user", "content": prompts[i % len(prompts)]}]
        if i % 5 == 4:  # some streams: SSE must pass through the balancer
            chunks = list(client.chat.completions.create(model="auto:cheap", messages=messages, stream=True,
                                                         stream_options={"include_usage": True}))
            assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
            providers["<stream>"] += 1
            continue
        model = "auto" if i % 2 else "mistral-7b-chat"
        raw = client.chat.completions.with_raw_response.create(model=model, messages=messages, max_tokens=64)
        completion = raw.parse()
        assert completion.choices[0].message.content
        providers[raw.headers["x-cscr-provider"]] += 1
    return providers


@pytest.mark.integration
@pytest.mark.parametrize("balancer", ["python", "nginx"])
def test_two_replicas_behind_a_balancer(processes: Processes, tmp_path: Path, balancer: str) -> None:
    if balancer == "nginx" and shutil.which("nginx") is None:
        pytest.skip("nginx not installed (apt-get install nginx)")
    base, replicas = _start_topology(processes, tmp_path, "memory://", balancer)
    providers = _drive(base, 20)
    assert sum(providers.values()) == 20
    assert providers["mistral-7b-chat"] >= 8
    served = [_served(r) for r in replicas]
    assert sum(served) == 20, served
    assert all(s >= 5 for s in served), f"round-robin should spread 20 requests: {served}"


def _redis_store_available() -> bool:
    try:
        from gateway.store import open_store

        open_store("redis://127.0.0.1:1/0")
    except Exception:
        return False
    return True


def _start_redis(procs: Processes) -> int:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed")
    if not _redis_store_available():
        pytest.skip("needs the redis:// store")
    port = _free_port()
    redis = procs.start("redis", ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"])
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return port
        except OSError:
            if redis.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.mark.integration
def test_workers_on_one_host_share_one_budget_through_redis(processes: Processes, tmp_path: Path) -> None:
    """`cscr serve --workers 2` on Redis: whichever worker answers, each answer's remaining budget is
    the previous one minus this request's cost (per-worker memory:// budgets would break this as
    soon as the workers alternate)."""
    port = _start_redis(processes)
    up_port = _free_port()
    upstream = processes.start("upstream", _cscr() + ["upstream", "--port", str(up_port), "--log-level", "warning"])
    secret = "sk-deploy-workers"
    keys = [{"name": "team", "secret_sha256": hashlib.sha256(secret.encode()).hexdigest(), "budget_usd": 10.0}]
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump(_gateway_config(up_port, f"redis://127.0.0.1:{port}/0", keys)))
    gw_port = _free_port()
    gateway = processes.start("gateway", _cscr() + ["serve", "--config", str(config), "--port", str(gw_port),
                                                    "--workers", "2", "--log-level", "warning"],
                              {"REPLAY_API_KEY": "unused"})
    _wait(f"http://127.0.0.1:{up_port}/health", upstream)
    base = f"http://127.0.0.1:{gw_port}"
    _wait(f"{base}/ready", gateway)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    left = None
    for _ in range(12):
        client = _client(base, secret)  # a new client, so a new connection: the kernel picks the worker
        raw = client.chat.completions.with_raw_response.create(model="mistral-7b-chat", messages=messages,
                                                               max_tokens=32)
        client.close()
        now, cost = float(raw.headers["x-cscr-budget-remaining-usd"]), float(raw.headers["x-cscr-cost-usd"])
        assert cost > 0
        if left is not None:
            assert now == pytest.approx(left - cost, abs=1e-7)
        left = now


@pytest.mark.integration
def test_replicas_share_one_budget_through_redis(processes: Processes, tmp_path: Path) -> None:
    """Two replicas on one Redis: a key's spend recorded by one is seen by the other."""
    port = _start_redis(processes)
    secret = "sk-deploy-test"
    keys = [{"name": "team", "secret_sha256": hashlib.sha256(secret.encode()).hexdigest(), "budget_usd": 10.0}]
    base, replicas = _start_topology(processes, tmp_path, f"redis://127.0.0.1:{port}/0", "python", keys)
    providers = _drive(base, 20, secret)
    assert sum(providers.values()) == 20
    served = [_served(r) for r in replicas]
    assert all(s >= 5 for s in served), served
    for r in replicas:
        ready = json.loads(urllib.request.urlopen(f"{r}/ready", timeout=5).read())
        assert ready["checks"]["store"]["ok"] is True
    # Spend recorded by one replica is seen by the other: replica 2's remaining budget counts replica
    # 1's charge (with memory:// each replica would only know its own).
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    first = _client(replicas[0], secret).chat.completions.with_raw_response.create(
        model="mistral-7b-chat", messages=messages, max_tokens=32)
    second = _client(replicas[1], secret).chat.completions.with_raw_response.create(
        model="mistral-7b-chat", messages=messages, max_tokens=32)
    left_1 = float(first.headers["x-cscr-budget-remaining-usd"])
    left_2 = float(second.headers["x-cscr-budget-remaining-usd"])
    cost_2 = float(second.headers["x-cscr-cost-usd"])
    assert cost_2 > 0
    assert left_2 == pytest.approx(left_1 - cost_2, abs=1e-7)


def _ready(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.mark.integration
def test_the_manifests_redis_requires_the_password_the_gateway_sends(processes: Processes, tmp_path: Path) -> None:
    """The StatefulSet's redis-server arguments, run for real (password, port and --dir local), and
    `cscr serve` with the ConfigMap's store URL: with the Secret's password the store is ready;
    without it Redis refuses (NOAUTH) and so does /ready; and a full Redis refuses, never evicts."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed")
    import redis

    objects = _checks().load(K8S)
    password, port = "0f" * 16, _free_port()
    args = [a.replace("$(REDIS_PASSWORD)", password) for a in _redis_args(objects)]
    args[args.index("--dir") + 1] = str(tmp_path)
    args[args.index("--maxmemory") + 1] = "2mb"  # filled below; the manifest's 256mb would take a while
    processes.start("redis", ["redis-server", "--port", str(port), *args[1:]])
    client = redis.Redis(port=port, password=password, socket_timeout=5)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.exceptions.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(port=port, socket_timeout=5).ping()  # NOAUTH
    assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    assert client.config_get("appendonly") == {"appendonly": "yes"}

    raw = yaml.safe_load(objects[("ConfigMap", "cscr-gateway-config")]["data"]["gateway.yaml"])
    raw["store"] = raw["store"].replace("@redis:6379", f"@127.0.0.1:{port}")
    raw["router"]["artifact"] = "none"
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump(raw))
    urls = {}
    for name, secret in (("right", password), ("wrong", "not-the-password")):
        gw_port = _free_port()
        env = {"REDIS_PASSWORD": secret, "OPENAI_API_KEY": "unused", "ANTHROPIC_API_KEY": "unused"}
        proc = processes.start(f"gateway-{name}", _cscr() + ["serve", "--config", str(config), "--port", str(gw_port),
                                                             "--log-level", "warning"], env)
        _wait(f"http://127.0.0.1:{gw_port}/health", proc)
        urls[name] = f"http://127.0.0.1:{gw_port}/ready"
    status, body = _ready(urls["right"])
    assert status == 200 and body["checks"]["store"]["ok"] is True, body
    status, body = _ready(urls["wrong"])
    assert status == 503 and body["checks"]["store"]["ok"] is False, body

    # noeviction: a full Redis refuses the write; what was there stays
    client.set("cscr:test:first", "x")
    with pytest.raises(redis.exceptions.ResponseError, match="maxmemory"):  # OOM
        for i in range(10_000):
            client.set(f"cscr:test:fill:{i}", "x" * 1024)
    assert client.get("cscr:test:first") == b"x"
