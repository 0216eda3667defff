"""Descriptors made on arrival: a provider that joins with ``descriptor: probe`` (or ``logit:``) gets
its descriptor computed by the gateway, in the background, once for all replicas.

- **What is made** follows the router: its artifact says which descriptor space its keys come from
  (``descriptor_spec``: kind, probe set, scorer). ``probe`` makes a perplexity fingerprint by
  sending the probe prompts to the provider through litellm under a hard cost cap
  (``cscr describe live``); ``logit`` makes the logit footprint of a local open-weight model
  (``cscr describe logit``). A method whose kind is not the router's space is refused with a
  visible problem (its vectors would not be comparable with the other keys).
- **Where it runs**: in a child process (``python -m gateway.cli describe ...``): the scorer LM
  (~2 GB) and torch never enter the serving process, and a crash there cannot take it down. The
  provider's API key goes to the child in its environment, never on its command line.
- **Cached in the store** under (provider, model string, probe set, scorer), so a restart or
  another replica never recomputes it; a change of any of the four makes a new descriptor.
- **Once across replicas**: a store lease (``describe:<key>``, as long as the job's timeout) elects
  the replica that computes; the others wait for the document and install it when it appears.
- **Failures** are stored too (with the child's last words) and shown on ``/ready``; the same attempt
  is retried after ``RETRY_FAILED_S``, and at once when what was tried changes in gateway.yaml
  (the ``descriptor:`` settings, the api_base or the API key: ``attempt_id``).
- While a descriptor is being made the provider is served like any provider the router does not
  know: ranked after the known ones, cheapest first.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from gateway.config import ProviderConfig
from gateway.store import Store

log = logging.getLogger(__name__)

DESCRIPTOR_DOCS = "descriptors"
RETRY_FAILED_S = 600.0
_PROBE_SET = re.compile(r"^(?P<bench>[a-z_]+)-n(?P<n>\d+)-s(?P<seed>\d+)-[0-9a-f]{12}$")
_METHOD_KIND = {"probe": "perplexity", "logit": "logit"}


def cache_key(p: ProviderConfig, spec: dict[str, Any]) -> str:
    """Store name of ``p``'s descriptor: (provider, model string, probe set, scorer), hashed."""
    assert p.describe is not None
    scorer = spec.get("scorer") if p.describe.method == "probe" else f"logit:{p.describe.lm}"
    blob = json.dumps([p.name, p.model, spec.get("probe_set"), scorer, spec.get("settings", {})], sort_keys=True)
    return f"{p.name}:{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def attempt_id(p: ProviderConfig) -> str:
    """What a failed attempt tried, beyond the cache key: a change here retries at once."""
    key_sha = hashlib.sha256((p.api_key or "").encode()).hexdigest()
    blob = json.dumps([repr(p.describe), p.api_base, key_sha, p.input_usd_per_mtok, p.output_usd_per_mtok])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def incompatibility(p: ProviderConfig, spec: dict[str, Any] | None) -> str | None:
    """Why the router cannot take what ``p.describe`` makes (None: it can)."""
    assert p.describe is not None
    if spec is None:
        return "the router artifact does not say which descriptor space its keys use (retrain with --descriptor-dir)"
    want = _METHOD_KIND[p.describe.method]
    if spec.get("kind") != want:
        return (f"the router's keys come from {spec.get('kind')} descriptors; a {want} descriptor "
                f"({p.describe.method}) would not be comparable. Give a descriptor file of that kind")
    if not _PROBE_SET.match(str(spec.get("probe_set", ""))):
        return f"unrecognised probe set id {spec.get('probe_set')!r} in the router artifact"
    return None


def command(p: ProviderConfig, spec: dict[str, Any], out_file: Path) -> list[str]:
    """The child's command line (no secrets on it)."""
    assert p.describe is not None
    m = _PROBE_SET.match(spec["probe_set"])
    assert m is not None
    subcommand = {"probe": "live", "logit": "logit"}[p.describe.method]
    base = [sys.executable, "-m", "gateway.cli", "describe", subcommand, "--benchmark", m["bench"], "--n", m["n"],
            "--seed", m["seed"], "--out-file", str(out_file)]
    if spec.get("probes_file"):  # shipped with the artifact: no benchmark data needed
        base += ["--probes", str(spec["probes_file"])]
    settings = spec.get("settings", {})
    if p.describe.method == "logit":
        assert p.describe.lm is not None
        cmd = base + ["--lm", p.describe.lm, "--name", p.name]
        for key in ("new_tokens", "max_prompt_tokens", "k"):
            if key in settings:
                cmd += [f"--{key.replace('_', '-')}", str(settings[key])]
        return cmd
    d = p.describe
    cmd = base + [
        "--model", p.model, "--name", p.name, "--scorer", str(spec["scorer"]).split("@", 1)[0],
        "--input-usd-per-mtok", repr(p.input_usd_per_mtok), "--output-usd-per-mtok", repr(p.output_usd_per_mtok),
        "--max-cost-usd", repr(d.max_cost_usd), "--concurrency", str(d.concurrency), "--retries", str(d.retries),
        "--max-tokens", str(d.max_tokens), "--max-missing", repr(d.max_missing), "--timeout-s", repr(p.timeout_s),
        "--no-progress",
    ]
    for key in ("max_prompt_tokens", "max_answer_tokens"):
        if key in settings:
            cmd += [f"--{key.replace('_', '-')}", str(settings[key])]
    if p.api_base:
        cmd += ["--api-base", p.api_base]
    if p.api_key:
        cmd += ["--api-key-env", "CSCR_PROBE_API_KEY"]
    return cmd


def _ready(doc: dict[str, Any]) -> dict[str, Any]:
    """/ready's view of a stored descriptor."""
    return {"state": "ready", **{k: doc.get(k) for k in ("key", "made_at", "seconds", "report")}}


class DescriptorJobs:
    """The descriptor jobs of one replica, and what it knows of the others' (via the store)."""

    def __init__(self, store: Store, on_done: Callable[[], Awaitable[None]]) -> None:
        self.store = store
        self.on_done = on_done  # re-install experts (called when a job of this replica finishes)
        self.owner = uuid.uuid4().hex
        self.status: dict[str, dict[str, Any]] = {}  # provider -> {"state", ...} for /ready
        self._tasks: dict[str, asyncio.Task[None]] = {}  # cache key -> running job

    @property
    def waiting(self) -> bool:
        """True while some provider's descriptor is being made (here or elsewhere), or a failed one
        is due for its retry: the watcher then calls ``ensure`` again."""
        now = time.time()
        return any(s["state"] in ("running", "elsewhere") or (s["state"] == "failed" and now >= s.get("retry_at", 0))
                   for s in self.status.values())

    def forget_all_but(self, providers: set[str]) -> None:
        """Drop the status of providers no longer in the config."""
        for gone in set(self.status) - providers:
            del self.status[gone]

    async def ensure(self, p: ProviderConfig, spec: dict[str, Any]) -> dict[str, Any] | None:
        """The stored descriptor of ``p`` if there is one; otherwise start (or wait for) its job and
        return None. Raises ``RuntimeError`` with the reason when the last attempt failed."""
        key = cache_key(p, spec)
        doc = await self.store.get_doc(DESCRIPTOR_DOCS, key)
        if doc is not None and "vector" in doc:
            self.status[p.name] = _ready(doc)
            return doc
        if (doc is not None and "error" in doc and doc.get("attempt") == attempt_id(p)
                and time.time() - float(doc.get("failed_at", 0)) < RETRY_FAILED_S):
            self.status[p.name] = {"state": "failed", "key": key, "error": doc["error"],
                                   "retry_at": float(doc.get("failed_at", 0)) + RETRY_FAILED_S}
            raise RuntimeError(doc["error"])
        task = self._tasks.get(key)
        if task is not None and not task.done():
            return None
        assert p.describe is not None
        if not await self.store.acquire(f"describe:{key}", self.owner, p.describe.timeout_s + 60):
            self.status[p.name] = {"state": "elsewhere", "key": key}
            return None
        self.status[p.name] = {"state": "running", "key": key, "since": time.time()}
        self._tasks[key] = asyncio.get_running_loop().create_task(self._run(p, spec, key))
        return None

    async def _run(self, p: ProviderConfig, spec: dict[str, Any], key: str) -> None:
        assert p.describe is not None
        t0 = time.time()
        try:
            vector_doc = await self._child(p, spec)
            doc = {**vector_doc, "provider": p.name, "model": p.model, "key": key, "made_at": time.time(),
                   "seconds": round(time.time() - t0, 1)}
            await self.store.put_doc(DESCRIPTOR_DOCS, key, doc)
            self.status[p.name] = _ready(doc)
            log.info("descriptor of %s made in %.0f s (%s)", p.name, doc["seconds"], json.dumps(doc["report"]))
        except Exception as exc:  # recorded for every replica; retried after RETRY_FAILED_S
            error = f"{type(exc).__name__}: {exc}"
            self.status[p.name] = {"state": "failed", "key": key, "error": error,
                                   "retry_at": time.time() + RETRY_FAILED_S}
            log.error("descriptor of %s could not be made: %s", p.name, error)
            with contextlib.suppress(Exception):
                await self.store.put_doc(DESCRIPTOR_DOCS, key, {"error": error, "failed_at": time.time(),
                                                                "attempt": attempt_id(p)})
        finally:
            with contextlib.suppress(Exception):
                await self.store.release(f"describe:{key}", self.owner)
        await self.on_done()

    async def _child(self, p: ProviderConfig, spec: dict[str, Any]) -> dict[str, Any]:
        assert p.describe is not None
        with tempfile.TemporaryDirectory(prefix="cscr-describe-") as tmp:
            out = Path(tmp) / "descriptor.json"
            env = dict(os.environ)
            if p.api_key:
                env["CSCR_PROBE_API_KEY"] = p.api_key
            proc = await asyncio.create_subprocess_exec(
                *command(p, spec, out), env=env, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )
            try:
                stdout, stderr = await asyncio.wait_for(proc.communicate(), p.describe.timeout_s)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                raise RuntimeError(f"descriptor job passed its {p.describe.timeout_s:.0f} s timeout") from None
            except asyncio.CancelledError:
                proc.kill()
                raise
            lines = stdout.decode(errors="replace").strip().splitlines()
            report: dict[str, Any] = {}
            with contextlib.suppress(ValueError, IndexError):
                report = json.loads(lines[-1])
            if proc.returncode != 0 or not out.exists():
                why = report.get("error") or stderr.decode(errors="replace").strip()[-500:]
                raise RuntimeError(f"exit {proc.returncode}: {why}")
            made = json.loads(out.read_text())
        for field in ("kind", "probe_set", "scorer") if p.describe.method == "probe" else ("kind", "probe_set"):
            if made.get(field) != spec.get(field):
                raise RuntimeError(f"made a descriptor with {field}={made.get(field)!r}, the router needs "
                                   f"{spec.get(field)!r}")
        if p.describe.method == "logit":
            want = spec.get("settings", {}).get("basis_sha256")
            if want and made["settings"].get("basis_sha256") != want:
                raise RuntimeError("the logit footprint's string basis differs from the router's")
        vector = [float(v) for v in made["vector"]]
        sha = hashlib.sha256(json.dumps(vector).encode()).hexdigest()
        run = made.get("settings", {}).get("run") or {"seconds": made.get("settings", {}).get("seconds")}
        return {"vector": vector, "sha256": sha, "kind": made["kind"], "probe_set": made["probe_set"],
                "scorer": made["scorer"], "report": run}

    async def aclose(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
