"""The answer format: the one place that knows how a completion states its final answer.

A completion is ``<think> CoT </think> ANSWER``. By default ANSWER is the authors' sentence "The disease of
this patient is X." or a bare answer ("X", "X.") after ``</think>``; a world can name another pattern
(``world.json``: ``"answer_format": {"pattern": "...(?P<answer>...)...", "template": " ... "}``)::

    fmt = AnswerFormat()                      # the defaults
    fmt.parse("<think> ... </think> The disease of this patient is Edema.")   # "Edema"
    fmt.parse("<think> ... </think> Edema")                                   # "Edema" (bare)
    fmt.parse("<think> ... </think> Edema. It is mild.")                     # None: malformed (a label and more)
    fmt.find("... </think> maybe Edema or Pneumonia", ["Edema", "Pneumonia"])  # "Pneumonia" (the last named)
    fmt.render("Edema")                       # "The disease of this patient is Edema."

Every reader of answers (counterfactuals, formats, the probe's template, perturbation, the sample world's
reward and evaluation) goes through here, so a world with another answer sentence changes one setting.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from core.errors import InputError

THINK_END = "</think>"
MAX_BARE_WORDS = 8  # a bare answer is a label, not a sentence: longer tails are not read as one
# "Edema. It is mild": a sentence after the answer; not the dot of an initial or a usual abbreviation inside a label
# ("P. jirovecii pneumonia", "E. coli sepsis", "St. Louis encephalitis")
MORE_SENTENCES = re.compile(r"(?<!\b[A-Za-z])(?<!\bSt)(?<!\bDr)(?<!\bMt)(?<!\bvs)(?<!\bspp)[.!?]\s+\S")


@dataclass(frozen=True)
class AnswerFormat:
    pattern: str = r"The disease of this patient is (?P<answer>.+?)\.?\s*$"  # searched in the text after </think>
    sentence: str = "The disease of this patient is {}."  # how an answer is written (counterfactuals, exports)
    template: str = " </think> The disease of this patient is"  # what the probe appends before a label
    bare: bool = True  # also read a bare answer after </think> when the pattern does not match

    def __post_init__(self):
        try:
            compiled = re.compile(self.pattern)
        except re.error as e:
            raise InputError(f"answer_format.pattern: not a regular expression ({e})") from None
        if "answer" not in compiled.groupindex and compiled.groups < 1:
            raise InputError("answer_format.pattern: expected a group (?P<answer>...) that captures the answer")
        if "{}" not in self.sentence:
            raise InputError("answer_format.sentence: expected '{}' where the answer goes")
        if not self.template.strip():
            raise InputError("answer_format.template: expected the text that introduces the answer")

    @classmethod
    def from_dict(cls, data: dict | None, where: str = "answer_format") -> AnswerFormat:
        if not data:
            return cls()
        if not isinstance(data, dict):
            raise InputError(f"{where}: expected an object with pattern / sentence / template / bare")
        unknown = sorted(set(data) - set(asdict(cls())))
        if unknown:
            raise InputError(f"{where}: unknown field(s) {unknown}; expected pattern, sentence, template, bare")
        for key, value in data.items():  # a number for a pattern was a raw TypeError from re.compile
            if not isinstance(value, bool if key == "bare" else str):
                raise InputError(f"{where}.{key}: expected {'true or false' if key == 'bare' else 'text'}, "
                                 f"got {value!r}")
        try:
            return cls(**data)
        except InputError as e:  # "answer_format.pattern: ..." said where it is: "<world>/world.json: answer_format.pattern"
            raise InputError(str(e).replace("answer_format", where, 1)) from None

    def parse(self, text: str) -> str | None:
        """The answer a completion gives (the pattern's group, else a bare one after ``</think>``), or None."""
        tail = text.split(THINK_END)[-1].strip()
        m = re.search(self.pattern, tail)
        if m:
            answer = (m.group("answer") if "answer" in m.re.groupindex else m.group(1)).strip()
            # "The disease of this patient is Edema. It is mild.": the pattern's lazy group runs to the end of the
            # text; an answer that holds a sentence end followed by more is not a label: malformed, not wrong
            return None if MORE_SENTENCES.search(answer) else answer
        if not self.bare or THINK_END not in text or not tail or "\n" in tail:
            return None
        bare = tail.rstrip(".").strip()
        intro = self.template.replace(THINK_END, "").strip().lower()
        if not bare or len(bare.split()) > MAX_BARE_WORDS or (intro and bare.lower().startswith(intro[:12])) \
                or MORE_SENTENCES.search(bare):
            return None  # a sentence, the answer sentence cut short, or a label and more: malformed, not an answer
        return bare

    def find(self, text: str, labels: list[str]) -> str | None:
        """The label named last after ``</think>`` (anywhere, without one); None if no label is named."""
        tail = text.split(THINK_END)[-1]
        hits = [(m.start(), len(y), y) for y in labels for m in re.finditer(rf"(?<![\w]){re.escape(y)}(?![\w])", tail)]
        return max(hits)[2] if hits else None

    def render(self, answer: str) -> str:
        return self.sentence.format(answer)


DEFAULT = AnswerFormat()


def answer_of(text: str, fmt: AnswerFormat = DEFAULT) -> str | None:
    """The answer ``text`` gives under ``fmt`` (default: the authors' sentence or a bare answer)."""
    return fmt.parse(text)


def find_answer(text: str, labels: list[str], fmt: AnswerFormat = DEFAULT) -> str | None:
    return fmt.find(text, labels)
