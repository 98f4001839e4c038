"""Shared fixtures: both anyio backends, and the skip-or-fail rule for local services."""

from __future__ import annotations

import pytest

pytest_plugins = ["anyio"]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def asyncio_only() -> str:
    """Use as ``anyio_backend`` override in modules whose connectors only run on asyncio."""
    return "asyncio"
