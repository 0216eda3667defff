"""Experts added through descriptors: a provider in gateway.yaml that the router artifact does not
know joins routing with only a descriptor (``descriptor: path``), no retraining and no restart.

The descriptor file is a descriptor document (``router_core.types.Descriptor``: vector, kind, probe
set, scorer, version), read by the one reader and checked against the router's ``descriptor_spec``
by the one rule: a descriptor of another space or version is refused with the file and the field
(a bare vector, which says nothing of its space, is refused too). The replica that reads the file
publishes the document to the store (``experts/<expert>``), keyed by its content hash, so a replica
without the file — or started later — installs the same expert; every replica then adds it to its
own in-memory router (routing never waits on the store).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from gateway.config import GatewayConfig, ProviderConfig
from gateway.describe import DescriptorJobs, incompatibility
from gateway.store import Store
from router_core.types import Descriptor, DescriptorError, RoutingPolicy

log = logging.getLogger(__name__)

EXPERT_DOCS = "experts"


def read_descriptor(path: str | Path) -> Descriptor:
    """A descriptor file (``Descriptor.load``; ``DescriptorError`` names the file and the field)."""
    return Descriptor.load(path)


def _doc_for(p: ProviderConfig) -> dict[str, Any] | None:
    assert p.descriptor is not None
    try:
        doc = read_descriptor(p.descriptor).to_dict()
    except DescriptorError as exc:
        log.warning("descriptor for %s not readable here (%s); looking in the store", p.name, exc)
        return None
    sha = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
    return {**doc, "expert": p.expert, "provider": p.name, "source": p.descriptor, "sha256": sha}


async def publish_descriptors(config: GatewayConfig, store: Store) -> None:
    """Put every descriptor this replica can read into the store (before the config is published,
    so other replicas find the vectors when they apply it)."""
    for p in config.providers:
        if p.descriptor is not None and p.expert is not None:
            doc = _doc_for(p)
            if doc is not None:
                await store.put_doc(EXPERT_DOCS, p.expert, doc)


async def install_experts(
    config: GatewayConfig, store: Store, router: RoutingPolicy, installed: dict[str, str],
    jobs: DescriptorJobs | None = None
) -> list[str]:
    """Add the descriptor-keyed experts of ``config`` to ``router``: those with a descriptor file
    (``install_file_experts``) and those whose descriptor the gateway makes (``install_made_experts``).
    ``installed`` (expert -> descriptor hash) remembers what is in the index already. Returns the
    problems, one per expert that could not be installed (such a provider is still served, ranked
    after the known ones)."""
    return (await install_file_experts(config, store, router, installed)
            + await install_made_experts(config, router, installed, jobs))


async def install_file_experts(
    config: GatewayConfig, store: Store, router: RoutingPolicy, installed: dict[str, str]
) -> list[str]:
    """Experts from descriptor files (read here; the store is the fallback for replicas without the
    file — publishing is ``publish_descriptors``' job, done by the replica that applies a file first)."""
    problems: list[str] = []
    for p in config.providers:
        if p.descriptor is None or p.expert is None:
            continue
        doc = _doc_for(p) or await store.get_doc(EXPERT_DOCS, p.expert)
        if doc is None:
            problems.append(f"{p.name}: descriptor {p.descriptor} neither readable here nor in the store")
            continue
        problems += _add(router, p, doc, installed, str(doc["source"]))
    return problems


async def install_made_experts(
    config: GatewayConfig, router: RoutingPolicy, installed: dict[str, str], jobs: DescriptorJobs | None
) -> list[str]:
    """Experts whose descriptor the gateway makes (``describe``): from the store if it was made
    before, else made in the background by ``jobs``; they join when it is ready. No file I/O, so
    the watcher can call this on every tick while a descriptor is being made."""
    made_here = [p for p in config.providers if p.describe is not None and p.expert is not None]
    problems: list[str] = []
    spec = router.descriptor_spec
    for p in made_here:
        why = incompatibility(p, spec)
        if why is None and jobs is None:
            why = "descriptors are not made here (no job runner)"
        if why is not None:
            problems.append(f"{p.name}: {why}")
            continue
        assert spec is not None and jobs is not None
        try:
            made = await jobs.ensure(p, spec)
        except RuntimeError as exc:
            problems.append(f"{p.name}: descriptor could not be made: {exc}")
            continue
        if made is not None:
            problems += _add(router, p, made, installed, f"made on arrival ({made.get('key')})")
    return problems


def _add(router: RoutingPolicy, p: ProviderConfig, doc: dict[str, Any], installed: dict[str, str],
         source: str) -> list[str]:
    assert p.expert is not None
    if installed.get(p.expert) == doc["sha256"]:
        return []
    try:
        router.add_expert(p.expert, Descriptor.from_dict(doc, f"descriptor {source}"))
    except DescriptorError as exc:  # another space or version, wrong dimension, learned keys
        return [f"{p.name}: descriptor rejected by the router: {exc}"]
    installed[p.expert] = doc["sha256"]
    log.info("expert %s installed from its descriptor (%s)", p.expert, source)
    return []
