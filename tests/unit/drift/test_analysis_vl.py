"""A user's vision-language run through the drift engine, as a text run goes: the series loads through
``load_series``, ``run_analysis`` scores with the same statistics code (equal to the family's reference ``score_table`` and to a
direct forward), the probe's beliefs equal naive re-encoding with the images, a changed image file invalidates
the cached rows, the analysis folder keeps the images, and ``workbench score`` writes it."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from core.drift.analysis import (
    Analysis,
    AnalysisConfig,
    AnalysisView,
    encode_records,
    run_analysis,
)
from core.drift.probe import ProbeConfig, tokens_of
from core.errors import InputError
from core.io.trajectories import read_trajectories
from core.models.families import QWEN_VL_FAMILY
from core.models.families.qwen_vl.forward import naive_label_logprobs, score_table
from core.models.families.qwen_vl.inputs import IMAGE_PAD, VLProcessor
from core.models.series import load_series, series_fingerprint
from core.workspace.world import load_world
from tests.conftest import SAMPLE_GRAPH
from tests.vl_world import LABELS, make_vl_world
from workbench.demo import SAMPLE_WORLDS
from workbench.demo.tinyvl import synthetic_xray


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_vl_world(tmp_path_factory.mktemp("vlrun"))


@pytest.fixture(scope="module")
def cfg(world):
    # on the CPU in float32 everywhere (a GPU machine would pick CUDA bf16): the equalities below are exact
    # up to float32 rounding; the CUDA path has its own test
    return AnalysisConfig.from_world(world, batch_size=3, positions="sentence", labels=LABELS, device="cpu")


@pytest.fixture(scope="module")
def series(cfg):
    return load_series(cfg.base, cfg.checkpoints, device="cpu", vision=cfg.vision)


@pytest.fixture(scope="module")
def result(cfg, series):
    return run_analysis(cfg, series=series)


def test_load_series_gives_a_vl_series_with_what_the_engine_uses(world, series, cfg):
    assert load_world(world).is_vl and not load_world(SAMPLE_WORLDS["text"]).is_vl  # the sample world is text-only
    assert load_world(world).family is QWEN_VL_FAMILY and series.family is QWEN_VL_FAMILY  # chosen once, at load
    assert isinstance(series.processor, VLProcessor)
    assert series.names == ["base", "checkpoint-2", "checkpoint-4"]
    assert series.steps == {"base": 0, "checkpoint-2": 2, "checkpoint-4": 4}
    assert series.parents == {"checkpoint-2": "base", "checkpoint-4": "checkpoint-2"}
    assert series.device == "cpu" and series.dtype == torch.float32 and series.processor is not None
    assert series.fingerprint() == series_fingerprint(series.base_dir, series.checkpoints, torch.float32)
    assert series.tokenizer is series.processor.tokenizer and series.shared_inputs


def test_records_keep_their_images_as_absolute_paths(world, cfg, result):
    records = read_trajectories(cfg.data)
    assert len(records) == 8
    for r in records:
        assert len(r["images"]) == 1 and Path(r["images"][0]).is_absolute() and Path(r["images"][0]).is_file()
        assert "mimic-cxr-00" in r["images"][0] and r["prompt"].count("<image>") == 1
    assert [r["images"] for r in result.records] == [r["images"] for r in records]


def test_image_tokens_are_prompt_and_never_scored(cfg, series, result):
    encoded = encode_records(cfg, read_trajectories(cfg.data), series)
    pad = series.processor.token_id(IMAGE_PAD)
    for e in encoded:
        assert pad in e.input_ids[: e.start] and pad not in e.completion_ids
        n = (result.tokens["traj_id"] == e.id) & (result.tokens["checkpoint"] == "base")
        assert n.sum() == len(e.completion_ids)


def test_analysis_scores_equal_score_vl_series_and_a_direct_forward(cfg, series, result):
    encoded = encode_records(cfg, read_trajectories(cfg.data), series)
    ref = score_table(series, encoded, batch_size=5)  # other batches, its own code
    keys = ["traj_id", "checkpoint", "position"]
    merged = result.tokens.merge(ref, on=keys, suffixes=("", "_ref"))
    assert len(merged) == len(ref) == len(result.tokens)
    assert np.allclose(merged["logprob"], merged["logprob_ref"], atol=2e-5)
    assert (merged["token_id"] == merged["token_id_ref"]).all()
    e = encoded[0]  # KL and entropy from the full distributions of a direct forward of one record
    logp = {name: direct_logprobs(series, name, e) for name in series.names}
    rows = result.tokens[result.tokens["traj_id"] == e.id].set_index(["checkpoint", "position"]).sort_index()
    for name in series.names:
        p = logp[name].exp()
        kl_base = (p * (logp[name] - logp["base"])).sum(-1)
        entropy = -(p * logp[name]).sum(-1)
        assert np.allclose(rows.loc[name]["kl_base"], kl_base, atol=2e-5)
        assert np.allclose(rows.loc[name]["entropy"], entropy, atol=2e-5)
    assert rows.loc["checkpoint-4"]["kl_base"].max() > 1e-4  # the adapters move the distributions


@torch.no_grad()
def direct_logprobs(series, name, e):
    """The model's own full forward of one record (it computes its 3-D positions itself).  -> (L, V)"""
    ids = torch.tensor([e.input_ids])
    pad = series.processor.token_id(IMAGE_PAD)
    with series.activate(name) as model:
        logits = model(input_ids=ids, pixel_values=e.pixel_values, image_grid_thw=e.image_grid_thw,
                       mm_token_type_ids=(ids == pad).int()).logits[0]
    return torch.log_softmax(logits.float(), -1)[e.start - 1: -1]


def test_probe_beliefs_equal_naive_re_encoding_with_the_image(cfg, series, result):
    encoded = encode_records(cfg, read_trajectories(cfg.data), series)
    pcfg = ProbeConfig(labels=LABELS, template=cfg.template)
    for e in encoded[:2]:
        for name in ("base", "checkpoint-4"):
            rows = result.beliefs[(result.beliefs["traj_id"] == e.id) & (result.beliefs["checkpoint"] == name)]
            positions = (rows["position"] + e.start).tolist()
            assert min(positions) > max(i for i, t in enumerate(e.input_ids) if t == series.processor.token_id(IMAGE_PAD))
            with series.activate(name) as model:
                naive = naive_label_logprobs(model, series.processor, e, positions, tokens_of(series.tokenizer, pcfg, LABELS))
            z = np.exp(naive - naive.max(1, keepdims=True))
            z /= z.sum(1, keepdims=True)
            assert np.allclose(rows[[f"p:{y}" for y in LABELS]].to_numpy(), z, atol=1e-5)
    assert result.probed and set(result.beliefs["checkpoint"]) == set(series.names)


def test_a_changed_image_file_invalidates_the_cached_rows(world, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(Path(world).parent, root, symlinks=True)
    w = make_vl_world_copy(root)
    cfg = AnalysisConfig.from_world(w, batch_size=4, positions="end", labels=LABELS, limit=4)
    cache = tmp_path / "cache"
    first = run_analysis(cfg, cache_dir=cache)
    entries = _entries(cache)
    assert entries  # scores and beliefs stored (in parts)
    again = run_analysis(cfg, cache_dir=cache)
    assert _entries(cache) == entries  # the same images: read from the cache
    assert again.tokens["logprob"].equals(first.tokens["logprob"])
    image = Path(first.records[0]["images"][0])
    synthetic_xray(120, 90, seed=99).save(image)  # the same file name, other pixels
    changed = run_analysis(cfg, cache_dir=cache)
    assert len(_entries(cache)) == 2 * len(entries)  # new tokens and beliefs entries, one per checkpoint each
    users = [r["id"] for r in first.records if r["images"][0] == str(image)]
    mine = changed.tokens["traj_id"].isin(users)
    assert not np.allclose(changed.tokens.loc[mine, "logprob"], first.tokens.loc[mine, "logprob"])
    assert np.allclose(changed.tokens.loc[~mine, "logprob"], first.tokens.loc[~mine, "logprob"], atol=1e-5)


def _entries(cache: Path) -> list[str]:
    """The cache's scoring and probe entries (each a whole table or a folder of parts)."""
    return sorted(p.name for p in cache.glob("*") if p.name.startswith(("tokens-", "beliefs-")))


def make_vl_world_copy(root: Path) -> Path:
    """The copied run registered as a world of its own (world.json names absolute paths)."""
    from core.workspace.world import create_world

    data = root / "data" / "test.jsonl"
    return create_world(root / "world2", "copy", root / "Qwen2.5-VL-tiny", [root / "output" / "v0-20261128"],
                        [data], SAMPLE_GRAPH).root


def test_the_analysis_folder_keeps_the_images_and_the_view_gives_them(result, tmp_path):
    out = result.save(tmp_path / "analysis")
    kept = [json.loads(line) for line in (out / "trajectories.jsonl").read_text().splitlines()]
    assert [r["images"] for r in kept] == [r["images"] for r in result.records]
    view = AnalysisView.open(out)
    first = result.records[0]
    assert view.images(first["id"]) == first["images"] and view.images("no-such-id") == []
    moved = Path(first["images"][0]).with_suffix(".moved")
    Path(first["images"][0]).rename(moved)
    try:  # a moved image does not keep the analysis from opening (the page warns where it shows it)
        assert Analysis.load(out).records[0]["images"] == first["images"]
        assert view.images(first["id"]) == first["images"]
    finally:
        moved.rename(first["images"][0])


def test_pixel_limits_are_settings_and_part_of_the_key(cfg, series):
    with pytest.raises(ValueError, match="max_pixels"):
        AnalysisConfig(base=cfg.base, data=cfg.data, max_pixels=100)
    small = AnalysisConfig(**{**cfg.__dict__, "max_pixels": 56 * 56, "min_pixels": 28 * 28})
    a = encode_records(cfg, read_trajectories(cfg.data)[:1])
    b = encode_records(small, read_trajectories(cfg.data)[:1])
    assert a[0].images_key != b[0].images_key  # other pixels, another key
    assert len(b[0].input_ids) < len(a[0].input_ids)  # fewer image tokens


def test_workbench_score_on_a_vl_world_writes_an_analysis(world, tmp_path, monkeypatch, capsys):
    from workbench import cli

    monkeypatch.setenv("WORKBENCH_WORKSPACE", str(tmp_path / "ws"))
    out = tmp_path / "out"
    code = cli.main(["score", "--world", str(world), "--out", str(out), "--limit", "3", "--positions", "end",
                     "--max-pixels", str(112 * 112)])
    assert code in (0, None), capsys.readouterr()
    a = Analysis.load(out)
    assert a.config.max_pixels == 112 * 112 and set(a.tokens["checkpoint"]) == {"base", "checkpoint-2", "checkpoint-4"}
    assert all(Path(r["images"][0]).is_file() for r in a.records) and len(a.records) == 3


def test_image_errors_name_file_line_field_and_path(world, tmp_path):
    src = Path(load_world(world).dataset_path("test"))
    lines = src.read_text().splitlines()
    bad = json.loads(lines[1])
    bad["images"] = ["../MIMIC-CXR/nope.jpg"]
    data = src.parent / "broken.jsonl"
    data.write_text("\n".join([lines[0], json.dumps(bad)]) + "\n")
    with pytest.raises(InputError, match=r"broken\.jsonl, line 2, images\[0\]: image not found: .*nope\.jpg"):
        read_trajectories(data)
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    bad["images"] = [str(tmp_path / "bad.jpg")]
    data.write_text(json.dumps(bad) + "\n")
    with pytest.raises(InputError, match=r"broken\.jsonl, line 1, images\[0\]: cannot read image .*bad\.jpg"):
        read_trajectories(data)
    bad["images"] = [lines and json.loads(lines[0])["images"][0]] * 2  # two images, one placeholder
    data.write_text(json.dumps(bad) + "\n")
    with pytest.raises(InputError, match=r"broken\.jsonl, line 1, field 'messages': 1 '<image>' placeholder"):
        read_trajectories(data)
    data.unlink()


def test_the_background_job_and_shards_score_a_vl_world_as_one_run(cfg, result, tmp_path):
    from core.drift.job import ScoreOptions, run_score
    from core.jobs import registry, worker

    options = ScoreOptions(out=str(tmp_path / "job-out"), workspace=str(tmp_path / "ws"))
    argv, files = registry.command("score", cfg, options)  # what the page's Score button starts
    job = tmp_path / "job"
    job.mkdir()
    (job / "config.json").write_text(files["config.json"])
    assert worker.main([a.replace("{job}", str(job)) for a in argv[2:]]) == 0  # argv after "-m core.jobs.worker"
    assert _entries(tmp_path / "ws" / "cache")
    keys = ["traj_id", "checkpoint", "position"]
    by_job = Analysis.load(tmp_path / "job-out")
    assert by_job.config.max_pixels == cfg.max_pixels and by_job.records[0]["images"] == result.records[0]["images"]
    for i in (0, 1):
        assert run_score(cfg, ScoreOptions(out=str(tmp_path / "sharded"), shard=f"{i}/2", cache=False)) == 0
    assert run_score(None, ScoreOptions(out=str(tmp_path / "sharded"), merge=True)) == 0
    merged = Analysis.load(tmp_path / "sharded")
    for got in (by_job, merged):
        both = got.tokens.merge(result.tokens, on=keys, suffixes=("", "_one"))
        assert len(both) == len(result.tokens) and np.allclose(both["kl_prev"], both["kl_prev_one"], atol=1e-5)
        b = got.beliefs.merge(result.beliefs, on=keys, suffixes=("", "_one"))
        assert len(b) == len(result.beliefs) and np.allclose(b["gold_prob"], b["gold_prob_one"], atol=1e-5)


def test_the_batch_plan_counts_the_vision_tower(cfg, series):
    from transformers import AutoConfig

    from core.models.fit import ModelShape, need_for

    shape = ModelShape.of_config(AutoConfig.from_pretrained(cfg.base, local_files_only=True))
    text_only = ModelShape.of_config(AutoConfig.from_pretrained(cfg.base, local_files_only=True).get_text_config())
    assert shape.vision_hidden == 32 and shape.vision_layers == 2 and shape.params > text_only.params
    encoded = encode_records(cfg, read_trajectories(cfg.data), series)
    need = need_for(encoded, shape, torch.float32, "cpu", 3, False, True, 5)
    assert need.patches == max(e.pixel_values.shape[0] for e in encoded) > 0
    assert need.row_bytes()["vision tower"] == need.patches * (5 * 32 + 3 * 64) * 4
    assert "vision tower" not in need_for(encoded, text_only, torch.float32, "cpu", 3, False, True, 5).row_bytes()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_vl_series_on_cuda_is_bfloat16_and_scores_like_cpu(cfg):
    gpu = load_series(cfg.base, cfg.checkpoints, device="cuda", vision=cfg.vision)
    assert gpu.dtype == torch.bfloat16 and next(gpu.model.parameters()).dtype == torch.bfloat16
    small = AnalysisConfig(**{**cfg.__dict__, "limit": 3, "device": "cuda"})
    on_gpu = run_analysis(small, series=gpu)
    on_cpu = run_analysis(AnalysisConfig(**{**cfg.__dict__, "limit": 3}))
    both = on_gpu.tokens.merge(on_cpu.tokens, on=["traj_id", "checkpoint", "position"], suffixes=("", "_cpu"))
    assert len(both) == len(on_cpu.tokens) and np.allclose(both["logprob"], both["logprob_cpu"], atol=0.1)


def test_text_encoded_trajectories_still_run_on_a_vl_series(series):
    """A caller that encodes text only (no images) gets the same tables' shape from a VL series."""
    from core.drift.probe import probe
    from core.drift.scoring import ScoreConfig, score
    from core.io.trajectories import encode

    recs = [{"id": "t", "prompt": "No image. Disease?", "completion": "<think> Edema. </think> The disease of this "
             "patient is Edema.", "label": "Edema"}]
    enc = encode(series.tokenizer, recs)
    tokens = score(series, enc, ScoreConfig(top_k=2, batch_size=1))
    assert len(tokens) == 3 * len(enc[0].completion_ids) and tokens["logprob"].notna().all()
    beliefs = probe(series, enc, ProbeConfig(labels=LABELS, positions="end"))
    assert len(beliefs) == 3 and np.allclose(beliefs[[f"p:{y}" for y in LABELS]].sum(1), 1)


def test_no_shared_prefix_kv_reuse_for_vl_batches(cfg, series):
    """Rows with a long common system prompt before their images: scoring with prefix sharing asked for
    equals the reference (a shared text prefix cache would lose the images' 3-D positions and pixels)."""
    from core.drift.scoring import ScoreConfig, score
    from core.models.families.text import MIN_SHARED, shared_prefix

    system = {"role": "system", "content": "You are a careful radiologist. " * 12}
    recs = [{**r, "chat": [system, *r["chat"]]} for r in read_trajectories(cfg.data)[:4]]
    encoded = encode_records(cfg, recs, series)
    ids = torch.tensor([e.input_ids[: min(len(x.input_ids) for x in encoded)] for e in encoded])
    assert shared_prefix(ids, [(e.start, len(e.input_ids)) for e in encoded]) >= MIN_SHARED
    got = score(series, encoded, ScoreConfig(top_k=0, batch_size=4, share_prefix=True))
    ref = score_table(series, encoded, batch_size=4)
    both = got.merge(ref, on=["traj_id", "checkpoint", "position"], suffixes=("", "_ref"))
    assert len(both) == len(ref) and np.allclose(both["logprob"], both["logprob_ref"], atol=2e-5)


def test_a_merged_full_vl_checkpoint_scores_and_probes_as_its_adapter(cfg, series, result, tmp_path):
    """ms-swift's ``checkpoint-N-merged`` (a full model) in the series: loaded through the image-text-to-text
    class when its turn comes, its rows equal to those of the adapter it was merged from."""
    from peft import PeftModel

    from core.models.families.qwen_vl.inputs import load_vl_model

    run = Path(cfg.checkpoints if isinstance(cfg.checkpoints, str) else cfg.checkpoints[0])
    adapter = next(run.rglob("checkpoint-4"))
    merged = PeftModel.from_pretrained(load_vl_model(cfg.base), adapter).merge_and_unload()
    merged.save_pretrained(tmp_path / "checkpoint-4-merged")
    full = AnalysisConfig(**{**cfg.__dict__, "checkpoints": [str(next(run.rglob("checkpoint-2"))),
                                                             str(tmp_path / "checkpoint-4-merged")]})
    got = run_analysis(full)
    assert list(got.summary["checkpoint"]) == ["base", "checkpoint-2", "checkpoint-4-merged"]
    keys = ["traj_id", "position"]
    for table, column in (("tokens", "kl_prev"), ("beliefs", "gold_prob")):
        mine = getattr(got, table)
        ref = getattr(result, table)
        a = mine[mine["checkpoint"] == "checkpoint-4-merged"].merge(ref[ref["checkpoint"] == "checkpoint-4"], on=keys)
        assert len(a) == (ref["checkpoint"] == "checkpoint-4").sum()
        assert np.allclose(a[f"{column}_x"], a[f"{column}_y"], atol=1e-4)


def test_the_vl_probe_in_chunks_equals_one_tree(cfg, series):
    """Past ``max_tree_tokens`` a trajectory's positions are probed in chunks (each encoding its prefix and
    images once): the beliefs are the same as from one tree."""
    from core.drift.probe import probe

    encoded = encode_records(cfg, read_trajectories(cfg.data)[:2], series)
    whole = probe(series, encoded, ProbeConfig(labels=LABELS, positions="every", max_tree_tokens=100_000))
    parts = probe(series, encoded, ProbeConfig(labels=LABELS, positions="every", max_tree_tokens=64))
    assert len(whole) == len(parts) > 3 * 2 * 20
    cols = [f"p:{y}" for y in LABELS]
    assert (whole["position"].to_numpy() == parts["position"].to_numpy()).all()
    assert np.allclose(whole[cols].to_numpy(), parts[cols].to_numpy(), atol=1e-5)
