"""``~`` and ``$VARS`` in every path the engine takes are read as a shell would read them."""

import shutil

import pandas as pd
import pytest

from core.cpo.config import TrainConfig
from core.drift.analysis import AnalysisConfig
from core.io.cache import cached_frame
from core.io.paths import expand, expand_str
from core.io.trajectories import read_jsonl
from core.workspace.workspace import Workspace
from core.workspace.world import load_world


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WB_DATA", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)  # a literal "~" folder would appear here
    (tmp_path / "home").mkdir()
    return tmp_path / "home"


def test_expand_reads_tilde_and_variables(home, tmp_path):
    assert expand("~/x") == home / "x"
    assert expand_str("$WB_DATA/y.jsonl") == str(tmp_path / "data" / "y.jsonl")
    assert expand_str("${WB_DATA}/y") == str(tmp_path / "data" / "y")
    assert expand_str("$NO_SUCH_VAR_XYZ/z") == "$NO_SUCH_VAR_XYZ/z"  # unknown: left as typed, not emptied


def test_cache_workspace_world_and_data_paths_expand(home, tmp_path, sample_world):
    frame = cached_frame("~/cache", "tokens", "k", lambda: pd.DataFrame({"a": [1]}))
    assert (home / "cache" / "tokens-k.parquet").is_file() and frame["a"].tolist() == [1]
    assert not (tmp_path / "~").exists()
    assert Workspace.open("~/ws").root == (home / "ws").resolve()
    shutil.copytree(sample_world / "data", tmp_path / "data")
    assert len(read_jsonl("$WB_DATA/test.jsonl", limit=2)) == 2
    (home / "w").symlink_to(sample_world)
    assert load_world("~/w").root == sample_world.resolve()


def test_configs_store_expanded_paths(home, tmp_path):
    cfg = AnalysisConfig(base="~/model", data="$WB_DATA/t.jsonl", checkpoints=["~/a", "~/b"], graph=None)
    assert cfg.base == str(home / "model") and cfg.data == str(tmp_path / "data" / "t.jsonl")
    assert cfg.checkpoints == [str(home / "a"), str(home / "b")] and cfg.graph is None
    run = TrainConfig(base_model="~/model", data="$WB_DATA/p.jsonl", output_dir="~/runs/x", init_adapter="~/ck")
    assert (run.base_model, run.output_dir, run.init_adapter) == (str(home / "model"), str(home / "runs" / "x"),
                                                                  str(home / "ck"))
    assert run.data == str(tmp_path / "data" / "p.jsonl")


def test_cli_paths_expand(home):
    from core.drift.job import ScoreOptions
    from workbench.cli import job_config, parser

    args = parser().parse_args(["score", "--base", "~/model", "--data", "$WB_DATA/t.jsonl", "--out", "~/out"])
    cfg, options = job_config(args, "score"), ScoreOptions.from_args(args)  # what the job gets from the flags
    assert cfg.base == str(home / "model") and options.out == str(home / "out") and "$" not in cfg.data
