"""LLM-expert counterfactuals: a local causal LM, shown the report, the concept graph and a target disease,
writes the counterfactual (the authors' CCF recipe, with their prompt as the editable default).

    cfg = ExpertConfig(temperature=0.7, seed=0)
    with series.activate("base") as model:
        text, info = expert_rewrite(model, series.tokenizer, graph, record["completion"], "Pneumonia", "Edema", cfg)

The graph is serialised as text (``concepts.serialise``): by default only the edges into the true and the
target disease (``graph_scope="focus"``), the whole graph with ``"all"``. A prompt longer than the model's
context (``max_position_embeddings`` minus ``max_new_tokens``) first loses graph lines from the end, then
its oldest tokens; ``info`` records both, and it is stored with the counterfactual.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import networkx as nx
import torch

from core.config import ConfigBase
from core.errors import InputError
from core.graph import concepts
from core.io.trajectories import prompt_ids

DEFAULT_TEMPLATE = (
    "This is a radiology chest DR examination report of a patient: {report}. This is a diagram of the "
    "relationship between lung diseases and their radiographic manifestations: {graph}. Please generate a "
    "counterfactual radiology text showing {disease} based on the relationship and above context, with the "
    "same formatting.")
PLACEHOLDERS = ("{report}", "{graph}", "{disease}")


@dataclass
class ExpertConfig(ConfigBase):
    """How the LLM expert writes (saved inside a counterfactual batch's config and with each counterfactual)."""

    what: ClassVar[str] = "expert config"

    template: str = field(default=DEFAULT_TEMPLATE, metadata={"help": "prompt with {report}, {graph} and {disease}"})
    temperature: float = field(default=0.7, metadata={"help": "sampling temperature (> 0)"})
    top_p: float = field(default=0.95, metadata={"help": "nucleus sampling mass in (0, 1]"})
    max_new_tokens: int = field(default=96, metadata={"help": "length limit of the counterfactual"})
    seed: int = field(default=0, metadata={"help": "torch seed set before each generation"})
    graph_scope: str = field(default="focus", metadata={"help": "'focus': edges into true and target; 'all'"})

    def __post_init__(self) -> None:
        super().__post_init__()
        missing = [p for p in PLACEHOLDERS if p not in self.template]
        if missing:
            raise InputError(f"expert prompt: the template must contain {', '.join(missing)}")
        if not self.temperature > 0:
            raise InputError(f"expert: temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise InputError(f"expert: top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise InputError(f"expert: max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.graph_scope not in ("focus", "all"):
            raise InputError(f"expert: graph_scope must be 'focus' or 'all', got {self.graph_scope!r}")


def build_prompt(template: str, report: str, graph_text: str, disease: str) -> str:
    """The template filled in (plain replacement, so braces in a report are safe)."""
    return template.replace("{report}", report).replace("{graph}", graph_text).replace("{disease}", disease)


def fit_prompt(tokenizer, cfg: ExpertConfig, graph: nx.DiGraph, report: str, true: str | None, target: str,
               context: int | None) -> tuple[list[int], dict]:
    """Prompt token ids that leave room for ``max_new_tokens`` in ``context``, and what had to be cut."""
    focus = None if cfg.graph_scope == "all" else [d for d in (true, target) if d]
    lines = concepts.serialise(graph, focus).splitlines()
    budget = None if context is None else context - cfg.max_new_tokens
    if budget is not None and budget < 8:
        raise InputError(f"expert: max_new_tokens {cfg.max_new_tokens} leaves no room for a prompt in the "
                         f"model's context of {context} tokens")
    total = len(lines)

    def ids_of(keep: int) -> list[int]:  # the prompt with the graph's first ``keep`` lines
        return prompt_ids(tokenizer, build_prompt(cfg.template, report, "\n".join(lines[:keep]), target))

    ids = ids_of(total)
    if budget is not None and len(ids) > budget:  # the most lines that fit: binary search, lengths grow with lines
        lo, hi = 0, total - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if len(ids_of(mid)) <= budget else (lo, mid - 1)
        lines, ids = lines[:lo], ids_of(lo)
    cut = 0
    if budget is not None and len(ids) > budget:
        cut = len(ids) - budget
        ids = ids[:1] + ids[cut + 1:] if tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id \
            else ids[cut:]
    return ids, {"graph_lines": len(lines), "graph_lines_total": total, "prompt_tokens": len(ids),
                 "tokens_cut": cut}


@torch.no_grad()
def expert_rewrite(model, tokenizer, graph: nx.DiGraph, report: str, true: str | None, target: str,
                   cfg: ExpertConfig) -> tuple[str, dict]:
    """The model's counterfactual text (special tokens dropped) and how the prompt was fitted."""
    if graph.nodes.get(target, {}).get("kind") != "disease":
        raise InputError(f"expert: target {target!r} is not a disease of the concept graph")
    context = getattr(model.config, "max_position_embeddings", None)
    ids, info = fit_prompt(tokenizer, cfg, graph, report, true, target, context)
    device = next(model.parameters()).device
    pad = next((t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None), 0)
    torch.manual_seed(cfg.seed)
    out = model.generate(input_ids=torch.tensor([ids], device=device),  # (1, T)
                         attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=device),
                         do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p,
                         max_new_tokens=cfg.max_new_tokens, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, len(ids):], skip_special_tokens=True).strip(), info


@dataclass
class Expert:
    """A checkpoint of a loaded series acting as the expert: ``rewrite`` holds the series' lock."""
    series: object  # core.models.series.ModelSeries
    checkpoint: str
    config: ExpertConfig

    @property
    def name(self) -> str:
        return f"{self.series.base_dir.name}@{self.checkpoint}"

    def rewrite(self, graph: nx.DiGraph, report: str, true: str | None, target: str) -> tuple[str, dict]:
        """The counterfactual text and the settings to store with it (config, checkpoint, prompt fitting)."""
        with self.series.activate(self.checkpoint) as model:
            text, info = expert_rewrite(model, self.series.tokenizer, graph, report, true, target, self.config)
        return text, {**self.config.to_dict(), **info, "checkpoint": self.checkpoint}
