"""Combinations of installed packages that cannot work together, found from package metadata
alone (nothing is imported), so that vapo/config.py can refuse them before any work starts."""

from __future__ import annotations

from importlib import metadata

from packaging.version import Version

# transformers 5.10 (the only release below 5.11 that vapo accepts, and the one verl 0.9 allows)
# builds hub-kernel repositories without a version or revision, which kernels >= 0.15 refuses
# ("Either a revision or a version must be specified") when a model module is imported: seen with
# transformers 5.10.4 beside kernels 0.19.1, while 5.25 loads beside 0.19.1. The verl extra pins
# kernels < 0.15.
KERNELS_STRICT = Version("0.15")
TRANSFORMERS_KERNELS_FIXED = Version("5.11")


def kernels_conflict() -> str | None:
    """Why the installed transformers and kernels cannot load a model together, or None. Reads
    package metadata only (nothing is imported)."""
    try:
        tf, kn = Version(metadata.version("transformers")), Version(metadata.version("kernels"))
    except metadata.PackageNotFoundError:
        return None
    if tf < TRANSFORMERS_KERNELS_FIXED and kn >= KERNELS_STRICT:
        return (f"transformers {tf} with kernels {kn}: every model load fails (\"Either a revision or a version "
                "must be specified\", from transformers/integrations/hub_kernels.py)")
    return None


__all__ = ["kernels_conflict"]
