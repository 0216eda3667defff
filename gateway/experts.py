"""Experts added through descriptors: a provider in gateway.yaml that the router artifact does not
know joins routing with only a descriptor (``descriptor: path``), no retraining and no restart.

The descriptor file holds the model's descriptor vector in the artifact's descriptor space, as
JSON (``{"vector": [...]}`` or a bare list) or ``.npy``. The replica that reads the file publishes
the vector to the store (``experts/<expert>``), keyed by the file's content hash, so a replica
without the file — or started later — installs the same key; every replica then adds it to its own
in-memory index (the k-NN search never waits on the store).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from gateway.config import GatewayConfig, ProviderConfig
from gateway.describe import DescriptorJobs, incompatibility
from gateway.store import Store

log = logging.getLogger(__name__)

EXPERT_DOCS = "experts"


def read_descriptor(path: str | Path) -> list[float]:
    """A descriptor vector from a file; finite numbers only (nothing else may reach an index)."""
    p = Path(path)
    if p.suffix == ".npy":
        vec = np.load(p, allow_pickle=False)
    else:
        raw = json.loads(p.read_text())
        vec = np.asarray(raw["vector"] if isinstance(raw, dict) else raw, dtype=np.float64)
    vec = np.asarray(vec, dtype=np.float64).reshape(-1)
    if vec.size == 0 or not np.all(np.isfinite(vec)):
        raise ValueError(f"descriptor {p}: empty or not finite")
    return [float(x) for x in vec]


def _doc_for(p: ProviderConfig) -> dict[str, Any] | None:
    assert p.descriptor is not None
    try:
        vector = read_descriptor(p.descriptor)
    except (OSError, ValueError, KeyError) as exc:
        log.warning("descriptor for %s not readable here (%s); looking in the store", p.name, exc)
        return None
    sha = hashlib.sha256(json.dumps(vector).encode()).hexdigest()
    return {"expert": p.expert, "provider": p.name, "model": p.model, "source": p.descriptor,
            "sha256": sha, "vector": vector}


async def publish_descriptors(config: GatewayConfig, store: Store) -> None:
    """Put every descriptor this replica can read into the store (before the config is published,
    so other replicas find the vectors when they apply it)."""
    for p in config.providers:
        if p.descriptor is not None and p.expert is not None:
            doc = _doc_for(p)
            if doc is not None:
                await store.put_doc(EXPERT_DOCS, p.expert, doc)


async def install_experts(
    config: GatewayConfig, store: Store, router: Any, installed: dict[str, str], jobs: DescriptorJobs | None = None
) -> list[str]:
    """Add the descriptor-keyed experts of ``config`` to ``router``: those with a descriptor file
    (``install_file_experts``) and those whose descriptor the gateway makes (``install_made_experts``).
    ``installed`` (expert -> descriptor hash) remembers what is in the index already. Returns the
    problems, one per expert that could not be installed (such a provider is still served, ranked
    after the known ones)."""
    return (await install_file_experts(config, store, router, installed)
            + await install_made_experts(config, router, installed, jobs))


async def install_file_experts(
    config: GatewayConfig, store: Store, router: Any, installed: dict[str, str]
) -> list[str]:
    """Experts from descriptor files (read here; the store is the fallback for replicas without the
    file — publishing is ``publish_descriptors``' job, done by the replica that applies a file first)."""
    if not hasattr(router, "add_expert"):
        return []
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
    config: GatewayConfig, router: Any, installed: dict[str, str], jobs: DescriptorJobs | None
) -> list[str]:
    """Experts whose descriptor the gateway makes (``describe``): from the store if it was made
    before, else made in the background by ``jobs``; they join when it is ready. No file I/O, so
    the watcher can call this on every tick while a descriptor is being made."""
    made_here = [p for p in config.providers if p.describe is not None and p.expert is not None]
    if not hasattr(router, "add_expert"):
        return [f"{p.name}: the router cannot add experts" for p in made_here]
    problems: list[str] = []
    spec = getattr(router, "descriptor_spec", None)
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


def _add(router: Any, p: ProviderConfig, doc: dict[str, Any], installed: dict[str, str], source: str) -> list[str]:
    assert p.expert is not None
    if installed.get(p.expert) == doc["sha256"]:
        return []
    try:
        router.add_expert(p.expert, np.asarray(doc["vector"], dtype=np.float32))
    except ValueError as exc:  # wrong dimension, or an artifact with learned keys
        return [f"{p.name}: descriptor rejected by the router: {exc}"]
    installed[p.expert] = doc["sha256"]
    log.info("expert %s installed from its descriptor (%s)", p.expert, source)
    return []
