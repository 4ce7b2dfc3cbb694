"""The package's import structure: no cycles between vapo's modules (in-function imports included),
an import inside a function only where it has a stated reason, and every module importable on its
own. (`vapo --help` staying free of torch is checked in tests/test_config_gate.py.)"""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import vapo

ROOT = Path(vapo.__file__).parent
# The reasons an import may sit inside a function, written as a comment on its first line (or, for
# a guarded optional import, on the `try:` line above it): an optional extra the user may not have
# installed, or an import cost kept off a path that does not need it (`# lazy: ...`).
REASONS = ("optional extra", "lazy:")


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(ROOT.rglob("*.py")):
        parts = p.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


def _type_checking_blocks(tree: ast.AST) -> set[int]:
    """ids of the import nodes under ``if TYPE_CHECKING:`` (not executed at run time)."""
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            ids |= {id(n) for b in node.body for n in ast.walk(b)}
    return ids


def _in_function_imports(tree: ast.AST) -> list[ast.stmt]:
    seen: dict[int, ast.stmt] = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for n in ast.walk(node):
                if isinstance(n, (ast.Import, ast.ImportFrom)):
                    seen[id(n)] = n
    return list(seen.values())


def _targets(mods: dict[str, Path], current: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The vapo modules an import statement loads (``from vapo.pkg import x`` is vapo.pkg.x when x
    is a submodule, else vapo.pkg)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            pkg = current if mods[current].name == "__init__.py" else current.rsplit(".", 1)[0]
            for _ in range(node.level - 1):
                pkg = pkg.rsplit(".", 1)[0]
            base = f"{pkg}.{base}" if base else pkg
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
    out = []
    for n in names:
        while n and n not in mods:
            n = n.rpartition(".")[0]
        if n and n != current:
            out.append(n)
    return out


def _import_graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        tree = ast.parse(p.read_text())
        skip = _type_checking_blocks(tree)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in skip:
                graph[m].update(_targets(mods, m, node))
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_cycle_finder_finds_a_cycle():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(g) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_between_vapo_modules():
    """Imports inside functions count too: an import moved into a function to dodge a cycle is
    still the cycle."""
    assert _cycles(_import_graph()) == []


def _unexplained(src: str) -> list[int]:
    """Line numbers of the in-function imports of ``src`` that state no reason."""
    lines = src.splitlines()
    out = []
    for node in _in_function_imports(ast.parse(src)):
        first = lines[node.lineno - 1]
        above = lines[node.lineno - 2].strip() if node.lineno > 1 else ""
        if not any(r in first + (above if above.startswith("try:") else "") for r in REASONS):
            out.append(node.lineno)
    return sorted(out)


def test_reason_check_tells_explained_from_unexplained():
    src = ("import os\n"
           "def f():\n    import json\n    return json\n"
           "def g():\n    import wandb  # optional extra: vapo[logging]\n"
           "def h():\n    try:  # optional extra: vapo[data]\n        import datasets\n    except ImportError:\n        pass\n"
           "class C:\n    def m(self):\n        import matplotlib  # lazy: matplotlib\n        from vapo import x\n")
    assert _unexplained(src) == [3, 15]


def test_every_in_function_import_states_its_reason():
    offenders = [f"{p.relative_to(ROOT.parent)}:{n}: {p.read_text().splitlines()[n - 1].strip()}"
                 for p in _modules().values() for n in _unexplained(p.read_text())]
    assert not offenders, ("imports inside functions without a reason (move them to the top of the module, or "
                           "say why with '# lazy: ...' or '# optional extra: ...'):\n" + "\n".join(offenders))


def test_every_module_imports_on_its_own():
    """Each module imported first, in a fresh set of vapo modules (an ordering cycle between two
    modules shows only when one of them is imported first). The verl integration needs the
    optional extra vapo[verl]: without verl it must refuse with that message, and its modules are
    imported by tests/integrations in the verl environment (bin/test-verl)."""
    mods = [m for m in _modules() if not m.endswith("__main__")]
    if importlib.util.find_spec("verl") is None:
        verl_mods = [m for m in mods if m.startswith("vapo.integrations.verl")]
        mods = [m for m in mods if m not in verl_mods]
        out = subprocess.run([sys.executable, "-c", "import vapo.integrations.verl"], capture_output=True, text=True)
        assert out.returncode == 1 and "pip install 'vapo[verl]'" in out.stderr, out.stderr[-2000:]
    code = (
        "import importlib, sys\n"
        f"mods = {mods!r}\n"
        "bad = []\n"
        "for m in mods:\n"
        "    for k in [k for k in sys.modules if k == 'vapo' or k.startswith('vapo.')]:\n"
        "        del sys.modules[k]\n"
        "    try:\n"
        "        importlib.import_module(m)\n"
        "    except Exception as e:\n"
        "        bad.append(f'{m}: {type(e).__name__}: {e}')\n"
        "print('\\n'.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "", out.stdout
