"""Shared fixtures: where the real benchmark rows live (never copied into the repo)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared benchmark-data folder.

    ``SPEARFL_SHARED_DATA`` overrides the default ``<repo>/../shared/data``. When the folder is
    missing the test is skipped, unless ``SPEARFL_REQUIRE_SHARED=1`` (CI), where it must exist.
    """
    folder = Path(os.environ.get("SPEARFL_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
    if not folder.is_dir():
        reason = f"shared benchmark data not found at {folder} (set SPEARFL_SHARED_DATA)"
        if os.environ.get("SPEARFL_REQUIRE_SHARED") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return folder
