"""Shared fixtures: every test gets a fresh CLIMB_HOME and, where needed, a real Dagster instance in a temp dir."""

import os
import warnings

import dagster as dg
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
warnings.filterwarnings("ignore", category=dg.PreviewWarning)
warnings.filterwarnings("ignore", category=dg.BetaWarning)

from climb_assets.home import ClimbHome  # noqa: E402
from climb_assets.resources import ClimbHomeResource  # noqa: E402


@pytest.fixture
def home(tmp_path) -> ClimbHome:
    return ClimbHome(tmp_path / "climb").ensure()


@pytest.fixture
def climb_resource(home) -> ClimbHomeResource:
    return ClimbHomeResource(root=str(home.root))


@pytest.fixture
def instance(tmp_path):
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as test_instance:
        yield test_instance
