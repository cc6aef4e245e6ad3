"""CPO on a vision-language base: pairs with images, the batch the model gets (each side its own pixels),
LoRA on the language model only (the vision tower bitwise unchanged), the three objectives, resume, and a
background run whose checkpoints load as a VL series."""

import json
import time
from pathlib import Path

import pytest
import torch

from core.errors import InputError
from core.io.pairs import is_visual, read_pairs
from tests.vl_pairs import cot, world_images, write_vl_pairs
from tests.vl_world import HUB_ID, QUESTION, make_vl_world


@pytest.fixture(scope="session")
def vl_world_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("vl-cpo-world")
    make_vl_world(root)
    return root


@pytest.fixture(scope="session")
def vl_pairs(vl_world_root):
    return write_vl_pairs(vl_world_root, vl_world_root / "pairs" / "train.jsonl")


def config(root: Path, data: Path, out: Path, **kw):
    from core.cpo.config import TrainConfig

    settings = dict(base_model=str(root / "Qwen2.5-VL-tiny"), init_adapter=str(root / "output" / "v0-20261128" / "checkpoint-4"),
                    lora_r=4, lora_alpha=8, max_steps=1, batch_size=4, learning_rate=1e-2, save_steps=1, base_names=[HUB_ID])
    return TrainConfig(data=str(data), output_dir=str(out), **{**settings, **kw})


# ---- pairs with images ------------------------------------------------------------------------------------

def test_pairs_resolve_images_against_the_file_and_mark_visual_pairs(vl_world_root, vl_pairs):
    pairs = read_pairs(vl_pairs)
    images = world_images(vl_world_root)
    assert pairs[0]["images"] == [str(images[0])]  # "../MIMIC-CXR/..." from the pairs file's folder
    assert pairs[0]["rejected_images"] == pairs[0]["images"] and not is_visual(pairs[0])
    assert pairs[1]["rejected_images"] == [str(images[2])] and is_visual(pairs[1])
    assert pairs[1]["chosen"] == pairs[1]["rejected"] and pairs[1]["source"] == "image_swap"


def test_trl_vision_format_and_prompts_without_a_placeholder(vl_world_root, tmp_path):
    image = str(world_images(vl_world_root)[0])
    recs = [{"images": [image], "prompt": [{"role": "user", "content": [
                {"type": "image"}, {"type": "text", "text": " What disease?"}]}],
             "chosen": [{"role": "assistant", "content": [{"type": "text", "text": cot("Edema")}]}],
             "rejected": [{"role": "assistant", "content": cot("Pneumonia")}]},
            {"images": [image], "prompt": "What disease?", "chosen": "a", "rejected": "b"}]
    path = tmp_path / "trl.jsonl"
    path.write_text("\n".join(map(json.dumps, recs)) + "\n")
    a, b = read_pairs(path)
    assert a["prompt"] == "<image> What disease?" and a["chat"][-1]["content"] == "<image> What disease?"
    assert a["chosen"] == cot("Edema") and a["images"] == [image]
    assert b["prompt"] == "<image>What disease?"  # TRL puts images first when the text names none


@pytest.mark.parametrize("change, message", [
    ({"images": ["missing/nowhere.jpg"]}, r"line 1, images\[0\]: image not found: .*missing/nowhere.jpg"),
    ({"rejected_images": ["broken.jpg"]}, r"line 1, rejected_images\[0\]: cannot read image .*broken.jpg"),
    ({"rejected_images": []}, "line 1, field 'rejected_images': 0 image"),
    ({"prompt": "two <image> and <image>"}, "line 1, field 'prompt': 2 '<image>' placeholder"),
    ({"images": [7]}, r"line 1, images: expected a list of image paths"),
])
def test_bad_images_are_named_with_line_field_and_path(vl_world_root, tmp_path, change, message):
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg at all")
    rec = {"prompt": QUESTION, "chosen": "a", "rejected": "b", "images": [str(world_images(vl_world_root)[0])]}
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({**rec, **change}) + "\n")
    with pytest.raises(InputError, match=message):
        read_pairs(path)


def test_a_text_base_refuses_pairs_with_images(sample_world, vl_pairs, tmp_path):
    from core.cpo.config import TrainConfig
    from core.cpo.train import preflight

    cfg = TrainConfig(base_model=str(sample_world / "model"), data=str(vl_pairs), output_dir=str(tmp_path))
    assert preflight(cfg).errors == [f"{vl_pairs}: pair 1 has images but the base model {sample_world / 'model'} "
                                     "is a text-only model; train a vision-language base on pairs with images"]


@pytest.mark.parametrize("field, value, expected", [
    ("source_weights", {"image_swap": 0}, "an object of source name -> positive finite number"),
    ("source_weights", ["image_swap"], "an object of source name -> positive finite number"),
    ("max_pixels", 100, "null or an integer >= 784"),
])
def test_the_vl_fields_of_a_config_are_checked(tmp_path, field, value, expected):
    from core.cpo.config import TrainConfig

    path = tmp_path / "run.json"
    path.write_text(json.dumps({"base_model": "m", "data": "d", "output_dir": "o", field: value}))
    with pytest.raises(InputError, match=f"run.json: field '{field}': expected {expected}"):
        TrainConfig.load(path)


# ---- the batch --------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def vl_trainer(vl_world_root, vl_pairs, tmp_path_factory):
    from core.cpo.train import build_trainer

    return build_trainer(config(vl_world_root, vl_pairs, tmp_path_factory.mktemp("vl-run")))


def batch_of(trainer, rows):
    return trainer.data_collator([trainer.train_dataset[i] for i in rows])


def row_pixels(batch) -> list[torch.Tensor]:
    """Each row image's patches, from the batch's distinct images and ``image_index``."""
    sizes = batch["distinct_grid_thw"].prod(-1).tolist()
    distinct = batch["pixel_values"].split(sizes)
    return [distinct[i] for i in batch["image_index"].tolist()]


def test_a_visual_pairs_rejected_side_gets_its_own_pixels(vl_trainer, vl_world_root):
    from core.io.images import ImageRef, load_image
    from core.models.families.qwen_vl.inputs import IMAGE_PAD

    proc = vl_trainer.data_collator.processor
    batch = batch_of(vl_trainer, [0, 1])  # a text pair, then a visual pair
    images = world_images(vl_world_root)
    expected = [images[0], images[1], images[0], images[2]]  # chosen rows' images, then rejected rows'
    pixels, grids = proc.pixels([load_image(ImageRef(p, "test")) for p in expected])
    assert torch.equal(batch["image_grid_thw"], grids)
    assert torch.equal(torch.cat(row_pixels(batch)), pixels)  # the rejected visual row: its own image's pixels
    assert batch["image_index"].tolist() == [0, 1, 0, 2]  # the text pair's image is encoded once for both rows
    assert batch["pixel_values"].shape[0] == int(grids[:3].prod(-1).sum())
    assert not torch.equal(grids[1], grids[3])  # another image size: the rejected row has its own token count
    pad = proc.token_id(IMAGE_PAD)
    counts = (batch["input_ids"] == pad).sum(1).tolist()
    assert counts == [proc.n_tokens(g) for g in grids]
    assert torch.equal(batch["mm_token_type_ids"], (batch["input_ids"] == pad).long())
    chosen, rejected = batch["completion_mask"].chunk(2)
    assert (chosen.sum(1) == rejected.sum(1)).tolist() == [False, True]  # the visual pair keeps its CoT


def test_the_runs_logps_are_the_models_own_with_images_and_3d_positions(vl_trainer):
    """Each row's summed log-probs in the padded batch (image features computed once per distinct image; the
    model computes Qwen's 3-D rotary positions from input_ids, mm_token_type_ids and image_grid_thw) equal a
    plain forward of that row alone with its own pixels."""
    from core.models.families.qwen_vl.pairs import image_inputs

    model = vl_trainer.model.eval()
    batch = {k: v.to(model.device) if torch.is_tensor(v) else v for k, v in batch_of(vl_trainer, [0, 1]).items()}
    mask = batch["completion_mask"][..., 1:].float()
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    with torch.no_grad():
        batched = (vl_trainer._sequence_logps(model, batch, labels, mask.size(1), image_inputs(model, batch))
                   * mask).sum(1)
    pixels = row_pixels(batch)
    for row in range(4):
        n = int(batch["attention_mask"][row].sum())
        ids = batch["input_ids"][row: row + 1, :n]
        with torch.no_grad():
            logits = model(input_ids=ids, pixel_values=pixels[row], image_grid_thw=batch["image_grid_thw"][row: row + 1],
                           mm_token_type_ids=batch["mm_token_type_ids"][row: row + 1, :n]).logits[0].float()
        comp = batch["completion_mask"][row, :n].bool()
        targets = torch.nonzero(comp).squeeze(-1)
        alone = torch.log_softmax(logits, -1)[targets - 1, ids[0, targets]].sum()
        tol = 1e-4 if model.dtype == torch.float32 else 0.05 * float(alone.abs()) + 0.1  # bf16 on CUDA: rounding
        assert torch.allclose(batched[row].float(), alone, atol=tol), (row, batched[row], alone)


# ---- training ---------------------------------------------------------------------------------------------

def test_a_cpo_step_changes_the_language_model_lora_and_not_the_vision_tower(vl_world_root, vl_pairs, tmp_path):
    from core.cpo.train import build_trainer

    trainer = build_trainer(config(vl_world_root, vl_pairs, tmp_path / "run"))
    named = dict(trainer.model.named_parameters())
    visual = {n: p.detach().clone() for n, p in named.items() if ".visual." in n}
    lora = {n: p.detach().clone() for n, p in named.items() if "lora_" in n}
    assert visual and lora and all(".language_model." in n for n in lora)  # no adapter in the vision tower
    assert {n for n, p in named.items() if p.requires_grad} == set(lora)
    trainer.train()
    after = dict(trainer.model.named_parameters())
    assert all(torch.equal(after[n], v) for n, v in visual.items())  # bitwise: frozen
    changed = [n for n, v in lora.items() if not torch.equal(after[n], v)]
    assert len(changed) == len(lora)  # every LoRA matrix of the language model moved
    assert trainer.state.global_step == 1


@pytest.mark.parametrize("objective", ["sft", "cpo++"])
def test_sft_and_cpo_plus_plus_run_a_step_with_per_source_metrics(vl_world_root, vl_pairs, tmp_path, objective):
    from core.cpo.train import train

    cfg = config(vl_world_root, vl_pairs, tmp_path / "run", objective=objective, source_weights={"image_swap": 3.0})
    result = train(cfg)
    rows = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    assert result.steps == 1 and len(rows) == 1 and torch.isfinite(torch.tensor(rows[0]["loss"]))
    assert rows[0]["loss/image_swap"] is not None and rows[0]["loss/shortcut"] is not None
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()


def test_source_weights_give_the_visual_pairs_their_own_weight(vl_world_root, vl_pairs, tmp_path):
    from core.cpo.train import preflight, tokenized_dataset

    cfg = config(vl_world_root, vl_pairs, tmp_path / "run", source_weights={"image_swap": 3.0})
    pre = preflight(cfg)
    ds = tokenized_dataset(cfg, None, pre)
    by_source = {pre.sources[s]: w for s, w in zip(ds["source_idx"], ds["weight"], strict=True)}
    assert by_source == {"image_swap": pytest.approx(1.5), "shortcut": pytest.approx(0.5)}  # 3:1, mean one


def test_a_vl_run_resumes_from_its_last_checkpoint(vl_world_root, vl_pairs, tmp_path):
    from core.cpo.train import train
    from core.models.series import load_series

    cfg = config(vl_world_root, vl_pairs, tmp_path / "run", max_steps=2)
    train(cfg)
    cfg.max_steps, cfg.resume = 3, True
    result = train(cfg)
    steps = [json.loads(line)["step"] for line in result.metrics_path.read_text().splitlines()]
    assert result.steps == 3 and steps == [1, 2, 3]
    vs = load_series(cfg.base_model, cfg.output_dir, device="cpu", base_names=[HUB_ID])
    assert vs.names == ["base", "checkpoint-1", "checkpoint-2", "checkpoint-3"] and vs.shared_inputs
    from core.io.images import ImageRef
    from core.models.families.qwen_vl.inputs import encode_vl
    from core.models.families.qwen_vl.forward import score_table

    pair = read_pairs(vl_pairs)[0]  # the drift views score the run's checkpoints with the study's image
    encs = encode_vl(vs.processor, [{"id": "p1", "prompt": pair["prompt"], "completion": pair["chosen"],
                                     "image_refs": [ImageRef(Path(p), "pair 1") for p in pair["images"]]}])
    df = score_table(vs, encs)
    per_checkpoint = df.groupby("checkpoint", sort=False)["logprob"].sum()
    assert list(per_checkpoint.index) == vs.names and per_checkpoint.nunique() == 4  # every step moved the model


@pytest.mark.slow
def test_a_background_run_on_a_vl_world_finishes_and_loads_as_a_vl_series(vl_world_root, vl_pairs, tmp_path):
    from core.cpo import runs
    from core.models.series import load_series
    from core.workspace.workspace import Workspace
    from core.workspace.world import load_world

    world = load_world(vl_world_root / "world")
    ws = Workspace.open(tmp_path / "ws")
    cfg = config(vl_world_root, vl_pairs, tmp_path / "unused", max_steps=2, save_steps=2,
                 init_adapter=runs.start_adapter(world, "checkpoint-4"), base_model=str(world.base_model_dir))
    run = runs.launch(ws, cfg, "vl-cpo", world=world.root)
    deadline = time.monotonic() + 240
    while (run := runs.refresh(ws, run.id)).status == "running":
        assert time.monotonic() < deadline, run.job_handle().log_tail()
        time.sleep(0.5)
    assert run.status == "done", (run.error, run.job_handle().log_tail())
    vs = load_series(world.base_model_dir, [world.checkpoints[-1].path, run.adapter_dir], device="cpu",
                        base_names=[HUB_ID])
    assert vs.names == ["base", "checkpoint-4", "vl-cpo"] and vs.shared_inputs
    assert vs.steps["vl-cpo"] == 4 + 2  # joined after the checkpoint it repairs
    assert runs.metrics(run)["step"].tolist() == [1, 2]
    ws.store.close()


def test_an_init_adapter_in_the_old_ms_swift_layout_loads_the_same_weights(vl_world_root, vl_pairs, tmp_path):
    """Adapters saved before transformers 4.52 name the language model ``model.layers``: the run maps them."""
    import shutil

    from safetensors.torch import load_file, save_file

    from core.cpo.train import build_trainer

    new = vl_world_root / "output" / "v0-20261128" / "checkpoint-4"
    old = tmp_path / "old-checkpoint"
    shutil.copytree(new, old)
    state = load_file(new / "adapter_model.safetensors")
    legacy = {k.replace("model.language_model.layers.", "model.layers."): v for k, v in state.items()}
    assert set(legacy) != set(state)
    save_file(legacy, old / "adapter_model.safetensors")
    weights = []
    for init in (new, old):
        trainer = build_trainer(config(vl_world_root, vl_pairs, tmp_path / init.name, init_adapter=str(init)))
        weights.append({n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n})
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][n], weights[1][n]) for n in weights[0])
    assert any(w.abs().sum() > 0 for n, w in weights[0].items() if "lora_B" in n)  # really loaded, not zero-init


def test_same_image_pairs_batch_as_trls_own_vision_collator_does(vl_trainer, vl_pairs):
    """On same-image pairs (all TRL 1.16 can express), our batch holds what TRL's DataCollatorForVisionPreference
    builds with transformers' processor: the same tokens per row, completion tokens, pixels, grids and
    image-token types (TRL pads prompts on the left, then flushes; rows are compared without padding)."""
    from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

    from tests.vl_pairs import image_only_processor, trl_vision_rows

    proc = vl_trainer.data_collator.processor
    rows = [0, 2]  # text pairs: both sides see the study's image
    records = [read_pairs(vl_pairs)[i] for i in rows]
    ours = batch_of(vl_trainer, rows)
    trl = DataCollatorForVisionPreference(image_only_processor(proc))(trl_vision_rows(proc, records))
    assert torch.equal(ours["image_grid_thw"], trl["image_grid_thw"])
    assert torch.equal(torch.cat(row_pixels(ours)), trl["pixel_values"])  # TRL repeats each image per side
    for r in range(4):
        keep_ours, keep_trl = ours["attention_mask"][r].bool(), trl["attention_mask"][r].bool()
        for key in ("input_ids", "completion_mask", "mm_token_type_ids"):
            assert ours[key][r][keep_ours].tolist() == trl[key][r][keep_trl].tolist(), (key, r)


def test_a_pair_with_two_images_batches_each_row_with_both(vl_world_root, tmp_path):
    """A prompt with a prior and a current study: two <image> per row, both images per side in order, the
    visual pair's rejected side with its own two; token counts follow each row's own grids."""
    from core.cpo.train import build_trainer
    from core.models.families.qwen_vl.inputs import IMAGE_PAD

    images = [str(p) for p in world_images(vl_world_root)]
    recs = [{"prompt": "Prior <image> and current <image>. Disease?", "chosen": cot("Edema"),
             "rejected": cot("Pneumonia"), "images": images[:2]},
            {"prompt": "Prior <image> and current <image>. Disease?", "chosen": cot("Edema"),
             "rejected": cot("Edema"), "images": images[:2], "rejected_images": [images[0], images[2]],
             "source": "image_swap"}]
    data = tmp_path / "two.jsonl"
    data.write_text("\n".join(map(json.dumps, recs)) + "\n")
    trainer = build_trainer(config(vl_world_root, data, tmp_path / "run", batch_size=2))
    batch = batch_of(trainer, [0, 1])
    assert batch["image_index"].tolist() == [0, 1, 0, 1, 0, 1, 0, 2]  # rows: c0, c1, r0, r1 (two images each)
    proc = trainer.data_collator.processor
    per_image = [proc.n_tokens(g) for g in batch["image_grid_thw"]]
    counts = (batch["input_ids"] == proc.token_id(IMAGE_PAD)).sum(1).tolist()
    assert counts == [per_image[0] + per_image[1], per_image[2] + per_image[3], per_image[4] + per_image[5],
                      per_image[6] + per_image[7]]
    trainer.train()
    assert trainer.state.global_step == 1


@pytest.mark.parametrize("max_pixels", [None, 28 * 28 * 4, 448 * 448])
def test_grids_from_image_sizes_equal_the_processors(vl_world_root, tmp_path, max_pixels):
    """Pre-flight computes each image's grid from its header (no decoding); the same grid as processing it."""
    from core.cpo.train import processing
    from core.io.images import ImageRef, load_image
    from core.models.families.qwen_vl.pairs import image_grid
    from workbench.demo.tinyvl import synthetic_xray

    cfg = config(vl_world_root, tmp_path / "unused.jsonl", tmp_path, max_pixels=max_pixels)
    proc = processing(cfg)  # the family's processor with the run's pixel limits
    paths = list(world_images(vl_world_root))
    for i, (h, w) in enumerate([(30, 500), (500, 31), (1000, 700), (57, 57), (2000, 1500)]):
        paths.append(tmp_path / f"{i}.png")
        synthetic_xray(h, w, i).save(paths[-1])
    reference = processing(cfg)
    proc.pixels = None  # the grid comes from the header: nothing is decoded or processed
    for path in paths:
        ref = ImageRef(path, "test")
        assert torch.equal(image_grid(proc, ref), reference.pixels([load_image(ref)])[1]), path


def test_random_negatives_on_pairs_with_images_are_text_negatives_under_the_pairs_own_image(vl_pairs):
    from core.cpo.train import random_negatives

    pairs = read_pairs(vl_pairs)
    out = random_negatives(pairs, seed=0)
    assert all(p["rejected_images"] == p["images"] == q["images"] for p, q in zip(out, pairs, strict=True))
    assert all(p["rejected"] != p["chosen"] for p in out) and not any(is_visual(p) for p in out)
