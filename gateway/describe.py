"""Descriptors made on arrival: a provider that joins with ``descriptor: probe`` (or ``logit:``) gets
its descriptor computed by the gateway, in the background, once for all replicas.

- **What is made** follows the router: its ``descriptor_spec`` (``router_core.types.DescriptorSpec``:
  kind, probe set, scorer, version) says which space its experts live in. ``probe`` sends probe
  prompts to the provider through litellm under a hard cost cap and makes, for a **graded** router
  (the default kernel-shrink), the provider's graded answers on ``n_probes`` of the artifact's
  gradable probes (``cscr describe graded``); for a **perplexity** router (the CSCR artifact), the
  perplexity fingerprint of its answers (``cscr describe live``). ``logit`` makes the logit
  footprint of a local open-weight model (``cscr describe logit``). A method that cannot make the
  router's kind is refused with a visible problem, and what a job made is checked against the spec
  with the one rule (``DescriptorSpec.incompatibility``) before it is stored.
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
from router_core.types import Descriptor, DescriptorError, DescriptorSpec

log = logging.getLogger(__name__)

DESCRIPTOR_DOCS = "descriptors"
RETRY_FAILED_S = 600.0
_PROBE_SET = re.compile(r"^(?P<bench>[a-z_]+)-n(?P<n>\d+)-s(?P<seed>\d+)-[0-9a-f]{12}$")
_METHOD_KINDS = {"probe": ("graded", "perplexity"), "logit": ("logit",)}


def cache_key(p: ProviderConfig, spec: DescriptorSpec) -> str:
    """Store name of ``p``'s descriptor: (provider, model string, descriptor space, and for the graded
    space which probes were drawn), hashed."""
    assert p.describe is not None
    scorer = spec.scorer if p.describe.method == "probe" else f"logit:{p.describe.lm}"
    drawn = [p.describe.n_probes, p.describe.seed] if spec.kind == "graded" else []
    blob = json.dumps([p.name, p.model, spec.probe_set, scorer, dict(spec.settings), spec.version, *drawn],
                      sort_keys=True)
    return f"{p.name}:{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def attempt_id(p: ProviderConfig) -> str:
    """What a failed attempt tried, beyond the cache key: a change here retries at once."""
    key_sha = hashlib.sha256((p.api_key or "").encode()).hexdigest()
    blob = json.dumps([repr(p.describe), p.api_base, key_sha, p.input_usd_per_mtok, p.output_usd_per_mtok])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def incompatibility(p: ProviderConfig, spec: DescriptorSpec | None) -> str | None:
    """Why the router cannot take what ``p.describe`` makes (None: it can)."""
    assert p.describe is not None
    if spec is None:
        return "the router adds no experts from descriptors (learned keys, or no router): retrain to add one"
    if spec.kind not in _METHOD_KINDS[p.describe.method]:
        return (f"the router's experts live in the {spec.kind} descriptor space; {p.describe.method} makes "
                f"{' or '.join(_METHOD_KINDS[p.describe.method])} descriptors, which would not be comparable. "
                f"Give a descriptor file of that kind")
    if spec.kind == "graded":
        if not spec.probes_file:
            return "the router artifact ships no graded probes (graded_probes.json.gz): it cannot probe a provider"
        return None
    if not _PROBE_SET.match(spec.probe_set):
        return f"unrecognised probe set id {spec.probe_set!r} in the router artifact"
    return None


def _live_options(p: ProviderConfig, spec: DescriptorSpec) -> list[str]:
    """What ``describe live`` and ``describe graded`` share: the provider, prices, cap, retries."""
    d = p.describe
    assert d is not None
    cmd = [
        "--model", p.model, "--name", p.name,
        "--input-usd-per-mtok", repr(p.input_usd_per_mtok), "--output-usd-per-mtok", repr(p.output_usd_per_mtok),
        "--max-cost-usd", repr(d.max_cost_usd), "--concurrency", str(d.concurrency), "--retries", str(d.retries),
        "--max-tokens", str(d.max_tokens), "--max-missing", repr(d.max_missing), "--timeout-s", repr(p.timeout_s),
        "--no-progress",
    ]
    if p.api_base:
        cmd += ["--api-base", p.api_base]
    if p.api_key:
        cmd += ["--api-key-env", "CSCR_PROBE_API_KEY"]
    return cmd


def command(p: ProviderConfig, spec: DescriptorSpec, out_file: Path) -> list[str]:
    """The child's command line (no secrets on it)."""
    assert p.describe is not None
    head = [sys.executable, "-m", "gateway.cli", "describe"]
    if spec.kind == "graded":
        assert spec.probes_file is not None
        return head + ["graded", "--probes", spec.probes_file, "--n", str(p.describe.n_probes), "--seed",
                       str(p.describe.seed), "--out-file", str(out_file)] + _live_options(p, spec)
    m = _PROBE_SET.match(spec.probe_set)
    assert m is not None
    subcommand = {"probe": "live", "logit": "logit"}[p.describe.method]
    base = head + [subcommand, "--benchmark", m["bench"], "--n", m["n"], "--seed", m["seed"],
                   "--out-file", str(out_file)]
    if spec.probes_file:  # shipped with the artifact: no benchmark data needed
        base += ["--probes", spec.probes_file]
    settings = spec.settings
    if p.describe.method == "logit":
        assert p.describe.lm is not None
        cmd = base + ["--lm", p.describe.lm, "--name", p.name]
        for key in ("new_tokens", "max_prompt_tokens", "k"):
            if key in settings:
                cmd += [f"--{key.replace('_', '-')}", str(settings[key])]
        return cmd
    cmd = base + ["--scorer", spec.scorer.split("@", 1)[0]] + _live_options(p, spec)
    for key in ("max_prompt_tokens", "max_answer_tokens"):
        if key in settings:
            cmd += [f"--{key.replace('_', '-')}", str(settings[key])]
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

    async def ensure(self, p: ProviderConfig, spec: DescriptorSpec) -> dict[str, Any] | None:
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

    async def _run(self, p: ProviderConfig, spec: DescriptorSpec, key: str) -> None:
        assert p.describe is not None
        t0 = time.time()
        try:
            vector_doc = await self._child(p, spec)
            doc = {**vector_doc, "provider": p.name, "model": p.model, "key": key, "made_at": time.time(),
                   "seconds": round(time.time() - t0, 1)}
            await self.store.put_doc(DESCRIPTOR_DOCS, key, doc)
            # still "running": ``on_done``'s install finds it in the store and says "ready" as it adds it
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

    async def _child(self, p: ProviderConfig, spec: DescriptorSpec) -> dict[str, Any]:
        assert p.describe is not None
        with tempfile.TemporaryDirectory(prefix="cscr-describe-") as tmp:
            out = Path(tmp) / "descriptor.json"
            env = dict(os.environ)
            env["CSCR_EXIT_WITH_PARENT"] = str(os.getpid())  # a gateway killed outright takes its job with it
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
            try:
                made = Descriptor.load(out)
            except DescriptorError as exc:
                raise RuntimeError(str(exc)) from None
        why = spec.incompatibility(made.spec, "the descriptor job's output")  # the one rule, before storing
        if why is not None:
            raise RuntimeError(why)
        doc = made.to_dict()
        sha = hashlib.sha256(json.dumps(doc["vector"]).encode()).hexdigest()
        run = made.settings.get("run") or {"seconds": made.settings.get("seconds")}
        return {**doc, "sha256": sha, "report": run}

    async def aclose(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
