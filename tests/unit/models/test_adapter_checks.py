"""Checkpoints that used to give wrong drift with exit 0, or a confusing error: each refused by name."""

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from core.errors import InputError
from core.models import checkpoints
from core.models.loading import load_tokenizer
from core.models.series import load_series

BASE_NAMES = ["cxr-demo-tiny-llama"]


def _copy(quick_world, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(quick_world / "rft" / "checkpoint-2", run / "checkpoint-2")
    return run, run / "checkpoint-2"


def test_an_adapter_missing_layers_is_an_error_naming_the_checkpoint_and_keys(quick_world, tmp_path):
    run, ck = _copy(quick_world, tmp_path)
    weights = load_file(ck / "adapter_model.safetensors")
    kept = {k: v for k, v in weights.items() if ".layers.1." not in k}
    assert len(kept) < len(weights)
    save_file(kept, ck / "adapter_model.safetensors")
    with pytest.raises(InputError, match=r"checkpoint-2: the adapter's weights do not match .* missing \(e\.g\. "
                                         r"base_model\.model\.model\.layers\.1\."):
        load_series(quick_world / "model", run, base_names=BASE_NAMES)


def test_an_adapter_with_keys_for_layers_the_model_lacks_is_an_error(quick_world, tmp_path):
    run, ck = _copy(quick_world, tmp_path)
    weights = load_file(ck / "adapter_model.safetensors")
    extra = {k.replace(".layers.0.", ".layers.57."): v.clone() for k, v in weights.items() if ".layers.0." in k}
    save_file({**weights, **extra}, ck / "adapter_model.safetensors")
    with pytest.raises(InputError, match=r"checkpoint-2: .* unexpected \(e\.g\. .*layers\.57\."):
        load_series(quick_world / "model", run, base_names=BASE_NAMES)


def test_an_adapter_config_naming_another_peft_type_is_an_error(quick_world, tmp_path):
    run, ck = _copy(quick_world, tmp_path)
    cfg = json.loads((ck / "adapter_config.json").read_text())
    (ck / "adapter_config.json").write_text(json.dumps({**cfg, "peft_type": "LOHA"}))
    with pytest.raises(InputError, match=r"checkpoint-2"):
        load_series(quick_world / "model", run, base_names=BASE_NAMES)


def test_pickled_adapter_weights_are_named_and_not_loaded(quick_world, tmp_path):
    run, ck = _copy(quick_world, tmp_path)
    torch.save(load_file(ck / "adapter_model.safetensors"), ck / "adapter_model.bin")
    (ck / "adapter_model.safetensors").unlink()
    with pytest.raises(InputError, match=r"adapter_model.bin: is a pickle and is not loaded \(safetensors only\)"):
        load_series(quick_world / "model", run, base_names=BASE_NAMES)


def test_a_full_checkpoint_with_another_vocabulary_is_refused_naming_both_sizes(quick_world, tmp_path):
    from transformers import AutoConfig, LlamaForCausalLM

    cfg = AutoConfig.from_pretrained(quick_world / "model")
    base_vocab = cfg.vocab_size
    cfg.vocab_size = base_vocab + 7
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "run" / "checkpoint-3")  # no tokenizer shipped
    with pytest.raises(InputError, match=rf"checkpoint-3/config.json: vocabulary size {base_vocab + 7} differs "
                                         rf"from the base model's {base_vocab}"):
        load_series(quick_world / "model", tmp_path / "run")


def test_an_empty_base_folder_is_not_a_model_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"empty: not a model folder \(expected config.json\)"):
        load_tokenizer(tmp_path / "empty")


def test_a_symlink_loop_in_a_run_folder_lists_each_checkpoint_once(quick_world, tmp_path):
    run, _ = _copy(quick_world, tmp_path)
    os.symlink(".", run / "latest")  # run/latest/checkpoint-2 is run/checkpoint-2
    found = checkpoints.discover(run)
    assert [c.path for c in found] == [run / "checkpoint-2"]
    series = load_series(quick_world / "model", run, base_names=BASE_NAMES)
    assert series.names[1:] == ["checkpoint-2"]


def test_an_adapter_with_nan_weights_is_refused_naming_the_checkpoint_and_tensor(quick_world, tmp_path):
    run, ck = _copy(quick_world, tmp_path)
    weights = load_file(ck / "adapter_model.safetensors")
    key = sorted(k for k in weights if "lora_B" in k)[0]
    weights[key] = torch.full_like(weights[key], float("nan"))
    save_file(weights, ck / "adapter_model.safetensors")
    with pytest.raises(InputError, match=rf"checkpoint-2/adapter_model.safetensors: tensor '{key}' holds NaN"):
        load_series(quick_world / "model", run, base_names=BASE_NAMES)


def test_a_full_checkpoint_or_base_with_nan_weights_is_refused_by_name(quick_world, tmp_path):
    from transformers import AutoModelForCausalLM

    from core.models.adapter_checks import check_finite_model

    model = AutoModelForCausalLM.from_pretrained(quick_world / "model")
    check_finite_model(model, quick_world / "model")
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, 0] = float("inf")
    with pytest.raises(InputError, match=r"checkpoint-9: weight 'model.layers.0.mlp.up_proj.weight' holds NaN or "
                                         r"infinite values"):
        check_finite_model(model, tmp_path / "checkpoint-9")


@pytest.mark.parametrize("module", ["lm_head", "model.embed_tokens"])
def test_undeclared_head_or_embedding_weights_in_an_adapter_are_refused(quick_world, tmp_path, module):
    run, ck = _copy(quick_world, tmp_path)
    weights = load_file(ck / "adapter_model.safetensors")
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(quick_world / "model")
    key = f"base_model.model.{module}.weight"
    weights[key] = base.get_submodule(module).weight.detach() + 100.0  # would move every checkpoint's logits
    save_file(weights, ck / "adapter_model.safetensors")
    with pytest.raises(InputError, match=rf"tensor '{key}' would overwrite the base model's "
                                         rf"{module.rsplit('.', 1)[-1]} for every checkpoint of the series"):
        load_series(quick_world / "model", run, base_names=BASE_NAMES)


def test_a_declared_head_stays_with_its_adapter(quick_world, tmp_path, adapters):
    """``modules_to_save: ["lm_head"]``: the adapter's own head, used under it alone; the base and the other
    checkpoints score as they do without it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(3)
    base = AutoModelForCausalLM.from_pretrained(quick_world / "model")
    peft = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", modules_to_save=["lm_head"]))
    with torch.no_grad():
        peft.base_model.model.lm_head.modules_to_save["default"].weight.add_(5.0 * torch.randn_like(base.lm_head.weight))
    peft.peft_config["default"].base_model_name_or_path = BASE_NAMES[0]
    run = tmp_path / "run"
    shutil.copytree(adapters / "checkpoint-2", run / "checkpoint-2")
    peft.save_pretrained(run / "checkpoint-6")
    (run / "checkpoint-6" / "trainer_state.json").write_text(json.dumps({"global_step": 6}))
    with_head = load_series(quick_world / "model", run, base_names=BASE_NAMES)
    without = load_series(quick_world / "model", adapters / "checkpoint-2", base_names=BASE_NAMES)
    ids = torch.tensor([[1, 5, 9, 12, 3]])

    def logits(series, name):
        with torch.no_grad(), series.activate(name) as model:
            return model(input_ids=ids).logits

    assert torch.equal(logits(with_head, "base"), logits(without, "base"))
    assert torch.allclose(logits(with_head, "checkpoint-2"), logits(without, "checkpoint-2"), atol=1e-5)
    assert (logits(with_head, "checkpoint-6") - logits(with_head, "base")).abs().max() > 1.0
