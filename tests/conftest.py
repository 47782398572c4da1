"""Shared fixtures: a toy dataset in the real shard layout, written once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.toy_shards import write_toy_dataset


@pytest.fixture(scope="session")
def toy_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_dataset(tmp_path_factory.mktemp("toy"))
