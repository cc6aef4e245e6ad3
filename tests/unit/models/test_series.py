"""Loading a checkpoint series: adapter switching equals each checkpoint loaded on its own, and clear errors."""

import json
import shutil

import pytest
import torch

from core.errors import InputError
from core.models.series import BASE, load_series


def _logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


IDS = [1, 20, 21, 22, 23, 24, 25]


def test_names_steps_and_one_base_in_memory(series):
    assert series.names == [BASE, "checkpoint-2", "checkpoint-4"]
    assert series.steps == {BASE: 0, "checkpoint-2": 2, "checkpoint-4": 4}
    assert set(series.model.peft_config) == {"checkpoint-2", "checkpoint-4"}


def test_switching_adapters_equals_loading_each_checkpoint_merged_on_its_own(series, quick_world, adapters):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    for name in ("checkpoint-2", "checkpoint-4", "checkpoint-2"):  # switch back and forth
        with series.activate(name) as m:
            ours = _logits(m, IDS)
        alone = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(quick_world / "model"),
                                          adapters / name).merge_and_unload()
        assert torch.allclose(ours, _logits(alone, IDS), atol=1e-5), name
    with series.activate(BASE) as m:
        base = _logits(m, IDS)
    assert torch.allclose(base, _logits(AutoModelForCausalLM.from_pretrained(quick_world / "model"), IDS), atol=1e-6)
    assert not torch.allclose(base, ours, atol=1e-4)


def test_lean_lora_forward_is_bit_identical_to_peft(series):
    from peft.tuners.lora.layer import Linear as LoraLinear

    from core.models.lean_lora import LeanLoraLinear

    with series.activate(BASE):
        pass  # routing finds the tuner layers and makes them lean
    layers = [m for m in series.model.modules() if isinstance(m, LoraLinear)]
    assert layers and all(type(m) is LeanLoraLinear for m in layers)
    lean = {}
    for name in series.names:
        with series.activate(name) as m:
            lean[name] = _logits(m, IDS)
    for m in layers:
        m.__class__ = LoraLinear  # back to PEFT's own forward
    try:
        for name in series.names:
            with series.activate(name) as m:
                assert torch.equal(lean[name], _logits(m, IDS)), name
    finally:
        for m in layers:
            m.__class__ = LeanLoraLinear
    assert not torch.equal(lean[BASE], lean[series.names[-1]])


@pytest.mark.parametrize("lora_bias", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lean_layer_matches_peft_with_bias_and_float32_adapters_on_a_bf16_base(lora_bias, dtype):
    """B's bias (lora_bias=True) is added, and adapters PEFT keeps in float32 on a bf16 base (its default
    autocast_adapter_dtype) take the cast input, as in PEFT: the same bits either way."""
    import copy
    import pickle

    from peft import LoraConfig, get_peft_model

    from core.models.lean_lora import LeanLoraLinear, lean_lora_forward

    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(16, 12)).to(dtype)
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["0"], lora_bias=lora_bias, init_lora_weights=False))
    layer = model.base_model.model[0]
    for p in layer.lora_A.parameters():
        p.data = p.data.float()
    for p in layer.lora_B.parameters():
        p.data = p.data.float()
        if lora_bias and p.ndim == 1:
            p.data += 0.5
    model.eval()
    x = torch.randn(3, 16).to(dtype)
    with torch.no_grad():
        expected = layer(x)
        assert lean_lora_forward(layer) and type(layer) is LeanLoraLinear
        got = layer(x)
        assert torch.equal(got, expected) and got.dtype == expected.dtype
        assert torch.equal(copy.deepcopy(layer)(x), expected)
        assert torch.equal(pickle.loads(pickle.dumps(layer))(x), expected)


def test_full_model_checkpoints_are_loaded_one_at_a_time(quick_world, adapters, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(quick_world / "model"),
                                       adapters / "checkpoint-4").merge_and_unload()
    merged.save_pretrained(tmp_path / "run" / "checkpoint-4")
    s = load_series(quick_world / "model", tmp_path / "run")
    assert s.checkpoints[0].kind == "full"
    with s.activate("checkpoint-4") as m:
        assert torch.allclose(_logits(m, IDS), _logits(merged, IDS), atol=1e-5)


def test_explicit_list_keeps_the_given_order(quick_world, adapters):
    s = load_series(quick_world / "model", [adapters / "checkpoint-4", adapters / "checkpoint-2"],
                    base_names=["cxr-demo-tiny-llama"])
    assert s.names == [BASE, "checkpoint-4", "checkpoint-2"]


def test_missing_base_and_not_a_model(tmp_path, quick_world):
    with pytest.raises(InputError, match="base model folder not found"):
        load_series(tmp_path / "nope")
    with pytest.raises(InputError, match="not a model folder"):
        load_series(tmp_path)


def _copy_ckpt(quick_world, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(quick_world / "rft" / "checkpoint-2", run / "checkpoint-2")
    return run, run / "checkpoint-2"


def test_adapter_naming_its_base_otherwise_is_a_warning_not_a_refusal(quick_world, tmp_path):
    run, ck = _copy_ckpt(quick_world, tmp_path)
    cfg = json.loads((ck / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "Qwen/Qwen2.5-7B"
    (ck / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.warns(UserWarning, match="adapter_config.json: base_model_name_or_path 'Qwen/Qwen2.5-7B'"):
        s = load_series(quick_world / "model", run, base_names=["cxr-demo-tiny-llama"])
    assert s.names == [BASE, "checkpoint-2"] and "Qwen/Qwen2.5-7B" in s.warnings[0]
    cfg["base_model_name_or_path"] = "/cluster/people/x/models/Qwen2.5-7B/"  # a path whose last part is the name
    (ck / "adapter_config.json").write_text(json.dumps(cfg))
    assert not load_series(quick_world / "model", run, base_names=["Qwen2.5-7B"]).warnings


def test_adapter_with_wrong_shapes_is_named(quick_world, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    other = LlamaForCausalLM(LlamaConfig(vocab_size=457, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
                                         num_attention_heads=4, num_key_value_heads=2))
    peft = get_peft_model(other, LoraConfig(r=4, target_modules="all-linear"))
    peft.peft_config["default"].base_model_name_or_path = "model"
    peft.save_pretrained(tmp_path / "run" / "checkpoint-1", save_embedding_layers=False)
    with pytest.raises(InputError, match="checkpoint-1: adapter does not fit the base model"):
        load_series(quick_world / "model", tmp_path / "run")


def test_tokenizer_mismatch_is_named(quick_world, tmp_path):
    from workbench.demo import tinymodel

    run, ck = _copy_ckpt(quick_world, tmp_path)
    tinymodel.train_tokenizer(["completely different words here"] * 10, vocab_size=64).save_pretrained(ck)
    with pytest.raises(InputError, match="checkpoint-2: tokenizer differs from the base model's"):
        load_series(quick_world / "model", run, base_names=["cxr-demo-tiny-llama"])


def test_unreadable_weights_are_named(quick_world, tmp_path):
    run, ck = _copy_ckpt(quick_world, tmp_path)
    (ck / "adapter_model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(InputError, match="checkpoint-2"):
        load_series(quick_world / "model", run, base_names=["cxr-demo-tiny-llama"])
