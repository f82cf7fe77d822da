"""pydantic's validation errors in plain English: the message and hint of each problem, with units and ranges,
and never a secret value."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from agent.config.values import _unwrap
from drivers.settings import Loc, choices_hint, problem


# Units shown in range errors, found from the key's suffix so each field states it once, in its name.
_UNIT_BY_SUFFIX: tuple[tuple[str, str], ...] = (
    ("_khz", " kHz"),
    ("_hz", " Hz"),
    ("_dbm", " dBm"),
    ("_mb", " MB"),
    ("_s", " s"),
    ("baudrate", " baud"),
)


# Keys whose values are never shown in messages: the secrets, and the *_env keys, in case a secret was written
# where its variable's name belongs.
_SECRET_KEYS = frozenset({"key", "password", "token", "key_env", "password_env", "token_env"})


def _walk_schema(loc: Loc, root: type[BaseModel]) -> tuple[type[BaseModel] | None, FieldInfo | None]:
    """Find the model that holds the last key of ``loc`` below ``root`` and that key's FieldInfo (None where
    unknown)."""
    model: type[BaseModel] | None = root
    field: FieldInfo | None = None
    pending_list = False
    for part in loc:
        if isinstance(part, int):
            if not pending_list:
                return None, None
            pending_list = False
            continue
        if model is None or part not in model.model_fields:
            return model, None
        field = model.model_fields[part]
        inner, pending_list = _unwrap(field.annotation)
        model = inner if isinstance(inner, type) and issubclass(inner, BaseModel) else None
    return model, field


def _model_for(loc: Loc, root: type[BaseModel]) -> type[BaseModel] | None:
    """The model whose keys live at ``loc`` below ``root`` (e.g. ``("radios", 0)`` -> RadioConfig)."""
    if not loc:
        return root
    model, field = _walk_schema(loc, root)
    if field is None:
        return None
    return model


def _show(value: object) -> str:
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a section of keys"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    return str(value)


def _unit(loc: Loc) -> str:
    name = next((p for p in reversed(loc) if isinstance(p, str)), "")
    return next((unit for suffix, unit in _UNIT_BY_SUFFIX if name.endswith(suffix)), "")


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _range_text(field: FieldInfo | None, unit: str) -> str:
    """Describe the allowed range of a numeric field, e.g. 'must be between 7 and 12'."""
    low = high = None
    low_open = high_open = False
    for meta in field.metadata if field is not None else ():
        if getattr(meta, "ge", None) is not None:
            low, low_open = meta.ge, False
        if getattr(meta, "gt", None) is not None:
            low, low_open = meta.gt, True
        if getattr(meta, "le", None) is not None:
            high, high_open = meta.le, False
        if getattr(meta, "lt", None) is not None:
            high, high_open = meta.lt, True
    if low is not None and high is not None and not low_open and not high_open:
        return f"must be between {_num(low)} and {_num(high)}{unit}"
    parts = []
    if low is not None:
        parts.append(f"{'above' if low_open else 'at least'} {_num(low)}{unit}")
    if high is not None:
        parts.append(f"{'below' if high_open else 'at most'} {_num(high)}{unit}")
    return "must be " + " and ".join(parts) if parts else "is out of range"


_SIMPLE_TAGS = frozenset({"none", "bool", "int", "float", "str", "list", "dict"})


def _union_tag(part: object) -> bool:
    """Whether a pydantic loc segment names a member of a union (``literal[False]``, ``function-after[...,
    TlsConfig]``, ``TlsConfig``, ``none``) rather than a key: keys here are lowercase words, no brackets."""
    return isinstance(part, str) and ("[" in part or part in _SIMPLE_TAGS or any(c.isupper() for c in part))


def _union_errors(errors: Iterable[Mapping[str, Any]], plain: object) -> list[Mapping[str, Any]]:
    """Keep, of the errors pydantic reports for each member of a union (``tls: TlsConfig | false | null``), those
    of the member the value was meant for, with the member's name taken out of the location.

    A mapping was meant for the section (model) member: its errors are kept. Any other value that no member
    takes gets one answer naming every choice.
    """
    out: list[Mapping[str, Any]] = []
    dropped: dict[tuple[object, ...], list[Mapping[str, Any]]] = {}
    for err in errors:
        loc = tuple(err["loc"])
        value: object = plain
        for i, part in enumerate(loc):
            if isinstance(value, Mapping) and part in value:
                value = value[part]
            elif isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value):
                value = value[part]
            elif _union_tag(part):
                model_member = not part.startswith("literal[") and part not in _SIMPLE_TAGS  # type: ignore[union-attr]
                err = {**err, "loc": loc[:i] + loc[i + 1:]}
                if not (model_member and isinstance(value, Mapping)):
                    dropped.setdefault(loc[:i], []).append(err)
                    err = None  # type: ignore[assignment]
                break
            else:
                break
        if err is not None:
            out.append(err)
    kept = {tuple(e["loc"][:len(prefix)]) for e in out for prefix in dropped}
    for prefix, errs in dropped.items():
        if prefix in kept:
            continue
        # A value no member takes: one answer that names every choice, not one answer per member.
        choices = [str(e["ctx"]["expected"]).lower() for e in errs
                   if e["type"] == "literal_error" and e.get("ctx", {}).get("expected")]
        name = prefix[-1] if prefix else "value"
        union_problem = problem(f"{name} must be a section of keys" + "".join(f" or {c}" for c in choices),
                           "put the section's keys on the lines below, indented" +
                           "".join(f", or write {c}" for c in choices))
        out.append({"type": "value_error", "loc": prefix, "msg": "", "ctx": {"error": union_problem}})
    return out


def _describe(err: Mapping[str, Any], loc: Loc, model: type[BaseModel]) -> tuple[str, str | None]:
    """Turn one pydantic error into a plain-English message and hint."""
    err_type: str = err["type"]
    ctx: Mapping[str, Any] = err.get("ctx") or {}
    value = err.get("input")
    name = next((p for p in reversed(loc) if isinstance(p, str)), "")
    _, field = _walk_schema(loc, model)
    description = field.description if field is not None else None
    secret = name in _SECRET_KEYS
    got = "" if secret else f" (got {_show(value)})"
    unit = _unit(loc)

    if err_type == "missing":
        return f"required key '{name}' is missing", description
    if err_type == "extra_forbidden":
        holder = _model_for(loc[:-1], model)
        valid = [f.alias or n for n, f in holder.model_fields.items()] if holder is not None else []
        return f"unknown key '{name}'", choices_hint(name, valid, "valid keys here") if valid else None
    if err_type == "literal_error":
        expected = str(ctx.get("expected", ""))
        choices = [c.strip().strip("'") for c in expected.replace(" or ", ", ").split(",") if c.strip()]
        shown = "this value" if secret else _show(value)
        hint = choices_hint(str(value), choices, "use one of") if isinstance(value, str) else f"use one of: {expected}"
        return f"{shown} is not allowed here", hint
    if err_type in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        shown = "the value" if secret else f"{_show(value)}{unit}"
        return f"{shown} is out of range: {name} {_range_text(field, unit)}", description
    if err_type in ("int_parsing", "int_type", "int_from_float"):
        return f"{name} must be a whole number{unit and f' (in{unit})'}{got}", description
    if err_type in ("float_parsing", "float_type", "finite_number"):
        return f"{name} must be a number{unit and f' (in{unit})'}{got}", description
    if err_type in ("bool_parsing", "bool_type"):
        return f"{name} must be true or false{got}", description
    if err_type in ("string_type", "string_sub_type"):
        return f"{name} must be text{got}", "put the value in quotes"
    if err_type in ("model_type", "model_attributes_type", "dict_type"):
        if value is None:
            return f"section '{name}' is empty", f"add its keys indented below '{name}:', or remove the line"
        return f"'{name}' must be a section of keys, not {_show(value)}", "put its keys on the lines below, indented"
    if err_type == "list_type":
        return f"'{name}' must be a list, not {_show(value)}", "write each item on its own line starting with '- '"
    if err_type == "too_short":
        return f"'{name}' needs at least {ctx.get('min_length', 1)} item(s)", description
    if err_type == "string_too_short":
        return f"{name} must not be empty", description
    if err_type == "string_too_long":
        return f"{name} is too long: at most {ctx.get('max_length')} characters", description
    if err_type == "string_pattern_mismatch":
        return f"{name}{'' if secret else ' ' + _show(value)} contains characters that are not allowed", description
    # Fallback: pydantic's own message (it does not include the input value).
    return str(err.get("msg", "invalid value")), description
