"""Sharded scoring (core.drift.shards, ``workbench score --shard I/N`` / ``--merge``): equal to one unsharded run."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from core.drift import analysis as an
from core.drift import shards
from core.errors import InputError
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def cfg(quick_world, adapters):
    # no graph: the labels come from the data, so a shard must use the whole data's labels, not its share's
    return an.AnalysisConfig(base=str(quick_world / "model"), checkpoints=str(adapters),
                             data=str(quick_world / "data" / "test.jsonl"), base_names=["cxr-demo-tiny-llama"],
                             limit=5, positions="sentence", batch_size=2)


@pytest.fixture(scope="module")
def unsharded(cfg, tmp_path_factory):
    return an.run_analysis(cfg).save(tmp_path_factory.mktemp("one") / "analysis")


def assert_same_analysis(a, b, ignore=()):
    """Equal tables; floats to float32 rounding (other batch companions, other kernel shapes: 1e-7 seen)."""
    for name in an.TABLES + ("trajectories",):
        left, right = pd.read_parquet(a / f"{name}.parquet"), pd.read_parquet(b / f"{name}.parquet")
        pd.testing.assert_frame_equal(left, right, check_exact=False, rtol=1e-5, atol=1e-6, obj=name)
    assert (a / an.TEXTS).read_text() == (b / an.TEXTS).read_text()
    configs = [{k: v for k, v in json.loads((x / "config.json").read_text()).items() if k not in ignore} for x in (a, b)]
    assert configs[0] == configs[1]


def test_two_shards_merged_equal_one_unsharded_run(cfg, unsharded, tmp_path):
    out = tmp_path / "analysis"
    for i in (1, 0):  # in any order, each into its own folder
        folder = shards.run_shard(cfg, shards.Shard(i, 2), out, cache_dir=tmp_path / "cache")
        assert folder.parent == tmp_path / ".analysis.shards"
    assert shards.finished(out, cfg, 2) == [0, 1]
    merged = shards.merge(out)
    assert sorted(merged.tokens["traj_id"].unique()) == sorted(pd.read_parquet(unsharded / "tokens.parquet")["traj_id"].unique())
    assert_same_analysis(merged.save(out), unsharded)


def test_the_merge_reads_shards_in_slices_of_whole_trajectories_never_whole(cfg, unsharded, tmp_path, monkeypatch):
    """Small row groups and slices, so that each shard's table comes in several parts: the merge never reads a
    shard's table (nor a staged table) whole, each part holds whole trajectories, and the result is the same."""
    import pyarrow.parquet as pq

    out = tmp_path / "analysis"
    monkeypatch.setattr(an, "ROW_GROUP", 8)
    monkeypatch.setattr(shards, "PART_ROWS", 10)

    def whole(*args, **kwargs):
        raise AssertionError(f"a whole table read: {args[0] if args else kwargs}")

    monkeypatch.setattr(an.StagedAnalysis, "_read", whole)  # run_shard links the staged files
    for i in (0, 1):
        shards.run_shard(cfg, shards.Shard(i, 2), out, cache_dir=tmp_path / "cache")
    root = shards.shard_root(out)
    read_table, read_parquet = pq.read_table, pd.read_parquet

    def guarded(read):
        def run(path, *args, **kwargs):
            assert not Path(path).is_relative_to(root), f"{path} read whole"
            return read(path, *args, **kwargs)
        return run

    monkeypatch.setattr(pq, "read_table", guarded(read_table))
    monkeypatch.setattr(pd, "read_parquet", guarded(read_parquet))
    slices, real = [], shards.trajectory_slices
    monkeypatch.setattr(shards, "trajectory_slices", lambda path: (slices.append((path.name, s)) or s for s in real(path)))
    merged = shards.merge(out)
    monkeypatch.undo()
    for name in shards.SHARD_TABLES:
        parts = [s for n, s in slices if n == f"{name}.parquet"]
        whole_rows = sum(pq.ParquetFile(root / f"{i}-of-2" / f"{name}.parquet").metadata.num_rows for i in (0, 1))
        assert len(parts) > 2 and sum(p.num_rows for p in parts) == whole_rows
        ids = [set(p["traj_id"].to_pylist()) for p in parts]
        assert sum(map(len, ids)) == len(set().union(*ids))  # no trajectory split over two parts
        longest = max(pd.Series(p["traj_id"].to_pylist()).value_counts().max() for p in parts)
        assert max(p.num_rows for p in parts) < 10 + longest + 8  # a slice, one trajectory, one row group
    assert_same_analysis(merged.save(out), unsharded)


def test_trajectory_slices_keep_trajectories_whole_and_refuse_an_unsorted_table(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = ["a"] * 3 + ["b"] * 25 + ["c"] * 2 + ["d"] * 7 + ["e"]
    table = pa.table({"traj_id": ids, "position": list(range(len(ids)))})
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=4)
    parts = list(shards.trajectory_slices(tmp_path / "t.parquet", rows=5))
    assert pa.concat_tables(parts).equals(table)
    assert [sorted(set(p["traj_id"].to_pylist())) for p in parts] == [["a"], ["b", "c"], ["d"], ["e"]]
    pq.write_table(pa.table({"traj_id": ["a", "b", "a"]}), tmp_path / "old.parquet", row_group_size=2)
    with pytest.raises(InputError, match="old.parquet: rows not sorted by trajectory"):
        list(shards.trajectory_slices(tmp_path / "old.parquet", rows=5))


def test_a_missing_shard_is_named_and_nothing_is_merged(cfg, tmp_path):
    out = tmp_path / "analysis"
    shards.run_shard(cfg, shards.Shard(0, 3), out)
    shards.run_shard(cfg, shards.Shard(2, 3), out)
    with pytest.raises(InputError, match="shards 1 of 3 are not finished"):
        shards.merge(out)
    with pytest.raises(InputError, match="no finished shard"):
        shards.merge(tmp_path / "other")
    assert not out.exists()


def test_more_shards_than_trajectories_leave_some_empty(cfg, unsharded, tmp_path):
    small = an.AnalysisConfig(**{**cfg.__dict__, "limit": 2})
    out = tmp_path / "analysis"
    shards.run_shard(cfg, shards.Shard(2, 3), out)  # an earlier run over 5 studies: shard 2 had one of them
    for i in range(3):
        shards.run_shard(small, shards.Shard(i, 3), out)
    merged = shards.merge(out)
    assert merged.tokens["traj_id"].nunique() == 2  # shard 2's earlier tables were not read (now it has none)
    assert not list((tmp_path / ".analysis.shards" / "2-of-3").glob("*.parquet"))


def test_shard_spec_and_environment():
    assert shards.Shard.parse("1/4") == shards.Shard(1, 4)
    for bad in ("4/4", "x", "1/0", "-1/2"):
        with pytest.raises(InputError, match="shard"):
            shards.Shard.parse(bad)
    assert shards.Shard.from_env({"RANK": "1", "WORLD_SIZE": "2"}) == shards.Shard(1, 2)
    assert shards.Shard.from_env({}) is None and shards.Shard.from_env({"WORLD_SIZE": "1"}) is None
    assert shards.Shard(1, 3).take(list(range(8))) == [1, 4, 7]


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "workbench.cli", "score", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_the_command_line_shards_and_merges(cfg, unsharded, tmp_path):
    out = tmp_path / "analysis"
    flags = ["--base", cfg.base, "--checkpoints", cfg.checkpoints, "--data", cfg.data, "--base-name",
             "cxr-demo-tiny-llama", "--limit", "5", "--positions", "sentence", "--batch-size", "2", "--no-cache",
             "--out", str(out)]
    for i in (0, 1):
        run = _cli(*flags, "--shard", f"{i}/2")
        assert run.returncode == 0, run.stderr
        assert "--merge" in run.stdout and not out.exists()
    from workbench import cli

    assert cli.main(["score", "--merge", "--out", str(out)]) == 0  # the merge in this process
    assert_same_analysis(out, unsharded)
    assert not (tmp_path / ".analysis.shards").exists()  # removed once the merge is saved


@pytest.mark.slow
def test_accelerate_launch_runs_a_shard_per_process_and_rank_0_merges(cfg, unsharded, tmp_path):
    import shutil

    accelerate = shutil.which("accelerate", path=str(ROOT / ".venv" / "bin")) or shutil.which("accelerate")
    if accelerate is None:
        pytest.skip("accelerate's launcher is not installed")
    out = tmp_path / "analysis"
    # torchrun's launcher (what --multi_gpu picks) sets RANK/WORLD_SIZE; --device cpu keeps it on the CPU here
    run = subprocess.run([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                          "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "workbench.cli", "score",
                          "--base", cfg.base, "--checkpoints", cfg.checkpoints, "--data", cfg.data, "--base-name",
                          "cxr-demo-tiny-llama", "--limit", "5", "--positions", "sentence", "--batch-size", "2",
                          "--device", "cpu", "--no-cache", "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "shard 0/2 written" in run.stderr and "shard 1/2 written" in run.stderr
    assert_same_analysis(out, unsharded, ignore=("device",))  # --device cpu: the same tables
    assert not (tmp_path / ".analysis.shards").exists()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["probe"])  # the merge is the same for "generate" rows (decoding: 4 more CLI runs)
def test_perturbation_shards_merged_equal_one_run(quick_world, tmp_path, mode):
    def perturb(*args):
        return subprocess.run([sys.executable, "-m", "workbench.cli", "perturb", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=300)

    from workbench import cli

    flags = ["--world", str(quick_world), "--limit", "6", "--find", "opacity", "--replace", "shadow", "--mode", mode]
    one, out = tmp_path / "one.parquet", tmp_path / "sharded.parquet"
    assert cli.main(["perturb", *flags, "--out", str(one)]) == 0  # the unsharded run and the merge in this process
    for i in (1, 0):  # each shard as its own process, as a launcher starts them
        assert (run := perturb(*flags, "--out", str(out), "--shard", f"{i}/2")).returncode == 0, run.stderr
    assert not out.exists()
    assert cli.main(["perturb", "--merge", "--out", str(out)]) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(out), pd.read_parquet(one), check_exact=False, rtol=1e-5, atol=1e-6)
    assert not shards.shard_root(out).exists()
