"""Live configuration: reload on file change, on SIGHUP, or through ``POST /admin/reload``.

The whole new file is validated first; an invalid file leaves the running config in place, and the
error (file, field, reason) is logged, shown on ``/ready`` and counted in ``/metrics``.

An empty file, a file without providers and a file that is not YAML are invalid like any other
(``parse_config_text``): never applied, never published.

With a shared store the change travels through it, so every replica converges on one config. The
source of truth is the newest valid file any replica has seen, as published in the store
(``config/current``: text, sha256, version, source, published_at):
- a replica whose file changes publishes the validated text when its digest differs from the
  published one; every replica polls the version and applies what is published;
- a replica that starts compares its file with the published config: same digest, it joins that
  version; a file modified after the publication (edited while the replica was down), it publishes
  its file; an older file, it serves the published config and logs a warning that says so;
- a published config this replica cannot validate (a missing env var, an invalid text written by
  an older release) is rejected and logged; the replica keeps what it serves.
Whether the store is shared is decided by the store the process opened, never by the config of the
moment. With ``memory://`` the file is the only source.

A removed provider leaves routing at once (plans are made from the config of the moment); requests
already in flight hold their provider object and finish normally. Prices, keys and budgets apply
from the next request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.config import GatewayConfig, parse_config_text, read_config_text
from gateway.describe import DescriptorJobs
from gateway.errors import ConfigError
from gateway.experts import install_file_experts, install_made_experts, publish_descriptors

log = logging.getLogger(__name__)

CONFIG_DOCS = "config"
CURRENT = "current"


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class ReloadStatus:
    version: int = 0  # the store's version of the config in force (0: from the local file only)
    sha256: str = ""
    applied_at: float = 0.0  # time.time() of the last successful apply
    last_error: str | None = None  # the last reload that failed validation, if any since then
    expert_problems: list[str] = field(default_factory=list)  # descriptors that could not be installed


class ConfigReloader:
    """Owns the path to gateway.yaml and swaps ``state.config``; ``state`` is the GatewayState."""

    def __init__(self, state: Any, path: Path | None, text: str | None,
                 env: Mapping[str, str] | None = None) -> None:
        self.state = state
        self.env = env  # None: the process environment, read at each reload
        self.path = path
        self.status = ReloadStatus(sha256=digest(text) if text is not None else "", applied_at=time.time())
        self._file_sha = self.status.sha256
        self._seen_version = 0  # the last published version looked at (applied or rejected)
        self._file_stat: tuple[int, int] | None = None  # (mtime_ns, size) last seen by the watcher
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._installed: dict[str, str] = {}  # expert -> descriptor hash in the router's index
        self._file_problems: list[str] = []  # descriptor files that could not be installed
        self.jobs = DescriptorJobs(state.store, self._install_made)  # descriptors made on arrival

    @property
    def shared(self) -> bool:
        # The store this process opened (a restart is needed to change it), not the config of the moment.
        return not self.state.store.url.startswith("memory://")

    # --- applying ---------------------------------------------------------------------------------

    async def _install(self, config: GatewayConfig, made_only: bool = False) -> None:
        """Put the config's descriptor-keyed experts in the router's index. ``made_only``: only those
        whose descriptor the gateway makes (the watcher, while a job runs: no descriptor file is
        read again on every tick)."""
        before = set(self.status.expert_problems)
        store, router = self.state.store, self.state.router
        try:
            if not made_only:
                self._file_problems = await install_file_experts(config, store, router, self._installed)
            made = await install_made_experts(config, router, self._installed, self.jobs)
            self.status.expert_problems = self._file_problems + made
        except Exception as exc:  # the store may be down: the provider is still served, by cost
            self.status.expert_problems = [f"experts not installed: {type(exc).__name__}: {exc}"]
        for problem in self.status.expert_problems:
            if problem not in before:  # the watcher re-installs while descriptors are made: say it once
                log.error("%s", problem)
        self.jobs.forget_all_but({p.name for p in config.providers})

    async def _install_made(self) -> None:
        """A descriptor may be ready (a job here finished, or the watcher's tick): install it now."""
        async with self._lock:
            await self._install(self.state.config, made_only=True)

    async def _apply(self, config: GatewayConfig, sha: str, version: int) -> None:
        # Experts first: a new provider is routable the moment it appears in the config.
        await self._install(config)
        old = self.state.config
        self.state.forwarder.secrets.add(*(p.api_key for p in config.providers))  # scrubbed from error text
        self.state.config = config
        self.status.sha256, self.status.version, self.status.applied_at = sha, version, time.time()
        self.status.last_error = None
        added = sorted({p.name for p in config.providers} - {p.name for p in old.providers})
        removed = sorted({p.name for p in old.providers} - {p.name for p in config.providers})
        self.state.metrics.reloads.labels("applied").inc()
        log.info("config %s applied (version %d): providers added %s, removed %s; serving %d providers",
                 sha[:12], version, added or "none", removed or "none", len(config.providers))
        if config.store != old.store:
            log.warning("store URL changed in the config; a restart is needed for it to take effect")

    def _reject(self, err: ConfigError) -> None:
        self.status.last_error = str(err)
        self.state.metrics.reloads.labels("rejected").inc()
        log.error("config reload rejected, keeping the running config: %s", err)

    async def reload_file(self) -> bool:
        """Validate the file and apply it (publishing it first when the store is shared)."""
        if self.path is None:
            return False
        async with self._lock:
            try:
                text = read_config_text(self.path)
                sha = digest(text)
                self._file_sha = sha
                config = parse_config_text(text, str(self.path), self.env)
            except ConfigError as err:
                self._reject(err)
                return False
            if self.shared:
                await publish_descriptors(config, self.state.store)
                version = await self._publish(text, sha)
            else:
                version = 0
            self._seen_version = version
            if sha != self.status.sha256 or version != self.status.version:
                await self._apply(config, sha, version)
            return True

    async def _publish(self, text: str, sha: str) -> int:
        store = self.state.store
        current = await store.get_doc(CONFIG_DOCS, CURRENT)
        if current is not None and current.get("sha256") == sha:
            return int(current["version"])
        version = int(current["version"]) + 1 if current is not None else 1
        await store.put_doc(CONFIG_DOCS, CURRENT, {"version": version, "sha256": sha, "text": text,
                                                   "source": str(self.path), "published_at": time.time()})
        return version

    async def sync_from_store(self, current: dict[str, Any] | None = None) -> bool:
        """Apply the store's published config if it is not the one in force. True if applied."""
        if current is None:
            current = await self.state.store.get_doc(CONFIG_DOCS, CURRENT)
        if current is None or int(current["version"]) in (self.status.version, self._seen_version):
            return False
        async with self._lock:
            self._seen_version = int(current["version"])  # a rejected text is not retried forever
            try:
                config = parse_config_text(current["text"], f"store:{current.get('source', '?')}", self.env)
            except ConfigError as err:  # e.g. an env var this replica lacks, or an invalid text
                self._reject(err)
                log.error("still serving config %s (%d providers)", self.status.sha256[:12],
                          len(self.state.config.providers))
                return False
            if current["sha256"] == self.status.sha256:  # the text in force, published: join its version
                self.status.version = int(current["version"])
                return False
            await self._apply(config, current["sha256"], int(current["version"]))
            return True

    async def _join(self) -> None:
        """At start-up with a shared store: publish the file or adopt the published config (see the
        module docstring for the rule), and say which."""
        current = await self.state.store.get_doc(CONFIG_DOCS, CURRENT)
        if self.path is None:
            await self.sync_from_store(current)
            return
        if current is None or current.get("sha256") == self.status.sha256:
            await self.reload_file()  # publishes it (or joins the same text's version)
            return
        try:
            modified = self.path.stat().st_mtime
        except OSError:
            modified = 0.0
        published = float(current.get("published_at") or 0.0)
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(published))
        if modified >= published:
            log.info("%s was modified after the shared config version %s (published %s from %s): publishing it",
                     self.path, current.get("version"), when, current.get("source", "?"))
            await self.reload_file()
            return
        log.warning("%s differs from the shared config version %s, published later (%s from %s): serving the "
                    "shared config, not this file", self.path, current.get("version"), when,
                    current.get("source", "?"))
        await self.sync_from_store(current)

    # --- watching ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """At start-up: join the shared config (or publish ours if there is none), then watch."""
        await self._install(self.state.config)
        if self.shared:
            try:
                await self._join()
            except Exception as exc:  # the store may be down at start-up: the file config serves
                log.error("could not read the shared config from the store: %s", exc)
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            # Only the main thread may install signal handlers (not the case in tests).
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._on_sighup)
        self._task = asyncio.get_running_loop().create_task(self._watch())

    def _on_sighup(self) -> None:
        log.info("SIGHUP: reloading %s", self.path)
        asyncio.get_running_loop().create_task(self.reload_file())

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.state.config.server.reload_interval_s)
            try:
                if self.path is not None and self._file_changed():
                    await self.reload_file()
                if self.shared:
                    await self.sync_from_store()
                if self.jobs.waiting:  # a descriptor being made (here or by another replica) may be ready
                    await self._install_made()
            except Exception as exc:  # keep watching whatever happens (store outages included)
                log.warning("config watch: %s: %s", type(exc).__name__, exc)

    def _file_changed(self) -> bool:
        """Cheap check first (mtime, size); the content hash only when those moved."""
        path = self.path
        if path is None:
            return False
        try:
            st = path.stat()
        except OSError:
            return False  # a file being replaced: look again next time
        if (st.st_mtime_ns, st.st_size) == self._file_stat:
            return False
        self._file_stat = (st.st_mtime_ns, st.st_size)
        try:
            return digest(path.read_text()) != self._file_sha
        except OSError:
            self._file_stat = None
            return False

    async def stop(self) -> None:
        await self.jobs.aclose()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
