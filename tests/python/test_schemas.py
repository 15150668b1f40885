"""The vendored schema copies must stay the reference's (checked when shared/ is present)."""

from __future__ import annotations

import json

import pytest

from conftest import SHARED_SCHEMAS, VENDORED_SCHEMAS


@pytest.mark.parametrize("path", sorted(VENDORED_SCHEMAS.glob("*.json")), ids=lambda p: p.name)
def test_vendored_schema_matches_reference(path) -> None:
    vendored = json.loads(path.read_text())
    reference = SHARED_SCHEMAS / path.name
    if not reference.is_file():
        pytest.skip("shared/ reference schemas not present on this machine")
    assert vendored == json.loads(reference.read_text()), f"{path.name} drifted from the reference"
