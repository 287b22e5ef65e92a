import pytest
from _tiers import mark_e2e


def pytest_configure(config):
    config.addinivalue_line("markers", "e2e: starts Ray or a study")


def pytest_collection_modifyitems(items):
    mark_e2e(items)


@pytest.fixture(scope="session")
def ray_session():
    yield None


@pytest.fixture
def finished_study(ray_session):
    return "exp"
