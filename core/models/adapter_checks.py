"""Checks that turn silently wrong checkpoints into errors, for ``core.models.series.load_series``.

    check_adapter_file(path)                  # before loading: no pickle, finite weights, no undeclared base keys
    refuse_pickle_adapter(path)               # adapter_model.bin only: named, never unpickled
    check_adapter_keys(peft_model, name, path) # after loading: every weight in the file used, every layer filled
    check_full_vocab(path, base_config)        # a full checkpoint with another vocabulary size
    check_finite_model(model, path)            # a full checkpoint with NaN or infinite weights

PEFT loads an adapter whose weights miss layers, or whose ``adapter_config.json`` names another PEFT type than
its weights hold, with at most a UserWarning: the missing layers keep their initial (zero) update and the
drift computed from it is wrong. Comparing the file's tensor names with the adapter the model now carries
catches both: the names PEFT would have saved for this adapter (``get_peft_model_state_dict``) must be
exactly the names in the file.

Embedding and head weights (``lm_head.weight``, ``embed_tokens.weight``) are exempt from that comparison, and
PEFT copies such keys into the base model itself unless the adapter's config declares them
(``modules_to_save``, ``trainable_token_indices``): an undeclared one would overwrite the base every checkpoint
of the series shares, so ``check_adapter_file`` refuses it before anything is loaded. Declared ones stay per
adapter (PEFT's wrappers keep one copy each).
"""

from __future__ import annotations

from pathlib import Path

from core.errors import InputError

ADAPTER_WEIGHTS = "adapter_model.safetensors"
_EXTRA_MODULES = ("embed_tokens", "lm_head", "modules_to_save", "wte", "embed_out")


def refuse_pickle_adapter(path: Path) -> None:
    """An adapter that ships only pickled weights is refused by name: pickles run code when loaded."""
    if not (path / ADAPTER_WEIGHTS).is_file():
        pickled = [f.name for f in (path / "adapter_model.bin", path / "adapter_model.pt") if f.is_file()]
        if pickled:
            raise InputError(f"{path / pickled[0]}: is a pickle and is not loaded (safetensors only); convert it "
                             f"with safetensors.torch.save_file on a trusted machine, as {ADAPTER_WEIGHTS}")


_BASE_MODULES = ("embed_tokens", "lm_head", "wte", "embed_out")


def check_adapter_file(path: Path) -> None:
    """Before an adapter is loaded: no pickle (``refuse_pickle_adapter``), every tensor finite (a NaN adapter
    scores as ``kl_base 0``), and no embedding or head weight its ``adapter_config.json`` does not declare."""

    refuse_pickle_adapter(path)
    weights = path / ADAPTER_WEIGHTS
    if not weights.is_file():
        return
    declared = _declared_modules(path)
    try:
        _check_tensors(weights, declared)
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - safetensors reports a damaged file with its own error types
        raise InputError(f"{weights}: not a readable safetensors file ({str(e).splitlines()[0]})") from None


def _check_tensors(weights: Path, declared: set[str]) -> None:
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as f:
        for key in f.keys():
            parts = key.split(".")
            if any(m in parts for m in _BASE_MODULES) and not any(p.startswith("lora_") for p in parts) \
                    and not declared & set(parts):
                raise InputError(f"{weights}: tensor {key!r} would overwrite the base model's "
                                 f"{next(m for m in _BASE_MODULES if m in parts)} for every checkpoint of the series; "
                                 "it is loaded only when adapter_config.json declares the module (modules_to_save "
                                 "or trainable_token_indices)")
            tensor = f.get_tensor(key)
            if tensor.is_floating_point() and not bool(tensor.isfinite().all()):
                raise InputError(f"{weights}: tensor {key!r} holds NaN or infinite values; this checkpoint's drift "
                                 "would be meaningless (a run that diverged?), so it is not loaded")


def check_finite_model(model, path: Path) -> None:
    """A full checkpoint whose weights hold NaN or infinity is refused by name, before it scores anything."""
    for name, param in model.named_parameters():
        if param.is_floating_point() and not bool(param.isfinite().all()):
            raise InputError(f"{path}: weight {name!r} holds NaN or infinite values; this checkpoint's drift would "
                             "be meaningless (a run that diverged?), so it is not scored")


def _declared_modules(path: Path) -> set[str]:
    """The module names the adapter's config declares as its own: ``modules_to_save`` and, for trainable
    tokens, the wrapped layers (their saved keys hold ``token_adapter``)."""
    from core.io import jsonsafe

    config_file = path / "adapter_config.json"
    try:
        config = jsonsafe.loads(config_file.read_text(encoding="utf-8-sig"), str(config_file))
    except OSError:
        return set()
    if not isinstance(config, dict):
        return set()
    saved = config.get("modules_to_save") or []
    declared = {m for m in saved if isinstance(m, str)} if isinstance(saved, list) else set()
    if config.get("trainable_token_indices"):
        declared.add("token_adapter")
    return declared


def file_keys(path: Path) -> set[str] | None:
    """Tensor names in the adapter's safetensors file (header only), or None when it has none."""
    from safetensors import safe_open

    weights = path / ADAPTER_WEIGHTS
    if not weights.is_file():
        return None
    with safe_open(str(weights), "pt") as f:
        return set(f.keys())


def check_adapter_keys(model, adapter_name: str, path: Path) -> None:
    """``InputError`` naming the checkpoint and the keys when the file's tensors and the loaded adapter differ."""
    from peft import get_peft_model_state_dict

    in_file = file_keys(path)
    if in_file is None:
        return
    # save_embedding_layers=False: "auto" would look the base model up on the hub; embedding and head weights
    # an adapter may carry besides its layers (modules_to_save, resized vocabularies) are not judged here
    expected = set(get_peft_model_state_dict(model, adapter_name=adapter_name, save_embedding_layers=False).keys())
    missing = sorted(expected - in_file)
    unexpected = sorted(k for k in in_file - expected if not any(m in k for m in _EXTRA_MODULES))
    if missing or unexpected:
        peft_type = getattr(model.peft_config.get(adapter_name), "peft_type", "?")
        parts = [f"{len(missing)} missing (e.g. {', '.join(missing[:3])})" if missing else "",
                 f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})" if unexpected else ""]
        raise InputError(f"{path}: the adapter's weights do not match its adapter_config.json ({peft_type}) and the "
                         f"base model: {'; '.join(p for p in parts if p)} keys. Its drift would be wrong, so it is "
                         "not loaded (expected an adapter saved by PEFT for this base model)")


def _vocab_size(config: dict) -> int | None:
    size = config.get("vocab_size")
    if size is None and isinstance(config.get("text_config"), dict):  # vision-language models
        size = config["text_config"].get("vocab_size")
    return size if isinstance(size, int) else None


def check_full_vocab(path: Path, base_config) -> None:
    """A full checkpoint whose ``vocab_size`` differs from the base model's is refused, naming both sizes."""
    from core.io import jsonsafe

    config = jsonsafe.loads((path / "config.json").read_text(encoding="utf-8-sig"), str(path / "config.json"))
    theirs = _vocab_size(config) if isinstance(config, dict) else None
    ours = _vocab_size(base_config.to_dict()) if hasattr(base_config, "to_dict") else None
    if theirs is not None and ours is not None and theirs != ours:
        raise InputError(f"{path / 'config.json'}: vocabulary size {theirs} differs from the base model's {ours}; "
                         "its token probabilities cannot be compared with the series (expected a checkpoint "
                         "of the same model)")
