"""Checks on deploy/k8s that a schema cannot make: what this gateway needs of its own manifests.

    python deploy/check_manifests.py [deploy/k8s] [--k8s-version 1.33.0]

Reads the manifests the kustomization lists, validates each against the Kubernetes JSON schemas
(``kubernetes-validate``, strict, when installed: the ``ops`` extra) and refuses, among others, a
deployment whose Redis has no password or whose gateway does not use one. Exit status 1 with one
line per problem. tests/test_deploy.py runs the same functions.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import yaml

Objects = dict[tuple[str, str], dict[str, Any]]
PASSWORD_VAR = "REDIS_PASSWORD"
FLUSH_S = 5  # the gateway's settlement flush on shutdown (gateway/app.py lifespan)


def load(k8s_dir: Path) -> Objects:
    """(kind, name) -> object, for every file the kustomization lists."""
    kust = yaml.safe_load((k8s_dir / "kustomization.yaml").read_text())
    out: Objects = {}
    for name in kust["resources"]:
        for doc in yaml.safe_load_all((k8s_dir / name).read_text()):
            if doc is not None:
                out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


def _pod(objects: Objects, kind: str, name: str) -> dict[str, Any]:
    return dict(objects.get((kind, name), {}).get("spec", {}).get("template", {}).get("spec", {}))


def _container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    return next((c for c in pod.get("containers", []) if c.get("name") == name), {})


def _secret_env(container: dict[str, Any], var: str) -> tuple[str, str] | None:
    """(secret, key) that env ``var`` comes from, if it comes from a required Secret key."""
    for e in container.get("env", []):
        ref = e.get("valueFrom", {}).get("secretKeyRef") if e.get("name") == var else None
        if ref and not ref.get("optional", False):
            return ref.get("name"), ref.get("key")
    return None


def redis_auth_problems(objects: Objects) -> list[str]:
    """Redis must require a password from a Secret, and the gateway must connect with that one."""
    problems = []
    redis = _container(_pod(objects, "StatefulSet", "redis"), "redis")
    args = [str(a) for a in redis.get("command", []) + redis.get("args", [])]
    at = args.index("--requirepass") if "--requirepass" in args else -1
    if at < 0 or at + 1 >= len(args) or args[at + 1] != f"$({PASSWORD_VAR})":
        problems.append(f"redis: no --requirepass $({PASSWORD_VAR}) (an open Redis holds every budget)")
    redis_ref = _secret_env(redis, PASSWORD_VAR)
    if redis_ref is None:
        problems.append(f"redis: {PASSWORD_VAR} does not come from a required Secret key")
    cm = objects.get(("ConfigMap", "cscr-gateway-config"), {}).get("data", {}).get("gateway.yaml", "")
    store = str((yaml.safe_load(cm) or {}).get("store", ""))
    if not re.match(r"rediss?://[^@/]*:\$\{" + PASSWORD_VAR + r"\}@", store):
        problems.append(f"gateway: store URL {store!r} does not authenticate with ${{{PASSWORD_VAR}}}")
    gw_ref = _secret_env(_container(_pod(objects, "Deployment", "cscr-gateway"), "gateway"), PASSWORD_VAR)
    if gw_ref is None or gw_ref != redis_ref:
        problems.append(f"gateway: {PASSWORD_VAR} is not the Redis password's Secret key ({gw_ref} vs {redis_ref})")
    return problems


def redis_memory_problems(objects: Objects) -> list[str]:
    """Budget keys must never be evicted, and must survive a restart."""
    redis = _container(_pod(objects, "StatefulSet", "redis"), "redis")
    args = [str(a) for a in redis.get("command", []) + redis.get("args", [])]
    problems = []
    for flag, want in (("--maxmemory-policy", "noeviction"), ("--appendonly", "yes")):
        if flag not in args or args.index(flag) + 1 >= len(args) or args[args.index(flag) + 1] != want:
            problems.append(f"redis: {flag} must be {want}")
    if "--maxmemory" not in args:
        problems.append("redis: no --maxmemory (it would grow until the OOM killer, then lose the AOF tail)")
    claims = objects.get(("StatefulSet", "redis"), {}).get("spec", {}).get("volumeClaimTemplates", [])
    mounts = {m.get("name"): m.get("mountPath") for m in redis.get("volumeMounts", [])}
    if not any(mounts.get(c["metadata"]["name"]) == "/data" for c in claims):
        problems.append("redis: /data is not on a PersistentVolumeClaim")
    return problems


def _flag(args: list[str], flag: str, default: float) -> float:
    return float(args[args.index(flag) + 1]) if flag in args and args.index(flag) + 1 < len(args) else default


def gateway_pod_problems(objects: Objects) -> list[str]:
    """Graceful drain fits the grace period; the cache directory is a writable volume; no Secret."""
    pod = _pod(objects, "Deployment", "cscr-gateway")
    gw = _container(pod, "gateway")
    problems = []
    pre = gw.get("lifecycle", {}).get("preStop", {})
    slept = re.search(r"sleep\W*(\d+(?:\.\d+)?)", " ".join(pre.get("exec", {}).get("command", [])))
    pre_s = float(pre["sleep"]["seconds"]) if "sleep" in pre else float(slept.group(1)) if slept else 0.0
    graceful = _flag([str(a) for a in gw.get("args", [])], "--graceful-timeout", 30.0)  # cscr serve's default
    grace = float(pod.get("terminationGracePeriodSeconds", 30))
    if grace < pre_s + graceful + FLUSH_S:
        problems.append(f"gateway: terminationGracePeriodSeconds {grace:g} < preStop {pre_s:g} + "
                        f"--graceful-timeout {graceful:g} + flush {FLUSH_S}: in-flight streams get SIGKILL")
    env = {e.get("name"): e.get("value") for e in gw.get("env", [])}
    cache = env.get("CSCR_CACHE_DIR")
    mounts = {m.get("mountPath"): m.get("name") for m in gw.get("volumeMounts", [])}
    volumes = {v.get("name"): v for v in pod.get("volumes", [])}
    vol = volumes.get(mounts.get(cache)) if cache else None
    if vol is None or not ("persistentVolumeClaim" in vol or vol.get("emptyDir", {}).get("sizeLimit")):
        problems.append(f"gateway: CSCR_CACHE_DIR {cache!r} is not a mounted PVC or sized emptyDir "
                        "(the root filesystem is read-only)")
    if any(kind == "Secret" for kind, _ in objects):
        problems.append("kustomization: lists a Secret; `apply -k` would overwrite the real one")
    return problems


def policy_problems(objects: Objects) -> list[str]:
    """Only the gateway reaches Redis; the HPA scales on CPU alone."""
    problems = []
    nets = [o for (kind, _), o in objects.items() if kind == "NetworkPolicy"]
    redis_np = [n for n in nets if n["spec"].get("podSelector", {}).get("matchLabels", {}).get(
        "app.kubernetes.io/name") == "redis"]
    sources = [f.get("podSelector", {}).get("matchLabels", {}) for n in redis_np
               for rule in n["spec"].get("ingress", []) for f in rule.get("from", [{}])]
    if not redis_np or sources != [{"app.kubernetes.io/name": "cscr-gateway"}]:
        problems.append("networkpolicy: Redis must admit the gateway pods and nothing else")
    metrics = objects.get(("HorizontalPodAutoscaler", "cscr-gateway"), {}).get("spec", {}).get("metrics", [])
    if [m.get("resource", {}).get("name") for m in metrics] != ["cpu"]:
        problems.append("hpa: scale on CPU only (memory never drops after a burst)")
    return problems


def schema_problems(objects: Objects, version: str) -> list[str]:
    try:
        import kubernetes_validate
    except ImportError:
        return []  # the ops extra is not installed; the tests say so by skipping
    problems = []
    for (kind, name), doc in objects.items():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            problems.append(f"{kind}/{name}: {err.message}")
    return problems


def all_problems(k8s_dir: Path, version: str = "1.33.0") -> list[str]:
    objects = load(k8s_dir)
    return (redis_auth_problems(objects) + redis_memory_problems(objects) + gateway_pod_problems(objects)
            + policy_problems(objects) + schema_problems(objects, version))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("k8s_dir", nargs="?", type=Path, default=Path(__file__).resolve().parent / "k8s")
    parser.add_argument("--k8s-version", default="1.33.0")
    args = parser.parse_args(argv)
    problems = all_problems(args.k8s_dir, args.k8s_version)
    for p in problems:
        print(p, file=sys.stderr)
    print(f"{len(problems)} problem(s) in {args.k8s_dir}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
