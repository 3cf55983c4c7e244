"""Shared test fixtures: where ../shared lives (the conformance cases and the corpus)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TORCHCAFFE_SHARED", REPO.parent / "shared"))
SHARED_MISSING = f"{SHARED} is absent: the conformance cases and corpus live there (set TORCHCAFFE_SHARED)"


def shared_dir(*parts: str) -> Path:
    return SHARED.joinpath(*parts)


requires_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=SHARED_MISSING)
