"""User-stored text (annotator names, guidelines, item fields, job titles, run errors) made safe for markdown.

    st.caption(f"Annotating as **{inert(name)}**")
    st.markdown(inert(guidelines))          # headings, lists and emphasis still render

Streamlit already escapes HTML; markdown itself still turns ``![](http://host/x.png)`` into an image that
every viewer's browser fetches, and ``[x](url)`` / ``<http://...>`` / bare URLs into links. ``inert`` escapes
the brackets and angle brackets those need and breaks bare URLs, so the text shows as typed and loads nothing.
"""

from __future__ import annotations

import re

_SYNTAX = re.compile(r"([\[\]<>])")
_BARE_URL = re.compile(r"\b(https?|ftp|mailto|file|data)(:)", re.IGNORECASE)
_WWW = re.compile(r"\b(www)(\.)", re.IGNORECASE)


def inert(text: object) -> str:
    """``text`` with markdown images and links escaped: it renders literally and fetches nothing."""
    s = "" if text is None else str(text)
    s = _SYNTAX.sub(r"\\\1", s)
    s = _BARE_URL.sub(r"\1\\\2", s)
    return _WWW.sub(r"\1\\\2", s)
