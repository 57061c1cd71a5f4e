"""Shared fixtures and Hypothesis profiles.

Hypothesis profiles: "fast" (the default) runs few examples in a fixed order, so that
`make test` stays quick and reproducible; HYPOTHESIS_PROFILE=slow runs many random
examples for a longer search.
"""

import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import MODELS_DIR_VARIABLE, shared_models_dir  # noqa: E402

# Deadlines are off: the first example of a test may include a Numba compilation.
settings.register_profile(
    "fast",
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "slow",
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """Return the folder of real models; skip the test when it is absent."""
    folder = shared_models_dir()
    if folder is None:
        pytest.skip(f"no shared models folder; set {MODELS_DIR_VARIABLE} to one")
    return folder
