"""Which size the benchmarks run at: toy in the README's test command, full when asked for."""

from pathlib import Path

from tests.benchmarks.conftest import FULL_ENV, HERE, full_size_requested

ROOT = HERE.parent.parent


def test_default_run_is_toy_and_naming_the_folder_is_full():
    assert not full_size_requested([], ROOT, {})
    assert not full_size_requested(["tests"], ROOT, {})
    assert not full_size_requested(["tests/unit/test_cli.py", "-k", "benchmarks"], ROOT, {})
    assert full_size_requested(["tests/benchmarks", "-s"], ROOT, {})
    assert full_size_requested(["-s", "benchmarks/test_probe_speed.py::test_probe_speed"], ROOT / "tests", {})
    assert full_size_requested([str(HERE / "test_cpo_speed.py")], Path("/"), {})


def test_the_environment_variable_wins_both_ways():
    assert full_size_requested([], ROOT, {FULL_ENV: "1"})
    assert not full_size_requested(["tests/benchmarks"], ROOT, {FULL_ENV: "0"})
