"""Function-local imports of blockprune modules are kept only where they defer something heavy.

A lazy import hides a dependency from the reader and costs a lookup per call; it pays only when the module
it loads pulls a heavy package (torch, Ray, MLflow, scipy…) that an entry point's ``--help`` or a
torch-free config parser should not load. This walks every module's top-level imports to find which
packages it pulls, and fails on a local import of a module that pulls none: that one belongs at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "blockprune"
HEAVY = {"torch", "ray", "mlflow", "transformers", "lm_eval", "matplotlib", "accelerate", "peft", "lightning",
         "datasets", "deepspeed", "safetensors", "gguf", "sklearn", "pandas", "scipy"}


def _module_files() -> dict[str, Path]:
    out = {}
    for f in PACKAGE.rglob("*.py"):
        parts = list(f.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = f
    return out


def _resolve(node: ast.ImportFrom, module: str, path: Path) -> str:
    pkg = module if path.name == "__init__.py" else module.rpartition(".")[0]
    base = node.module or ""
    if node.level:
        anchor = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
        base = ".".join(anchor + ([base] if base else []))
    return base


def _top_level(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported (``if TYPE_CHECKING`` blocks excluded)."""
    out: list[ast.Import | ast.ImportFrom] = []

    def walk(stmts: list[ast.stmt]) -> None:
        for s in stmts:
            if isinstance(s, ast.Import | ast.ImportFrom):
                out.append(s)
            elif isinstance(s, ast.If) and "TYPE_CHECKING" not in ast.unparse(s.test):
                walk(s.body)
                walk(s.orelse)
            elif isinstance(s, ast.Try):
                walk(s.body)
                for h in s.handlers:
                    walk(h.body)
                walk(s.orelse)
                walk(s.finalbody)

    walk(tree.body)
    return out


class _Graph:
    def __init__(self) -> None:
        self.files = _module_files()
        self.trees = {m: ast.parse(f.read_text()) for m, f in self.files.items()}
        self.deps: dict[str, set[str]] = {}
        self.direct: dict[str, set[str]] = {}
        for m, tree in self.trees.items():
            deps, heavy = set(), set()
            for n in _top_level(tree):
                names = [a.name for a in n.names] if isinstance(n, ast.Import) else [_resolve(n, m, self.files[m])]
                if isinstance(n, ast.ImportFrom) and names[0].startswith("blockprune"):
                    deps |= {f"{names[0]}.{a.name}" for a in n.names if f"{names[0]}.{a.name}" in self.files}
                for name in names:
                    heavy |= {name.split(".")[0]} & HEAVY
                    if name.startswith("blockprune"):
                        parts = name.split(".")
                        deps |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & set(self.files)
            self.deps[m], self.direct[m] = deps, heavy
        self._memo: dict[str, set[str]] = {}

    def heavy(self, m: str, stack: tuple[str, ...] = ()) -> set[str]:
        """Heavy packages importing ``m`` loads (its parents' and its dependencies' included)."""
        if m in self._memo:
            return self._memo[m]
        if m in stack:
            return set()
        out = set(self.direct.get(m, set()))
        parts = m.split(".")
        for p in (".".join(parts[:i]) for i in range(1, len(parts))):
            if p in self.files:
                out |= self.heavy(p, (*stack, m))
        for d in self.deps.get(m, ()):
            out |= self.heavy(d, (*stack, m))
        self._memo[m] = out
        return out

    def needless_local_imports(self) -> list[str]:
        found = []
        for m, tree in sorted(self.trees.items()):
            top = {id(n) for n in _top_level(tree)}
            for n in ast.walk(tree):
                if not isinstance(n, ast.ImportFrom) or id(n) in top:
                    continue
                base = _resolve(n, m, self.files[m])
                if not base.startswith("blockprune"):
                    continue
                subs = [f"{base}.{a.name}" for a in n.names if f"{base}.{a.name}" in self.files]
                target = subs[-1] if subs else base
                if target in self.files and not self.heavy(target):
                    found.append(f"{self.files[m].relative_to(PACKAGE.parent)}:{n.lineno} imports {target}")
        return found


def test_local_imports_only_defer_heavy_modules() -> None:
    found = _Graph().needless_local_imports()
    assert not found, "light modules imported inside functions (move them to the top):\n" + "\n".join(found)


def test_the_check_finds_a_needless_local_import(tmp_path, monkeypatch) -> None:
    pkg = tmp_path / "blockprune"
    (pkg / "light").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "light" / "__init__.py").write_text("")
    (pkg / "light" / "a.py").write_text("X = 1\n")
    (pkg / "light" / "b.py").write_text("import torch\n")
    (pkg / "light" / "c.py").write_text("def f():\n    from blockprune.light.a import X\n    from blockprune.light.b import Y\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", pkg)
    assert _Graph().needless_local_imports() == ["blockprune/light/c.py:2 imports blockprune.light.a"]
