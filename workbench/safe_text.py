"""User-stored text (annotator names, guidelines, item fields, job titles, run errors) made safe for markdown.

    st.caption(f"Annotating as **{inert(name)}**")
    st.markdown(inert(guidelines))          # headings, lists and emphasis still render

Streamlit already escapes HTML; markdown itself still turns ``![](http://host/x.png)`` into an image that
every viewer's browser fetches, and ``[x](url)`` / ``<http://...>`` / bare URLs into links. ``inert`` escapes
the brackets and angle brackets those need and breaks bare URLs, so the text shows as typed and loads nothing.

Bare URLs, ``www.`` names and e-mail addresses are linked by the browser's renderer (GFM autolink literals,
found in the text after markdown escapes are resolved: a backslash does not stop them), so a WORD JOINER
(U+2060, invisible) goes after the scheme, ``www`` and ``@``: the text reads the same and matches no link.
"""

from __future__ import annotations

import re

_SYNTAX = re.compile(r"([\[\]<>])")
_BARE_URL = re.compile(r"\b(https?|ftp|file)(:)(?=//)", re.IGNORECASE)  # a path ending in "data:" stays
_WWW = re.compile(r"\b(www)(\.)", re.IGNORECASE)
_AT = re.compile(r"@")
JOINER = "\u2060"  # WORD JOINER: invisible, and no autolink pattern matches across it


def inert(text: object) -> str:
    """``text`` with markdown images and links escaped: it renders literally and fetches nothing."""
    s = "" if text is None else str(text)
    s = _SYNTAX.sub(r"\\\1", s)
    s = _BARE_URL.sub(rf"\1{JOINER}\2", s)
    s = _AT.sub(f"@{JOINER}", s)
    return _WWW.sub(rf"\1{JOINER}\2", s)
