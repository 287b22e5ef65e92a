"""The two test tiers: which tests are `e2e` (they start Ray, a Ray cluster or a study driver).

A test is e2e when its own source, the source of a fixture it uses (the whole fixture closure), or
the source of a helper function / module-level string any of these names mentions one of E2E_SIGNS.
Everything else is the fast tier (`make test-fast`). `guard` catches what this reading misses: in a
fast-tier test, starting Ray or a study driver fails loudly instead of silently landing in the
wrong tier.
"""
from __future__ import annotations

import inspect
import re
import subprocess
import types
from pathlib import Path
from typing import Callable, Iterable, Optional

import pytest

HERE = Path(__file__).resolve().parent

# What starts Ray or a study driver, as it reads in a test: the session fixture, the runner (also inside a
# script run with `python -c`), the study's command line, a Ray cluster, Ray or Tune themselves. The
# Python API (catkd.study.run) is not a sign: its tests of bad input start nothing, and one that runs a
# study without `ray_session` is stopped by the guard.
E2E_SIGNS = {
    "ray_session": re.compile(r"\bray_session\b"),
    "run_study(": re.compile(r"\brun_study\("),
    "-m catkd.study": re.compile(r"""["']-m["'],\s*["']catkd\.study["']"""),
    "cluster_utils": re.compile(r"\bcluster_utils\b"),
    "ray.init(": re.compile(r"\bray\.init\("),
    "start_ray(": re.compile(r"\bstart_ray\("),
    "Tuner(": re.compile(r"\bTuner\("),
    "tune.run(": re.compile(r"\btune\.run\("),
}
MISSED = ("this test starts {what} but was not marked e2e: conftest's detector missed it (tests/_tiers.py); "
          "use the ray_session fixture or mark the test @pytest.mark.e2e")


def _source(obj) -> str:
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        return ""


def _own(obj) -> bool:
    """A function written in the tests folder (helpers are read too; the library is not, nor this file,
    whose guard names what it refuses)."""
    code = getattr(obj, "__code__", None)
    if code is None:
        return False
    path = Path(code.co_filename).resolve()
    return path.is_relative_to(HERE) and path != Path(__file__).resolve()


def _names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names(const)
    return names


def _texts(func) -> Iterable[str]:
    """The source of `func`, then the module-level strings it names."""
    yield _source(func)
    for name in _names(func.__code__):
        value = func.__globals__.get(name)
        if isinstance(value, str):
            yield value


def _helpers(func) -> Iterable[Callable]:
    """The test-folder functions `func` names."""
    for name in _names(func.__code__):
        value = func.__globals__.get(name)
        if callable(value) and not isinstance(value, str) and _own(value):
            yield inspect.unwrap(value)


_REASONS: dict = {}  # per function: a fixture or helper is read once per collection, not once per test using it


def _reason(func, active: frozenset = frozenset()) -> tuple[Optional[str], bool]:
    """The first sign in `func`'s own text, then in the helpers it names (depth first), or None; and
    whether the search was cut at a function already being read (a cycle: such a result is not kept)."""
    func = inspect.unwrap(func)
    key = getattr(func, "__code__", None)
    if key is None:
        return None, False
    if key in _REASONS:
        return _REASONS[key], False
    if key in active:
        return None, True
    found, cut = next((sign for text in _texts(func) for sign, pattern in E2E_SIGNS.items()
                       if pattern.search(text)), None), False
    for helper in () if found else _helpers(func):
        found, helper_cut = _reason(helper, active | {key})
        cut = cut or helper_cut
        if found:
            break
    if found or not cut:
        _REASONS[key] = found
    return found, cut


def e2e_reason(func: Callable, fixtures: Iterable[Callable] = ()) -> Optional[str]:
    """The first sign of an end-to-end test in `func` or its fixtures' functions, or None."""
    for f in (func, *fixtures):
        found, _ = _reason(f)
        if found:
            return found
    return None


def item_reason(item: pytest.Item) -> Optional[str]:
    if "ray_session" in getattr(item, "fixturenames", ()):
        return "ray_session"
    func = getattr(item, "obj", None)
    if func is None:
        return None
    defs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
    fixtures = [d.func for name in item.fixturenames for d in defs.get(name, ())]
    return e2e_reason(func, fixtures)


def mark_e2e(items: list[pytest.Item]) -> None:
    for item in items:
        reason = item_reason(item)
        if reason:
            item.add_marker(pytest.mark.e2e(reason=reason))


def _refuse(what: str):
    def refused(*a, **k):
        pytest.fail(MISSED.format(what=what), pytrace=False)
    return refused


def guard(monkeypatch: pytest.MonkeyPatch) -> None:
    """For a fast-tier test: Ray (any local node, a cluster) and study drivers refuse to start."""
    import ray
    import ray._private.node

    monkeypatch.setattr(ray, "init", _refuse("Ray (ray.init)"))
    monkeypatch.setattr(ray._private.worker, "init", _refuse("Ray (ray.init)"), raising=False)
    monkeypatch.setattr(ray._private.node.Node, "__init__", _refuse("a Ray node"), raising=False)

    class Popen(subprocess.Popen):
        def __init__(self, args, *a, **k):
            argv = [args] if isinstance(args, (str, bytes, Path)) else list(args)
            # the driver run as a program (`-m catkd.study`, or its file): a script that only imports
            # from the package starts no driver
            if any(str(x) == "catkd.study" or str(x).endswith("catkd/study/__main__.py") for x in argv):
                pytest.fail(MISSED.format(what="a study driver (catkd.study)"), pytrace=False)
            super().__init__(args, *a, **k)

    monkeypatch.setattr(subprocess, "Popen", Popen)
