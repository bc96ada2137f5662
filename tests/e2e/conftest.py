"""Fixtures of the end-to-end tests: each method's uninterrupted run, made once per session and shared by the
resume tests (their reference) and the DDP tests (where a DiffIR stage starts from the previous stage's run)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.stacks import METHODS, fit


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, sr_shards) -> Callable[[str], Path]:
    """`uninterrupted(name)`: the directory of an 8-step run of the method (made on first use; a later DiffIR
    stage's run starts from the previous stage's)."""
    runs: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in runs:
            method = METHODS[name]
            previous = get(method.previous) if method.previous else None
            cwd = tmp_path_factory.mktemp(f"uninterrupted_{name}")
            fit(method, cwd, sr_shards, previous)
            runs[name] = cwd
        return runs[name]

    return get
