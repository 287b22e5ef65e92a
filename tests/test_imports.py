"""Who imports whom: no import cycles in catkd and analysis (scripts/import_cycles.py counts them,
module-level and function-level imports alike), and each folder knows nothing above it."""
from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

from _helpers import script

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "import_cycles.py"


def _script():
    return script("import_cycles")


def _package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))
    return root / next(iter(files)).split("/")[0]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True)


def test_a_cycle_through_a_function_level_and_a_relative_import_is_found(tmp_path):
    pkg = _package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": """
            def f():
                from pkg.sub import b  # a module of a package: the edge goes to pkg.sub.b
                return b
        """,
        "pkg/sub/__init__.py": "",
        "pkg/sub/b.py": "from .. import a\n",
        "pkg/c.py": "import pkg.a\n",  # into the cycle, not part of it
    })
    assert _script().cycles(_script().graph([pkg])[0]) == [["pkg.a", "pkg.sub.b"]]
    out = _run(str(pkg))
    assert out.returncode == 0 and out.stdout.splitlines()[:2] == ["import cycles: 1", "cycle 1: pkg.a, pkg.sub.b"]
    assert _run(str(pkg), "--fail").returncode == 1


def test_an_acyclic_package_has_none_and_a_module_importing_itself_is_no_cycle(tmp_path):
    pkg = _package(tmp_path, {
        "pkg/__init__.py": "from pkg import a\n",  # a package importing its module ...
        "pkg/a.py": "import os\nfrom pkg.b import thing\nimport pkg.a\n",  # ... an outside module, itself
        "pkg/b.py": "thing = 1\n\ndef g():\n    from . import c\n",
        "pkg/c.py": "from typing import Any\n",
    })
    edges, _ = _script().graph([pkg])
    assert edges == {"pkg": {"pkg.a": 1}, "pkg.a": {"pkg.b": 2}, "pkg.b": {"pkg.c": 4}, "pkg.c": {}}
    out = _run(str(pkg), "--fail")
    assert out.returncode == 0 and out.stdout.strip() == "import cycles: 0"


def test_catkd_and_analysis_have_no_import_cycle():
    n, text = _script().report([ROOT / "catkd", ROOT / "analysis"])
    assert n == 0, text


def test_the_teacher_cache_knows_no_study_and_no_report():
    edges, _ = _script().graph([ROOT / "catkd", ROOT / "analysis"])
    for module, targets in edges.items():
        if module.startswith("catkd.teacher_cache"):
            assert not [t for t in targets if t.startswith(("catkd.study", "analysis"))], module


def test_the_report_modules_import_no_private_name_of_each_other():
    for path in sorted((ROOT / "analysis").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("analysis"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.name}:{node.lineno} imports {private} from {node.module}"


def test_config_is_on_the_ground_floor_and_the_engine_knows_no_ray_or_study():
    edges, _ = _script().graph([ROOT / "catkd", ROOT / "analysis"])
    upstairs = ("catkd.distillers", "catkd.models", "catkd.data", "catkd.engine", "catkd.study", "catkd.teacher_cache",
                "catkd.bench", "analysis")
    assert not [t for t in edges["catkd.config"] if t.startswith(upstairs)], edges["catkd.config"]
    for module, targets in edges.items():
        if module.startswith("catkd.engine"):
            assert not [t for t in targets if t.startswith(("catkd.study", "ray", "analysis"))], module
