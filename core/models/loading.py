"""Load a model or a tokenizer from a local folder, the one way every family does: local files only,
``trust_remote_code`` off unless asked for, and an ``InputError`` naming the folder instead of a traceback.

    model = load_model("runs/base", "cpu", torch.float32)                      # AutoModelForCausalLM
    model = load_model(folder, auto_class=AutoModelForImageTextToText, what="vision-language model")
    tokenizer = load_tokenizer("runs/base")
"""

from __future__ import annotations

from pathlib import Path

import torch

from core.errors import InputError


def load_model(path: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32,
               trust_remote_code: bool = False, auto_class=None, what: str = "model weights"):
    """A causal LM (or ``auto_class``'s model) from a local folder, on ``device`` in eval mode (the one loader of
    models: each family's ``load_model`` calls it with its auto class); ``InputError`` names the folder when its
    weights or config cannot be read."""
    if auto_class is None:
        from transformers import AutoModelForCausalLM as auto_class

    try:
        model = auto_class.from_pretrained(path, dtype=dtype, local_files_only=True, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001 - safetensors, torch and config errors alike, named by path
        raise InputError(f"{path}: cannot load {what} ({str(e).splitlines()[0]})") from None
    return model.to(device).eval()


def load_tokenizer(path: str | Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise InputError(f"{folder}: model folder not found")
    if not any((folder / f).is_file() for f in ("config.json", "tokenizer.json", "tokenizer_config.json")):
        raise InputError(f"{folder}: not a model folder (expected config.json)")  # e.g. an empty folder
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001 - the tokenizers library raises bare Exceptions on broken files
        raise InputError(f"{path}: cannot load tokenizer ({str(e).splitlines()[0]})") from None
