"""Score one new checkpoint of a running job: its rows of the engine's scoring and probe tables, and a few answers.

A step is scored under the series (base, previous step, new step): ``kl_base`` / ``kl_prev`` of the new step are
measured exactly as a post-hoc analysis of the whole series measures them (its parent is the previous step), and
the probe runs under the new step only (a belief does not depend on other checkpoints). The base's own rows are
scored once, with the first step. The loaded base model is kept between steps and adapters are attached and
dropped (``advance``), so a 7B base is read from disk once per watch, not once per step.

    scorer = StepScorer(ProbeSet.of(analysis_config, records), device="cuda:1")
    result = scorer.score(prev_info, new_info)      # StepResult: tokens, beliefs, answers
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

from core.drift.analysis import AnalysisConfig, encode_records, resolve_labels
from core.drift.probe import ProbeConfig, probe
from core.drift.scoring import ScoreConfig, score_batches
from core.errors import InputError
from core.models.checkpoints import CheckpointInfo
from core.models.series import BASE, ModelSeries, adapter_name, load_series, load_tokenizer
from core.progress import Progress


@dataclass
class ProbeSet:
    """The fixed studies every step is scored on, encoded once, with the probe's labels and the concept graph."""

    config: AnalysisConfig
    records: list[dict]
    encoded: list
    labels: list[str]
    graph: object = None

    @classmethod
    def of(cls, cfg: AnalysisConfig, records: list[dict]) -> ProbeSet:
        labels, graph = resolve_labels(cfg, records)
        return cls(cfg, records, encode_records(cfg, records), labels, graph)


@dataclass
class StepResult:
    checkpoint: str
    step: int
    tokens: pd.DataFrame  # score's rows of this checkpoint (and of the base, with the first step)
    beliefs: pd.DataFrame  # probe's rows, likewise
    answers: list[dict] = field(default_factory=list)  # greedy decoding: {"traj_id", "answer", "gold"}


class _Only:
    """A view of a series that lists some of its checkpoints only (the probe runs under those)."""

    def __init__(self, series: ModelSeries, names: list[str]):
        self._series, self.names = series, names

    def __getattr__(self, name):
        return getattr(self._series, name)


class StepScorer:
    """Scores checkpoints one at a time against the base and the previous one, keeping the base model loaded."""

    def __init__(self, probe_set: ProbeSet, answer_format=None, decode: int = 0):
        self.set, self.format, self.decode = probe_set, answer_format, decode
        self.series: ModelSeries | None = None

    def score(self, prev: CheckpointInfo | None, new: CheckpointInfo, with_base: bool,
              progress: Progress | None = None, should_cancel: Callable[[], bool] | None = None) -> StepResult:
        cfg = self.set.config
        infos = [c for c in (prev, new) if c is not None]
        self.series = advance(self.series, cfg, infos)
        name = adapter_name(new)
        keep = [BASE, name] if with_base else [name]
        scfg = ScoreConfig(cfg.top_k, cfg.batch_size or _auto_batch(self.series, self.set.encoded, cfg.top_k))
        frames = [f[f["checkpoint"].isin(keep)] for _, f in
                  score_batches(self.series, self.set.encoded, scfg, _share(progress, 0.0, 0.5), should_cancel)]
        tokens = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        if self.set.labels:
            pcfg = ProbeConfig(labels=self.set.labels, template=cfg.template, positions=cfg.positions,
                               include_prompt=cfg.include_prompt)
            beliefs = probe(_Only(self.series, keep), self.set.encoded, pcfg, _share(progress, 0.5, 0.9), should_cancel)
        else:
            from core.drift.probe import empty_beliefs

            beliefs = empty_beliefs()
        return StepResult(name, new.step, tokens, beliefs, self._answers(name))

    def _answers(self, name: str) -> list[dict]:
        """Greedy answers of the first ``decode`` studies under checkpoint ``name`` (None: malformed), decoded by the
        series' model family (``core.models.families``: text, or a vision-language model with each study's images)."""
        if not self.decode:
            return []
        from core.io.answers import DEFAULT

        fmt = self.format or DEFAULT
        recs = self.set.records[: self.decode]
        tok = self.series.tokenizer
        longest = max(len(tok(r["completion"], add_special_tokens=False)["input_ids"]) for r in recs)
        with self.series.activate(name) as model:
            texts = self.series.family.greedy(model, self.series.processor, recs, int(longest * 1.25) + 8,
                                              chat_template=self.set.config.chat_template)
        return [{"traj_id": r["id"], "answer": fmt.parse(t), "gold": r.get("label")} for r, t in zip(recs, texts, strict=True)]


def _share(progress: Progress | None, lo: float, hi: float) -> Progress | None:
    return (lambda d, t, m: progress(lo + (hi - lo) * d / max(t, 1e-12), 1.0, m)) if progress else None


def _auto_batch(series: ModelSeries, encoded: list, top_k: int) -> int:
    from core.models.fit import plan_for_series

    return plan_for_series(series, encoded, top_k).batch_size if encoded else 1


def advance(series: ModelSeries | None, cfg: AnalysisConfig, infos: list[CheckpointInfo]) -> ModelSeries:
    """A series of the base and ``infos`` (in order). When the loaded series and ``infos`` are all LoRA adapters on a
    text model, the base model stays loaded: new adapters are attached, those no longer needed deleted; otherwise
    the series is loaded afresh (full checkpoints load one at a time when activated anyway)."""
    reusable = (series is not None and not series.family.reads_images and hasattr(series.model, "peft_config")
                and all(c.kind == "adapter" for c in [*series.checkpoints, *infos]))
    if not reusable:
        return load_series(cfg.base, [str(c.path) for c in infos], device=cfg.device, dtype=cfg.dtype,
                           trust_remote_code=cfg.trust_remote_code, base_names=cfg.base_names, vision=cfg.vision)
    from core.models.adapter_checks import check_adapter_keys, refuse_pickle_adapter

    model = series.model
    have = {adapter_name(c) for c in series.checkpoints}
    vocab = None
    for info in infos:
        name = adapter_name(info)
        if name in have:
            continue
        if any((info.path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
            vocab = vocab or series.tokenizer.get_vocab()
            if load_tokenizer(info.path, cfg.trust_remote_code).get_vocab() != vocab:
                raise InputError(f"{info.path}: tokenizer differs from the base model's; expected the same tokenizer "
                                 "across the series")
        refuse_pickle_adapter(info.path)
        try:
            model.load_adapter(info.path, adapter_name=name, is_trainable=False)
        except Exception as e:  # noqa: BLE001 - any failure to read an adapter is reported with its path
            raise InputError(f"{info.path}: adapter does not fit the base model ({str(e).splitlines()[0]})") from None
        check_adapter_keys(model, name, info.path)
    wanted = {adapter_name(c) for c in infos}
    for name in have - wanted:
        model.delete_adapter(name)
    return ModelSeries(series.base_dir, list(infos), model, series.tokenizer, series.device, series.dtype,
                       series.trust_remote_code, warnings=series.warnings, family=series.family,
                       processor=series.processor)

