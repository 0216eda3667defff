"""checkov custom check (deploy/ops_checks.sh passes ``--external-checks-dir deploy/checkov``): a
Redis container must require a password, and take it from a Secret rather than the manifest.
deploy/check_manifests.py checks the gateway's side (its store URL uses the same password)."""

from __future__ import annotations

import re
from typing import Any

from checkov.common.models.enums import CheckResult
from checkov.kubernetes.checks.resource.base_container_check import BaseK8sContainerCheck


class RedisRequiresPassword(BaseK8sContainerCheck):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__(name="Redis must run with --requirepass from a Secret", id="CKV_CSCR_1")

    def scan_container_conf(self, metadata: dict[str, Any], conf: dict[str, Any]) -> CheckResult:
        self.evaluated_container_keys = ["args", "command", "env"]
        if not isinstance(conf, dict) or not str(conf.get("image", "")).split("/")[-1].startswith("redis"):
            return CheckResult.UNKNOWN
        args = [str(a) for a in (conf.get("command") or []) + (conf.get("args") or [])]
        at = args.index("--requirepass") if "--requirepass" in args else -1
        ref = re.fullmatch(r"\$\((\w+)\)", args[at + 1]) if 0 <= at < len(args) - 1 else None
        if ref is None:
            return CheckResult.FAILED
        env = {e.get("name"): e for e in conf.get("env") or [] if isinstance(e, dict)}
        source = env.get(ref.group(1), {}).get("valueFrom", {}).get("secretKeyRef")
        ok = isinstance(source, dict) and not source.get("optional", False)
        return CheckResult.PASSED if ok else CheckResult.FAILED


check = RedisRequiresPassword()
