"""Settings forms generated from a config's fields (``core.config.ConfigBase.form_fields``): a field added to a
config appears on its page as it appears on the command line, with its label, help, bounds and choices.

    values = forms.settings(AnalysisConfig, ["device", "dtype", "positions"], "ck")   # widgets ck_device, ...
    values |= forms.settings(AnalysisConfig, forms.others(AnalysisConfig, shown, skip), "ck")
    cfg = AnalysisConfig(base=..., data=..., **values)

Widgets by kind: a toggle for a bool, a select box for choices (None reads as the field's ``none`` word), a
number box with the field's bounds (empty = None where None is allowed), a text box for text; a list is typed
``;``-separated, an object as JSON. Widget keys come from ``state.setting(form, field)``.
"""

from __future__ import annotations

import json

import streamlit as st

from core.config import FormField
from workbench import state


def others(config_cls, shown: list[str] | tuple[str, ...], skip: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The fields of ``config_cls`` not ``shown`` elsewhere on the page nor skipped, in their declared order:
    where new fields appear without a page change."""
    return [f.name for f in config_cls.form_fields() if f.name not in shown and f.name not in skip]


def settings(config_cls, names: list[str], form: str, defaults: dict | None = None, columns: int = 3,
             helps: dict[str, str] | None = None) -> dict:
    """Render the fields ``names`` of ``config_cls`` as widgets, ``columns`` to a row; returns field -> value.
    ``defaults`` replace the fields' own defaults (e.g. a world's learning rate); ``helps`` add to a field's help.
    A value that cannot be read (a list or object typed wrongly) raises ValueError naming the field's label."""
    values = {}
    fields = config_cls.form_fields(names)
    for start in range(0, len(fields), columns):
        for column, f in zip(st.columns(columns), fields[start:start + columns], strict=False):
            default = (defaults or {}).get(f.name, f.default)
            help_ = f.help + (f" ({helps[f.name]})" if helps and f.name in helps else "")
            values[f.name] = widget(column, f, state.setting(form, f.name), default, help_)
    return values


def field(where, config_cls, name: str, form: str, default=None):
    """One field of ``config_cls`` as a widget in ``where`` (a column): a form's field placed by the page."""
    (f,) = config_cls.form_fields([name])
    return widget(where, f, state.setting(form, name), f.default if default is None else default, f.help)


def widget(where, f: FormField, key: str, default, help_: str):
    """One field's widget in ``where`` (a column or the page); returns its value as the config takes it."""
    if f.kind == "bool" and not f.optional:
        return where.toggle(f.label, value=bool(default), key=key, help=help_)
    if f.kind == "bool" or f.kind == "choice":
        options = list(f.choices) if f.kind == "choice" else [None, True, False]
        words = {None: f.none or "default", True: "on", False: "off", **(f.descriptions or {})}
        index = options.index(default) if default in options else 0
        return where.selectbox(f.label, options, index=index, key=key, help=help_,
                               format_func=lambda v: words.get(v, str(v)))
    if f.kind in ("int", "float"):
        return _number(where, f, key, default, help_)
    if f.kind == "list":
        text = where.text_input(f"{f.label} (;-separated)", value="; ".join(_listed(default)), key=key, help=help_)
        return [part.strip() for part in text.split(";") if part.strip()] or (None if f.optional else [])
    if f.kind == "dict":
        text = where.text_input(f"{f.label} (JSON)", value=json.dumps(default or {}), key=key, help=help_)
        try:
            value = json.loads(text or "{}")
        except (ValueError, RecursionError):
            value = None
        if not isinstance(value, dict):
            raise ValueError(f"{f.label}: expected a JSON object, e.g. {{\"name\": 1.0}}")
        return value
    text = where.text_input(f.label, value=default or "", key=key, help=help_)
    return text if text or not f.optional else None


def _number(where, f: FormField, key: str, default, help_: str):
    """A number box with the field's bounds: ints step by one; a small float (a learning rate) in e-notation."""
    integer = f.kind == "int"
    cast = int if integer else float
    low = f.bounds.get("min", f.bounds["gt"] + 1 if integer and "gt" in f.bounds else None)
    high = f.bounds.get("max")
    fmt = "%.1e" if not integer and default and abs(default) < 1e-3 else None
    return where.number_input(f.label, min_value=None if low is None else cast(low),
                              max_value=None if high is None else cast(high),
                              value=None if default is None else cast(default), step=1 if integer else None,
                              format=fmt, key=key, help=help_, placeholder=f.none or "default")


def _listed(value) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]
