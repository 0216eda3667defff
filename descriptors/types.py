"""Descriptor files and errors: the types are ``router_core.types``' (one reader, one rule).

A descriptor file is JSON: ``{"vector": [...], "kind", "probe_set", "scorer", "settings", "model",
"version"}``; ``Descriptor.load`` reads it for the gateway and for every tool here, and
``DescriptorSpec.incompatibility`` says whether two were made in one space.
"""

from __future__ import annotations

from pathlib import Path

from router_core.types import DESCRIPTOR_KINDS, Descriptor, DescriptorError, DescriptorSpec

KINDS = DESCRIPTOR_KINDS

__all__ = ["KINDS", "Descriptor", "DescriptorError", "DescriptorSpec", "write_atomic"]


def write_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` (parents created) through a temporary file and a rename, so a
    reader — another process using the same cache — never sees half a file."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(p)
