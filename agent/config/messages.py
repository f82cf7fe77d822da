"""pydantic's validation errors in plain English: the message and hint of each problem, with units and ranges,
and never a secret value."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from agent.config.values import _unwrap
from drivers.settings import N_, Loc, Text, choices_hint, problem

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
        return Text(N_("an empty value"))
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return Text(N_("a section of keys"))
    if isinstance(value, list):
        return Text(N_("a list"))
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
        return Text(N_("must be between {low} and {high}{unit}"), low=_num(low), high=_num(high), unit=unit)
    above = Text(N_("above {low}{unit}") if low_open else N_("at least {low}{unit}"), low=_num(low or 0), unit=unit)
    below = Text(N_("below {high}{unit}") if high_open else N_("at most {high}{unit}"), high=_num(high or 0),
                 unit=unit)
    if low is not None and high is not None:
        return Text(N_("must be {low} and {high}"), low=above, high=below)
    if low is not None or high is not None:
        return Text(N_("must be {limit}"), limit=above if low is not None else below)
    return Text(N_("is out of range"))


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
        union_problem = problem(N_("{name} must be a section of keys{choices}"),
                                N_("put the section's keys on the lines below, indented{writes}"), name=name,
                                choices=Text(N_(" or {choices}"), choices=" or ".join(choices)) if choices else "",
                                writes=Text(N_(", or write {choices}"), choices=", or write ".join(choices))
                                if choices else "")
        out.append({"type": "value_error", "loc": prefix, "msg": "", "ctx": {"error": union_problem}})
    return out


def _in_unit(unit: str) -> str:
    return Text(N_(" (in{unit})"), unit=unit) if unit else ""


def _describe(err: Mapping[str, Any], loc: Loc, model: type[BaseModel]) -> tuple[str, str | None]:
    """Turn one pydantic error into a plain-English message and hint (:class:`Text`, shown translated)."""
    err_type: str = err["type"]
    ctx: Mapping[str, Any] = err.get("ctx") or {}
    value = err.get("input")
    name = next((p for p in reversed(loc) if isinstance(p, str)), "")
    _, field = _walk_schema(loc, model)
    description = field.description if field is not None else None
    secret = name in _SECRET_KEYS
    got = "" if secret else Text(N_(" (got {value})"), value=_show(value))
    unit = _unit(loc)

    if err_type == "missing":
        return Text(N_("required key '{name}' is missing"), name=name), description
    if err_type == "extra_forbidden":
        holder = _model_for(loc[:-1], model)
        valid = [f.alias or n for n, f in holder.model_fields.items()] if holder is not None else []
        hint = choices_hint(name, valid, Text(N_("valid keys here"))) if valid else None
        return Text(N_("unknown key '{name}'"), name=name), hint
    if err_type == "literal_error":
        expected = str(ctx.get("expected", ""))
        choices = [c.strip().strip("'") for c in expected.replace(" or ", ", ").split(",") if c.strip()]
        shown = Text(N_("this value")) if secret else _show(value)
        hint = (choices_hint(str(value), choices, Text(N_("use one of"))) if isinstance(value, str)
                else Text(N_("use one of: {choices}"), choices=expected))
        return Text(N_("{value} is not allowed here"), value=shown), hint
    if err_type in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        shown = Text(N_("the value")) if secret else Text(N_("{value}{unit}"), value=_show(value), unit=unit)
        return Text(N_("{value} is out of range: {name} {range}"), value=shown, name=name,
                    range=_range_text(field, unit)), description
    if err_type in ("int_parsing", "int_type", "int_from_float"):
        return Text(N_("{name} must be a whole number{unit}{got}"), name=name, unit=_in_unit(unit), got=got), \
            description
    if err_type in ("float_parsing", "float_type", "finite_number"):
        return Text(N_("{name} must be a number{unit}{got}"), name=name, unit=_in_unit(unit), got=got), description
    if err_type in ("bool_parsing", "bool_type"):
        return Text(N_("{name} must be true or false{got}"), name=name, got=got), description
    if err_type in ("string_type", "string_sub_type"):
        return Text(N_("{name} must be text{got}"), name=name, got=got), Text(N_("put the value in quotes"))
    return _shape_message(err, name, secret, description)


def _shape_message(err: Mapping[str, Any], name: str, secret: bool, description: str | None
                   ) -> tuple[str, str | None]:
    """The message and hint of a value of the wrong shape or length (a section, a list, a text)."""
    err_type: str = err["type"]
    ctx: Mapping[str, Any] = err.get("ctx") or {}
    value = err.get("input")
    if err_type in ("model_type", "model_attributes_type", "dict_type"):
        if value is None:
            return (Text(N_("section '{name}' is empty"), name=name),
                    Text(N_("add its keys indented below '{name}:', or remove the line"), name=name))
        return (Text(N_("'{name}' must be a section of keys, not {value}"), name=name, value=_show(value)),
                Text(N_("put its keys on the lines below, indented")))
    if err_type == "list_type":
        return (Text(N_("'{name}' must be a list, not {value}"), name=name, value=_show(value)),
                Text(N_("write each item on its own line starting with '- '")))
    if err_type == "too_short":
        return Text(N_("'{name}' needs at least {count} item(s)"), name=name, count=ctx.get("min_length", 1)), \
            description
    if err_type == "string_too_short":
        return Text(N_("{name} must not be empty"), name=name), description
    if err_type == "string_too_long":
        return Text(N_("{name} is too long: at most {count} characters"), name=name, count=ctx.get("max_length")), \
            description
    if err_type == "string_pattern_mismatch":
        if secret:
            return Text(N_("{name} contains characters that are not allowed"), name=name), description
        return Text(N_("{name} {value} contains characters that are not allowed"), name=name, value=_show(value)), \
            description
    # Fallback: pydantic's own message (it does not include the input value).
    return str(err.get("msg", "invalid value")), description
