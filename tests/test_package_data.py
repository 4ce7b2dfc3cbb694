"""Every data file under vapo/ (presets, templates, the verl recipe's files) is matched by a
package-data pattern in pyproject.toml, so a wheel install (not only an editable one) has it."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _unshipped(patterns: list[str]) -> list[str]:
    files = [p.relative_to(ROOT / "vapo").as_posix() for p in (ROOT / "vapo").rglob("*")
             if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts]
    shipped = {p.relative_to(ROOT / "vapo").as_posix() for pat in patterns for p in (ROOT / "vapo").glob(pat)}
    return sorted(set(files) - shipped)


def test_every_data_file_is_matched_by_package_data():
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["vapo"]
    assert _unshipped(patterns) == []
    # the check can fail: without the exploration presets' pattern they would not ship
    assert any(f.startswith("presets/exploration/") for f in _unshipped([p for p in patterns if "exploration" not in p]))
