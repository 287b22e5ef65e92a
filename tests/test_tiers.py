"""The two test tiers: conftest marks every test that starts Ray, a Ray cluster or a study as `e2e`
(`make test-fast` runs the others), and a fast-tier test that starts one anyway fails loudly."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from _tiers import e2e_reason

DATA = Path(__file__).parent / "data" / "tiers"


def _examples():
    spec = importlib.util.spec_from_file_location("tier_examples", DATA / "examples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_detector_reads_tests_their_fixtures_helpers_and_scripts():
    for test, fixtures, sign in _examples().CASES:
        assert e2e_reason(test, fixtures) == sign, test.__name__


def test_collection_marks_e2e_through_the_fixture_closure_and_leaves_the_rest(pytester):
    pytester.makeconftest((DATA / "pytester_conftest.py").read_text())
    pytester.makepyfile(test_mix=(DATA / "pytester_mix.py").read_text())
    fast = pytester.runpytest_inprocess("--collect-only", "-q", "-m", "not e2e")
    e2e = pytester.runpytest_inprocess("--collect-only", "-q", "-m", "e2e")
    assert [l for l in fast.outlines if "::" in l] == ["test_mix.py::test_plain"]
    assert sorted(l for l in e2e.outlines if "::" in l) == ["test_mix.py::test_reads_a_finished_study",
                                                            "test_mix.py::test_study_command"]


def test_a_fast_tier_test_that_starts_ray_or_a_study_fails_naming_the_detector():
    ex = _examples()
    for start in (ex.start_ray, ex.start_a_study_driver):
        with pytest.raises(pytest.fail.Exception, match="not marked e2e: conftest's detector missed it"):
            start()
