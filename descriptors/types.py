"""Descriptor files and errors: the types are ``router_core.types``' (one reader, one rule).

A descriptor file is JSON: ``{"vector": [...], "kind", "probe_set", "scorer", "settings", "model",
"version"}``; ``Descriptor.load`` reads it for the gateway and for every tool here, and
``DescriptorSpec.incompatibility`` says whether two were made in one space.
"""

from __future__ import annotations

from router_core.types import DESCRIPTOR_KINDS, Descriptor, DescriptorError, DescriptorSpec

KINDS = DESCRIPTOR_KINDS

__all__ = ["KINDS", "Descriptor", "DescriptorError", "DescriptorSpec"]

