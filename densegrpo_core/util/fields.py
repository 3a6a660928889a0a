"""Type and range checks of a settings dataclass: its field annotations say the type, one table the range.

`check_fields(obj, rules)` walks the fields of a dataclass instance in declaration order. Each value must be
one of the types its annotation names (int, float, bool, str, None, list[float], tuple[...], dict, and unions
of these), then pass the field's `Rule`: a range ("> 0", ">= 1", "in (0, 1]", applied to a number or to every
number of a list), a set of choices for a string, or "non-empty". The first bad field raises `ConfigError`,
one line naming the field, the value given and what is expected. TOML, the command line and the ComfyUI node
all reach the same check through the dataclass's `__post_init__`.

Type rules that matter to a user: an integer field takes no float (8.5 is not a count) and no bool (true is
not 1); a number field takes an int or a float, finite; a tuple field takes a list too (TOML and JSON have no
tuples) and is stored as a tuple. Values are normalised in place: numpy scalars become int / float.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
import types
import typing
from typing import NamedTuple


class ConfigError(ValueError):
    """A setting of the wrong type or out of range. A ValueError: the command line exits with code 2."""


class Rule(NamedTuple):
    """What a field accepts beyond its annotated type."""

    range: str = ""  # "> 0", ">= 1", "<= 1", "in (0, 1]", "in [0, 1)", or "non-empty" for strings
    choices: tuple[str, ...] = ()  # the strings a str field accepts
    note: str = ""  # why, shown in parentheses after the expectation
    what: str = ""  # replaces the type description ("reward names" instead of "a list of strings")


_RANGE = re.compile(r"(>=|>|<=|<) (-?[\d.e+-]+)")
_INTERVAL = re.compile(r"in ([\[(])(-?[\d.e+-]+), (-?[\d.e+-]+)([\])])")


def in_range(value: float, rule: str) -> bool:
    """Whether a number satisfies a range rule ("> 0", ">= 1", "in (0, 1]", …); NaN satisfies none."""
    if m := _RANGE.fullmatch(rule):
        op, bound = m.group(1), float(m.group(2))
        return {">=": value >= bound, ">": value > bound, "<=": value <= bound, "<": value < bound}[op]
    if m := _INTERVAL.fullmatch(rule):
        lo_open, lo, hi, hi_open = m.group(1) == "(", float(m.group(2)), float(m.group(3)), m.group(4) == ")"
        above = value > lo if lo_open else value >= lo
        below = value < hi if hi_open else value <= hi
        return above and below
    raise ValueError(f"not a range rule: {rule!r}")


# ------------------------------------------------------------------------------------------------- types
def _members(tp) -> tuple:
    """The alternatives of a union annotation (`int | None` → (int, NoneType)), else (tp,)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return typing.get_args(tp)
    return (tp,)


def _describe(tp) -> str:
    """A type as a user reads it: 'an integer', 'a list of numbers', 'two integers'."""
    if tp is type(None):
        return "unset"
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", dict: "a table"}
    names |= {list: "a list", tuple: "a list"}
    if tp in names:
        return names[tp]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    plural = {int: "integers", float: "numbers", str: "strings", bool: "booleans"}
    if origin is list or (origin is tuple and len(args) == 2 and args[1] is Ellipsis):
        return f"a list of {plural.get(args[0], 'values')}"
    if origin is tuple:
        count = {2: "two", 3: "three"}.get(len(args), str(len(args)))
        return f"{count} {plural[args[0]]}" if len(set(args)) == 1 and args[0] in plural else f"{count} values"
    if origin is dict:
        return "a table"
    return getattr(tp, "__name__", str(tp))


_NO_MATCH = object()


def _convert(value, tp):
    """`value` as type `tp` (normalised), or _NO_MATCH."""
    if tp is type(None):
        return None if value is None else _NO_MATCH
    if tp is bool:
        return value if isinstance(value, bool) else _NO_MATCH
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            return _NO_MATCH
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            return _NO_MATCH
        return value if type(value) in (int, float) else float(value)  # an int stays an int (config hashes)
    if tp is str:
        return value if isinstance(value, str) else _NO_MATCH
    if tp in (list, tuple):
        return value if isinstance(value, (list, tuple)) else _NO_MATCH
    if tp is dict or typing.get_origin(tp) is dict:
        return value if isinstance(value, dict) else _NO_MATCH
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return _NO_MATCH
        if origin is list or args[1:] == (Ellipsis,):
            elem = [args[0]] * len(value)
        elif len(value) != len(args):
            return _NO_MATCH
        else:
            elem = list(args)
        out = [_convert(v, t) for v, t in zip(value, elem)]
        if any(v is _NO_MATCH for v in out):
            return _NO_MATCH
        return list(out) if origin is list else tuple(out)
    raise TypeError(f"check_fields cannot check the annotation {tp!r}")


def _numbers(value) -> list:
    """The numbers a range rule applies to: the value itself, or every element of a list / tuple."""
    items = value if isinstance(value, (list, tuple)) else [value]
    return [v for v in items if isinstance(v, numbers.Real) and not isinstance(v, bool)]


def _expected(tp, rule: Rule) -> str:
    if rule.what:
        return rule.what
    parts = []
    for member in _members(tp):
        text = _describe(member)
        if rule.range and member is not type(None) and member not in (str, bool, dict):
            text += f" {rule.range}" if typing.get_origin(member) is None else f", each {rule.range}"
        if member is str and rule.choices:
            text = f"one of {', '.join(rule.choices)}"
        elif member is str and rule.range == "non-empty":
            text = "a non-empty string"
        parts.append(text)
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " or " + parts[-1]


def _shown(value) -> str:
    """The value as the message shows it: its repr, with the type where the repr alone could mislead."""
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    if isinstance(value, (str, bool)) or value is None:
        return text
    return f"{text} ({type(value).__name__})"


def check_value(name: str, value, tp, rule: Rule = Rule()):
    """`value` checked against annotation `tp` and `rule`, normalised; ConfigError naming `name` otherwise."""
    note = f" ({rule.note})" if rule.note else ""
    for member in _members(tp):
        converted = _convert(value, member)
        if converted is not _NO_MATCH:
            break
    else:
        raise ConfigError(f"{name} must be {_expected(tp, rule)}{note}, got {_shown(value)}")
    if converted is None:
        return None
    if rule.choices and isinstance(converted, str) and converted not in rule.choices:
        raise ConfigError(f"{name} must be one of {', '.join(rule.choices)}{note}, got {converted!r}")
    if rule.range == "non-empty":
        if isinstance(converted, str) and not converted.strip():
            raise ConfigError(f"{name} must be a non-empty string{note}, got {converted!r}")
    elif rule.range:
        bad = [v for v in _numbers(converted) if not in_range(v, rule.range)]
        if bad:
            what = rule.range if not isinstance(converted, (list, tuple)) else f"{rule.range} each"
            raise ConfigError(f"{name} must be {what}{note}, got {converted!r}")
    return converted


def check_fields(obj, rules: dict[str, Rule]) -> None:
    """Check (and normalise in place) every field of the dataclass instance `obj`; `rules` by field name."""
    unknown = sorted(set(rules) - {f.name for f in dataclasses.fields(obj)})
    if unknown:
        raise ValueError(f"rules for fields {type(obj).__name__} does not have: {unknown}")
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        setattr(obj, f.name, check_value(f.name, getattr(obj, f.name), hints[f.name], rules.get(f.name, Rule())))
