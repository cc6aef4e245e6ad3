"""Foreign runs, made the way researchers make them (not with ``workbench.demo``'s builder).

``make_trl_run(root)`` writes, in a few seconds on CPU:

- ``cluster/models/tiny-llama-base``: a tiny Llama (few-KB config) with a word-level tokenizer built here and a
  chat template; it is then MOVED to ``user/base``, so the adapters name their base by a path that no longer
  exists (as a training cluster's path does on a user's laptop);
- ``user/trl-out/checkpoint-{2,4}``: LoRA adapters written by TRL's ``SFTTrainer`` (``save_steps=2``) with
  ``trainer_state.json``, trained on conversational records (``messages``);
- ``user/data/train.jsonl`` / ``heldout.jsonl``: the conversational records (system, user, assistant), the
  assistant turn ``<think> ... </think> The disease of this patient is X.``.

``make_swift_layout(run, dest)`` rearranges the same adapters as ms-swift writes them
(``output/v0-20250101-120000/checkpoint-N/`` with ``args.json``, and a ``checkpoint-4-merged`` full model).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

DISEASES = {"Pneumonia": ["consolidation", "fever"], "Edema": ["vascular congestion", "kerley lines"],
            "Pneumothorax": ["absent lung markings", "pleural line"]}
SYSTEM = "You are a radiologist."
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|> {% endif %}")


def conversation(rng: random.Random, i: int) -> dict:
    label = rng.choice(sorted(DISEASES))
    found = DISEASES[label]
    user = f"Report: the radiograph shows {found[0]} and {found[1]}. Question: what is the disease?"
    cot = f"<think> {found[0]} suggests {label}. {found[1]} suggests {label}. </think> The disease of this patient is {label}."
    return {"id": f"study-{i}", "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user},
                                            {"role": "assistant", "content": cot}]}


def concept_graph():
    """The run's concept graph: each disease of ``DISEASES`` supported by its two findings."""
    import networkx as nx

    g = nx.DiGraph()
    for disease, found in DISEASES.items():
        g.add_node(disease, kind="disease", label=disease, synonyms=[])
        for f in found:
            g.add_node(f, kind="finding", label=f, synonyms=[])
            g.add_edge(f, disease, relation="supports", weight=1.0)
    return g


def _tokenizer(texts: list[str]):
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    special = ["<unk>", "<pad>", "<s>", "</s>", "<think>", "</think>", "<|system|>", "<|user|>", "<|assistant|>",
               "<|end|>"]
    words = sorted({w for t in texts for w in t.replace(".", " . ").replace("?", " ? ").replace(":", " : ").split()})
    vocab = {w: i for i, w in enumerate(special + [w for w in words if w not in special])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Punctuation(behavior="isolated")])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>")
    fast.add_tokens([AddedToken(t, normalized=False, special=True) for t in special[2:]])  # never split
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_trl_run(root: Path, n_train: int = 24, n_heldout: int = 12, seed: int = 0) -> dict[str, Path]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl import SFTConfig, SFTTrainer

    rng = random.Random(seed)
    train = [conversation(rng, i) for i in range(n_train)]
    heldout = [conversation(rng, n_train + i) for i in range(n_heldout)]
    texts = [m["content"] for r in train + heldout for m in r["messages"]] + [" ".join(DISEASES)]
    tok = _tokenizer(texts)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                         eos_token_id=tok.eos_token_id))
    cluster_base = root / "cluster" / "models" / "tiny-llama-base"
    model.save_pretrained(cluster_base)
    tok.save_pretrained(cluster_base)
    data = root / "user" / "data"
    data.mkdir(parents=True)
    for name, recs in (("train", train), ("heldout", heldout)):
        (data / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = root / "user" / "trl-out"
    args = SFTConfig(output_dir=str(out), max_steps=4, save_steps=2, per_device_train_batch_size=4, learning_rate=5e-3,
                     logging_steps=1, report_to=[], use_cpu=True, save_only_model=True, max_length=128,
                     dataloader_num_workers=0, seed=seed, bf16=False, disable_tqdm=True)
    trainer = SFTTrainer(model=str(cluster_base), args=args, processing_class=tok,
                         train_dataset=Dataset.from_list([{"messages": r["messages"]} for r in train]),
                         peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    trainer.train()
    shutil.move(str(cluster_base), root / "user" / "base")  # the adapters keep naming the cluster path, gone now
    return trl_run_paths(root)


def trl_run_paths(root: Path) -> dict[str, Path]:
    """Where ``make_trl_run(root)`` puts the base model, the TRL output folder and the data files."""
    user = root / "user"
    return {"base": user / "base", "run": user / "trl-out", "train": user / "data" / "train.jsonl",
            "heldout": user / "data" / "heldout.jsonl"}


def make_swift_layout(run: Path, base: Path, dest: Path) -> Path:
    """The TRL adapters as ms-swift lays them out, plus ``checkpoint-4-merged`` (a full bf16 model)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    version = dest / "output" / "v0-20250101-120000"
    for ck in sorted(run.glob("checkpoint-*")):
        shutil.copytree(ck, version / ck.name)
    (version / "args.json").write_text(json.dumps({
        "model": "/cluster/models/tiny-llama-base", "rlhf_type": None, "train_type": "lora", "lora_rank": 4,
        "lora_alpha": 8, "learning_rate": 5e-3, "num_train_epochs": 1, "output_dir": str(version)}))
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), version / "checkpoint-4")
    merged = merged.merge_and_unload().to(torch.bfloat16)
    merged.save_pretrained(version / "checkpoint-4-merged", max_shard_size="20KB")  # sharded safetensors
    AutoTokenizer.from_pretrained(base).save_pretrained(version / "checkpoint-4-merged")
    return dest / "output"
