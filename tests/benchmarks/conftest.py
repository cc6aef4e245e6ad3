"""Benchmark size: toy in the default test run (every benchmark still runs end to end, so none can rot),
full when asked for, by naming this folder or a file in it on the command line
(``pytest tests/benchmarks -s``) or by setting ``WORKBENCH_BENCH_FULL=1`` (``=0`` forces toy size).

A benchmark takes the ``size`` fixture and picks its figures with ``size(full_value, toy_value)``; the
figures it prints at toy size are not measurements (the header says so)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

FULL_ENV = "WORKBENCH_BENCH_FULL"
HERE = Path(__file__).resolve().parent


def full_size_requested(args: list[str], cwd: Path, env: dict[str, str]) -> bool:
    """True when ``env`` asks for full size, or when no env says otherwise and a path in ``args`` (the
    command line as typed, relative to ``cwd``) names this folder or something in it."""
    if env.get(FULL_ENV) not in (None, ""):
        return env[FULL_ENV] not in ("0", "false", "no")
    for arg in args:
        if arg.startswith("-"):
            continue
        path = (cwd / arg.split("::")[0]).resolve()
        if path == HERE or HERE in path.parents:
            return True
    return False


class Size:
    def __init__(self, full: bool):
        self.full = full

    def __call__(self, full_value, toy_value):
        return full_value if self.full else toy_value

    def header(self) -> str:
        return "" if self.full else " [toy size: a smoke run, not a measurement; `pytest tests/benchmarks -s` measures]"


@pytest.fixture(scope="session")
def size(request) -> Size:
    params = request.config.invocation_params
    return Size(full_size_requested(list(params.args), Path(params.dir), dict(os.environ)))
