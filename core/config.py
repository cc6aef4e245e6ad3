"""One base for every job and analysis config: save and load, the rule for unknown keys, help text, command-line
flags and form descriptions, all from the dataclass fields (PEFT's ``PeftConfigMixin``, TRL's field metadata).

    @dataclass
    class RunConfig(ConfigBase):
        what: ClassVar[str] = "run config"                 # names the file's kind in error messages
        renamed: ClassVar[dict[str, str | None]] = {"lr": "learning_rate", "warmup": None}
        data: str = field(metadata={"help": "preference JSONL", "path": True})
        learning_rate: float = field(default=2e-5, metadata={"help": "AdamW step size", "gt": 0})

    cfg.save("run.json")                     # atomic; ``to_dict()`` / ``to_json()`` are what it writes
    RunConfig.load("run.json")               # any bad input: an InputError naming the file and the field
    RunConfig.from_dict(data, "run.json")
    RunConfig.add_arguments(parser)          # --data, --learning-rate, help from the metadata
    RunConfig.from_args(ns, base=cfg)        # the flags given, over ``base`` (a loaded file) or the defaults
    cfg.to_argv()                            # the fields that differ from their defaults, as flags
    RunConfig.form_fields()                  # what a page renders (the pages' settings forms)

**The rule for keys, one for every config.** A key that names no field is refused with an ``InputError`` naming
the key, the file and the known fields. A key that an earlier version wrote is declared in ``renamed`` (old
name -> its field, or None for a removed field, whose value is dropped), so old saved configs load while a typo
never passes silently. A missing key takes the field's default (fields added later have one); a value of the
wrong JSON type is refused naming the field; deep nesting or a broken file is named, never a traceback.

**Field metadata.** ``help`` (every field has one); ``choices`` (a tuple, or a dict value -> description: checked)
or ``suggestions`` (offered by the form and ``--help``, not checked); ``min``, ``max``, ``gt``, ``lt`` (bounds:
checked in ``__post_init__``, the form's limits); ``none`` (the word for None on the command line and in a form,
e.g. "auto"); ``label`` (the form's label; default: the name in words); ``flag`` (when not ``--field-name``);
``metavar`` (the flag's value in ``--help``); ``path`` (a path typed by a user: ``~`` and ``$VAR`` expanded by the configs that hold paths); ``expected`` (the
words for a valid value, when the type's own would say less); ``cli`` (False: no flag). Subclasses that define ``__post_init__`` call ``super().__post_init__()`` first (bounds and choices).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from core.atomic import atomic_write_text
from core.errors import InputError

BOUNDS = ("min", "max", "gt", "lt")


@dataclass(frozen=True)
class FieldType:
    """A field's annotation as this module reads it: the JSON kind of its values, and whether None is allowed."""
    base: type  # str | int | float | bool | list | dict | object (anything)
    optional: bool = False
    item: type = object  # list items, dict values
    text_or_list: bool = False  # ``str | list[str]``: one path or several

    def fits(self, value: Any) -> bool:
        if value is None:
            return self.optional
        if self.text_or_list and isinstance(value, str):
            return True
        if self.base is list:
            return isinstance(value, list) and all(_scalar_fits(v, self.item) for v in value)
        if self.base is dict:
            return isinstance(value, dict) and all(isinstance(k, str) and _scalar_fits(v, self.item)
                                                   for k, v in value.items())
        return _scalar_fits(value, self.base)

    def describe(self) -> str:
        what = {list: f"a list of {_NAMES.get(self.item, 'values')}", dict: "an object"}.get(self.base) \
            or _ONE.get(self.base, "a value")
        what = f"text or {what}" if self.text_or_list else what
        return f"null or {what}" if self.optional else what


_ONE = {str: "text", int: "an integer", float: "a number", bool: "true or false"}
_NAMES = {str: "text", int: "integers", float: "numbers", bool: "true / false values"}


def _scalar_fits(value: Any, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:  # finite: JSON's 1e400, NaN and Infinity read as floats no setting can mean
        return isinstance(value, int) and not isinstance(value, bool) or isinstance(value, float) and math.isfinite(value)
    return kind is object or isinstance(value, kind)


def field_type(annotation: Any) -> FieldType:
    """``int | None`` -> FieldType(int, optional=True); ``list[str]`` -> FieldType(list, item=str); ..."""
    members = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) \
        else (annotation,)
    optional = type(None) in members
    members = [m for m in members if m is not type(None)]
    kinds = [(typing.get_origin(m) or m, (typing.get_args(m) or (object,))[-1]) for m in members]
    if len(kinds) == 2 and {k for k, _ in kinds} == {str, list}:
        return FieldType(list, optional, str, text_or_list=True)
    if len(kinds) != 1:
        return FieldType(object, optional)
    base, item = kinds[0]
    if base in (list, dict):
        return FieldType(base, optional, item if item in _ONE else object)
    return FieldType(base if base in _ONE else object, optional)


@dataclass(frozen=True)
class FormField:
    """One field as a form renders it (``ConfigBase.form_fields``)."""
    name: str
    kind: str  # "bool" | "choice" | "int" | "float" | "text" | "list" | "dict"
    default: Any
    help: str
    label: str
    choices: tuple = ()  # "choice": the values offered (with None first when ``none`` is set)
    descriptions: dict | None = None  # "choice": value -> the words shown for it
    optional: bool = False
    none: str | None = None  # how None reads ("auto", "the checkpoint's")
    bounds: dict = dataclasses.field(default_factory=dict)  # min / max / gt / lt


class ConfigBase:
    """The mixin every config dataclass inherits (see the module docstring)."""

    what: ClassVar[str] = "config"
    renamed: ClassVar[dict[str, str | None]] = {}

    def __post_init__(self) -> None:
        self.check_fields()

    # ---- values ------------------------------------------------------------------------------------------
    @classmethod
    def types(cls) -> dict[str, FieldType]:
        cached = cls.__dict__.get("_types")
        if cached is None:
            hints = typing.get_type_hints(cls)
            cached = {f.name: field_type(hints[f.name]) for f in dataclasses.fields(cls)}
            cls._types = cached
        return cached

    @classmethod
    def field_help(cls, name: str) -> str:
        return _field(cls, name).metadata.get("help", "")

    @classmethod
    def path_fields(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("path"))

    def check_fields(self) -> None:
        """Bounds and choices from the metadata; a ValueError naming the field."""
        for f in dataclasses.fields(self):
            value, meta = getattr(self, f.name), f.metadata
            choices = meta.get("choices")
            if choices is not None and value is not None and value not in choices:
                raise ValueError(f"field {f.name!r}: expected one of {', '.join(map(str, choices))}, got {value!r}")
            if value is not None and any(b in meta for b in BOUNDS) and not _within(value, meta, self.types()[f.name]):
                raise ValueError(f"field {f.name!r}: expected {_bounds_text(meta, self.types()[f.name])}, "
                                 f"got {value!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1) + "\n"

    def save(self, path: str | Path) -> Path:
        """Write ``to_json()`` to ``path`` atomically (a crash leaves the old file or the new one)."""
        atomic_write_text(Path(path), self.to_json())
        return Path(path)

    # ---- loading -----------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path):
        """A config saved as JSON; anything wrong with it is an InputError naming ``path`` (and the field)."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"{path}: cannot read the {cls.what} ({getattr(e, 'strerror', None) or e})") from None
        return cls.from_dict(parse_json(text, str(path), cls.what), str(path))

    @classmethod
    def from_dict(cls, data: Any, source: str | None = None):
        """A config from parsed JSON (``source`` names where it came from in errors), by the rule for keys."""
        source = source or f"the {cls.what}"
        if not isinstance(data, dict):
            raise InputError(f"{source}: not a valid {cls.what} (expected a JSON object of its fields, "
                             f"got {type(data).__name__})")
        data = cls._checked(cls._upgrade(dict(data), source), source)
        try:
            return cls(**data)
        except TypeError as e:
            missing = [f.name for f in dataclasses.fields(cls) if _required(f) and f.name not in data]
            if not missing:
                raise InputError(f"{source}: not a valid {cls.what} ({e})") from None
            raise InputError(f"{source}: missing field {missing[0]!r} ({cls.field_help(missing[0])})") from None
        except RecursionError:
            raise InputError(f"{source}: not a valid {cls.what} (JSON nested too deeply)") from None
        except ValueError as e:  # __post_init__'s checks (an InputError is one too)
            raise InputError(f"{source}: {e}") from None

    @classmethod
    def _upgrade(cls, data: dict, source: str) -> dict:
        """Earlier names (``renamed``) to the fields they became; removed fields dropped."""
        for old, new in cls.renamed.items():
            if old not in data:
                continue
            value = data.pop(old)
            if new is None:
                continue
            if new in data:
                raise InputError(f"{source}: both {old!r} (the earlier name of {new!r}) and {new!r} are given")
            data[new] = value
        return data

    @classmethod
    def _checked(cls, data: dict, source: str) -> dict:
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = [k for k in data if k not in fields]
        if unknown:
            raise InputError(f"{source}: unknown field {unknown[0]!r} in the {cls.what} "
                             f"(known: {', '.join(sorted(fields)) or 'none, it has no fields'})")
        for name, value in data.items():
            if value is not None and value == fields[name].metadata.get("none"):
                data[name] = value = None  # "batch_size": "auto", as a hand-written config may say it
            kind = cls.types()[name]
            if not kind.fits(value):
                expected = fields[name].metadata.get("expected") or kind.describe()
                raise InputError(f"{source}: field {name!r}: expected {expected}, got {_short(value)}")
        return data

    # ---- the command line ------------------------------------------------------------------------------
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser | argparse._ArgumentGroup,
                      exclude: tuple[str, ...] = (), overrides: bool = True) -> None:
        """A flag per field (``--field-name``; bool: ``--flag/--no-flag``; lists: values, repeatable; dicts: JSON),
        help from the metadata. Unset flags leave no attribute (``from_args`` tells given from default).
        ``overrides=False`` (options, never read from a file): a bool gets the one flag that changes its default."""
        for f in dataclasses.fields(cls):
            if f.name in exclude or f.metadata.get("cli") is False:
                continue
            kind = cls.types()[f.name]
            kw = dict(dest=f.name, default=argparse.SUPPRESS, help=_flag_help(f, kind))
            if kind.base is bool:
                if overrides or _default(f) is None:
                    parser.add_argument(flag_of(f), action=argparse.BooleanOptionalAction, **kw)
                elif _default(f):
                    parser.add_argument("--no-" + flag_of(f)[2:], action="store_false", **kw)
                else:
                    parser.add_argument(flag_of(f), action="store_true", **kw)
                continue
            kw["type"] = _converter(f, kind)
            if kind.base is list:
                kw.update(nargs="+", action="extend")
            names = f.metadata.get("choices") or f.metadata.get("suggestions")
            if f.metadata.get("metavar"):
                kw["metavar"] = f.metadata["metavar"]
            elif names:
                extra = [f.metadata["none"]] if f.metadata.get("none") else []
                kw["metavar"] = "{" + ",".join(map(str, [*names, *extra])) + "}"
            parser.add_argument(flag_of(f), **kw)

    @classmethod
    def given(cls, ns: argparse.Namespace) -> dict:
        """The fields whose flags were given in ``ns`` (``add_arguments``), as field values."""
        out = {}
        for f in dataclasses.fields(cls):
            if hasattr(ns, f.name) and f.metadata.get("cli") is not False:
                value = getattr(ns, f.name)
                if cls.types()[f.name].text_or_list and isinstance(value, list) and len(value) == 1:
                    value = value[0]  # one path stays a path, as a file would say it
                out[f.name] = value
        return out

    @classmethod
    def from_args(cls, ns: argparse.Namespace, base=None, hint: str = ""):
        """The config of the flags given in ``ns`` over ``base`` (a loaded config; None: the defaults). A missing
        required flag or a bad value is an InputError naming the flag (``hint``: what else would do)."""
        given = cls.given(ns)
        try:
            if base is not None:
                return dataclasses.replace(base, **given)
            missing = [f for f in dataclasses.fields(cls) if _required(f) and f.name not in given]
            if missing:
                raise InputError(f"missing {flag_of(missing[0])} ({missing[0].metadata.get('help', '')})"
                                 + (f"; {hint}" if hint else ""))
            return cls(**given)
        except InputError:
            raise
        except ValueError as e:
            raise InputError(str(e)) from None

    def to_argv(self) -> list[str]:
        """The fields that differ from their defaults as flags: ``from_args`` on them gives this config back."""
        argv: list[str] = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("cli") is False or value == _default(f):
                continue
            flag = flag_of(f)
            if isinstance(value, bool):
                argv.append(flag if value else "--no-" + flag[2:])
            elif value is None:
                if not f.metadata.get("none"):
                    raise ValueError(f"field {f.name!r}: None has no flag (no 'none' word in its metadata)")
                argv += [flag, f.metadata["none"]]
            elif isinstance(value, list):
                argv += [flag, *map(str, value)] if value else []
            elif isinstance(value, dict):
                argv += [flag, json.dumps(value)]
            else:
                argv += [flag, str(value)]
        return argv

    # ---- forms -------------------------------------------------------------------------------------------
    @classmethod
    def form_fields(cls, names: list[str] | tuple[str, ...] | None = None) -> list[FormField]:
        """The fields (``names``, in that order; default: all) as a form shows them."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        return [_form_field(fields[n], cls.types()[n]) for n in (names or list(fields))]


# ---- helpers ---------------------------------------------------------------------------------------------

def parse_json(text: str, source: str, what: str = "config") -> Any:
    """``json.loads(text)``; broken JSON, deep nesting and numbers too long to read become an InputError."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{source}: not a valid {what} (not valid JSON at line {e.lineno}: {e.msg})") from None
    except RecursionError:
        raise InputError(f"{source}: not a valid {what} (JSON nested too deeply)") from None
    except ValueError as e:  # int('9' * 5000): past the integer string conversion limit
        raise InputError(f"{source}: not a valid {what} (a number too long to read: {str(e).split(';')[0]})") from None


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _field(cls, name: str) -> dataclasses.Field:
    found = next((f for f in dataclasses.fields(cls) if f.name == name), None)
    if found is None:
        raise KeyError(f"{cls.__name__} has no field {name!r}")
    return found


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _within(value: Any, meta: dict, kind: FieldType) -> bool:
    """Whether ``value`` is a number of the field's kind inside the metadata's bounds."""
    if not _scalar_fits(value, int if kind.base is int else float):
        return False
    return (value >= meta.get("min", value) and value <= meta.get("max", value)
            and ("gt" not in meta or value > meta["gt"]) and ("lt" not in meta or value < meta["lt"]))


def _bounds_text(meta: dict, kind: FieldType) -> str:
    """What the bounds allow, in words: "a positive integer", "null or an integer >= 784", "a number >= 0"."""
    integer = kind.base is int
    if set(meta) & set(BOUNDS) == {"min"} and integer and meta["min"] == 1:
        text = "a positive integer"
    elif set(meta) & set(BOUNDS) == {"gt"} and meta["gt"] == 0:
        text = "a positive integer" if integer else "a positive number"
    else:
        parts = [f"{sign} {meta[b]}" for b, sign in (("min", ">="), ("gt", ">"), ("max", "<="), ("lt", "<"))
                 if b in meta]
        text = ("an integer " if integer else "a number ") + " and ".join(parts)
    return f"null or {text}" if kind.optional else text


def _flag_help(f: dataclasses.Field, kind: FieldType) -> str:
    text = f.metadata.get("help", "").replace("%", "%%")  # argparse formats help with %
    default = _default(f)
    if default is None and f.metadata.get("none"):
        return f"{text} (default: {f.metadata['none']})"
    if kind.base is bool:
        return text
    if default not in (None, "", [], {}):
        return f"{text} (default: {str(default).replace('%', '%%')})"
    return text


def _converter(f: dataclasses.Field, kind: FieldType):
    """The argparse ``type`` of a field's flag: the none word to None, numbers parsed, choices checked, JSON read."""
    none, choices = f.metadata.get("none"), f.metadata.get("choices")
    item = kind.item if kind.base in (list, dict) else kind.base

    def convert(text: str):
        if none is not None and text == none:
            return None
        if kind.base is dict:
            try:
                value = json.loads(text)
            except (ValueError, RecursionError):
                value = None
            if not isinstance(value, dict):
                raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
            return value
        if choices is not None and text not in map(str, choices):
            raise argparse.ArgumentTypeError(f"expected one of {', '.join(map(str, choices))}, got {text!r}")
        try:
            return int(text) if item is int else float(text) if item is float else text
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {_ONE[item]}" + (f" or {none}" if none else "")
                                             + f", got {text!r}") from None

    convert.__name__ = f.name  # argparse names the type in its error messages
    return convert


def _form_field(f: dataclasses.Field, kind: FieldType) -> FormField:
    meta = f.metadata
    options = meta.get("choices") or meta.get("suggestions")
    if options:
        form_kind = "choice"
    elif kind.text_or_list or kind.base is list:
        form_kind = "list"
    else:
        form_kind = {bool: "bool", int: "int", float: "float", str: "text", dict: "dict"}.get(kind.base, "text")
    choices = tuple(options or ())
    if form_kind == "choice" and kind.optional:
        choices = (None, *choices)
    return FormField(f.name, form_kind, _default(f), meta.get("help", ""),
                     meta.get("label") or f.name.replace("_", " ").capitalize(), choices,
                     dict(options) if isinstance(options, dict) else None, kind.optional, meta.get("none"),
                     {b: meta[b] for b in BOUNDS if b in meta})
