"""Where vapo caches what is slow to rebuild (warm starts, generated task data):
``$VAPO_CACHE_DIR``, default ``~/.cache/vapo``."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("VAPO_CACHE_DIR", Path.home() / ".cache" / "vapo"))


__all__ = ["cache_root"]
