"""Count the import cycles among the modules of some packages (default: catkd and analysis).

Every import counts, at module level, inside a function or under `if TYPE_CHECKING:`: a delayed or
type-only import does not remove the two modules' knowledge of each other. `import a.b` is an edge to a.b,
`from a import b` to a.b where that is a module (else to a); relative imports are resolved against
the importing module's package. Imports of modules outside the packages are ignored. A cycle is a
strongly connected component of more than one module (a module importing itself is not counted).

    python scripts/import_cycles.py [PACKAGE_DIR ...] [--fail]

prints the number of cycles and each cycle's modules with the imports that tie them; exits 0, or 1
with --fail when there is a cycle.
"""
from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PACKAGES = ("catkd", "analysis")


def modules(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under `package_dir` (its parent is the import root)."""
    package_dir = Path(package_dir).resolve()
    out = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _targets(node: ast.AST, name: str, is_package: bool, known: set[str]) -> list[str]:
    """The known modules one import statement of module `name` refers to."""
    if isinstance(node, ast.Import):
        found = [a.name for a in node.names]
    else:
        assert isinstance(node, ast.ImportFrom)
        if node.level:
            base = name.split(".") if is_package else name.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
            stem = ".".join(base + ([node.module] if node.module else []))
        else:
            stem = node.module or ""
        found = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in known else stem for a in node.names]
    return [m for m in found if m in known]


def graph(package_dirs: list[Path]) -> tuple[dict[str, dict[str, int]], dict[str, Path]]:
    """({module: {imported module: first line}}, {module: file})."""
    files: dict[str, Path] = {}
    for d in package_dirs:
        files.update(modules(d))
    known = set(files)
    edges: dict[str, dict[str, int]] = {m: {} for m in files}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _targets(node, name, path.name == "__init__.py", known):
                    if target != name:
                        edges[name].setdefault(target, node.lineno)
    return edges, files


def cycles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return sorted(out)


def report(package_dirs: list[Path]) -> tuple[int, str]:
    """(number of cycles, the text that lists them)."""
    edges, files = graph(package_dirs)
    found = cycles(edges)
    lines = [f"import cycles: {len(found)}"]
    for i, comp in enumerate(found, 1):
        members = set(comp)
        lines.append(f"cycle {i}: {', '.join(comp)}")
        for m in comp:
            for t, line in sorted(edges[m].items()):
                if t in members:
                    lines.append(f"    {m} -> {t}  ({files[m].relative_to(ROOT) if files[m].is_relative_to(ROOT) else files[m]}:{line})")
    return len(found), "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("packages", nargs="*", type=Path, help="package directories (default: catkd analysis)")
    p.add_argument("--fail", action="store_true", help="exit 1 when there is a cycle")
    args = p.parse_args(argv)
    n, text = report(args.packages or [ROOT / d for d in DEFAULT_PACKAGES])
    print(text)
    return 1 if args.fail and n else 0


if __name__ == "__main__":
    sys.exit(main())
