"""The word diff of an original text and its counterfactual as escaped HTML: the one renderer of it.

    left, right = diff_html(original, counterfactual)   # changed spans in <mark class="del"> / <mark class="ins">
    left, right = diff_html(a, b, removed=("<del>", "</del>"), added=("<ins>", "</ins>"))   # other markup

The spans come from ``core.counterfactuals.rewrite.changed_spans`` (a word-level diff); every piece of text is escaped,
so the result is safe for ``unsafe_allow_html``. Callers lay the two sides out (the curation page's focus
view, the counterfactuals page's table in ``graphview.side_by_side_html``).
"""

from __future__ import annotations

import html

from core.counterfactuals.rewrite import changed_spans

REMOVED = ('<mark class="del">', "</mark>")
ADDED = ('<mark class="ins">', "</mark>")


def diff_html(original: str, counterfactual: str, removed: tuple[str, str] = REMOVED,
              added: tuple[str, str] = ADDED) -> tuple[str, str]:
    """Both texts as escaped HTML, each changed span wrapped in ``removed`` (original) or ``added``
    (counterfactual), given as (opening, closing) markup."""
    left, right = changed_spans(original, counterfactual)
    return _marked(left, *removed), _marked(right, *added)


def _marked(runs: list[tuple[str, bool]], opening: str, closing: str) -> str:
    return "".join(f"{opening}{html.escape(text)}{closing}" if changed else html.escape(text) for text, changed in runs)
