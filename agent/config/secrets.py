"""Secrets in config files: the three ways to give one (inline, ``*_file``, ``*_env``), and who may read them."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr

from agent.config.values import Found, _dotted, _unwrap
from drivers.settings import Loc, problem


# Names accepted in key_env / password_env / token_env. Upper case only: the convention for environment variables,
# and a guard against a secret pasted where a name belongs, which would then be echoed as "variable ... not set".
_ENV_NAME_RE = re.compile(r"^[A-Z_][A-Z0-9_]{0,127}$")
_ENV_EXAMPLES = {"key": "DENEN_KEY_TRAP_NORTH_3", "password": "DENEN_MQTT_PASSWORD", "token": "DENEN_INFLUX_TOKEN"}


@dataclass(frozen=True)
class SecretFile:
    """Marks a config field whose value names a file holding a secret (``Annotated[str | None, SECRET_FILE]``).

    The loader refuses such a file when other users can read it, and warns when its group can.
    """


#: The marker instance put in the ``Annotated`` metadata of secret-file fields.
SECRET_FILE = SecretFile()


def env_secret_name(value: str, key: str) -> str:
    """Check the value of a ``*_env`` key (``key_env``, ``password_env``, ``token_env``): the name of an
    environment variable, in upper case. Returns it; the value is never put in the message, since a secret pasted
    here by mistake must not be shown.

    Raises:
        ValueError: a config problem (from a field validator it is reported at the key's line).
    """
    if not _ENV_NAME_RE.fullmatch(value):
        secret = key.removesuffix("_env")
        example = _ENV_EXAMPLES.get(secret, f"DENEN_{secret.upper()}")
        raise problem(
            f"{key} must be the name of an environment variable: upper-case letters A-Z, digits and '_', not "
            "starting with a digit",
            f"e.g. {key}: {example}; the {secret} itself goes into that variable, not into this file",
        )
    return value


def read_env_secret(name: str) -> str:
    """Return the value of environment variable ``name``, which must be set and not blank.

    The value is a secret: it is never logged or put in a message. Only the variable's name is.

    Raises:
        ValueError: a config problem naming the variable, with a hint on how to set it.
    """
    value = os.environ.get(name)
    hint = (f"set {name} in the service's environment (systemd: EnvironmentFile=/etc/denen/secrets.env, mode "
            f"600); to check the file with denen config validate, export it in your shell too")
    if value is None:
        raise problem(f"environment variable {name} is not set", hint)
    if not value.strip():
        raise problem(f"environment variable {name} is empty", hint)
    return value


def secret_source_problems(section: object, *names: str) -> list[tuple[Loc, str, str | None]]:
    """Problems for each secret ``name`` of ``section`` given more than one way (``name``, ``name_file``,
    ``name_env``), as (key, message, hint) below the section, for :func:`config_problems`."""
    found: list[tuple[Loc, str, str | None]] = []
    for name in names:
        ways = (name, f"{name}_file", f"{name}_env")
        given = [w for w in ways if getattr(section, w, None) is not None]
        if len(given) > 1:
            found.append(((given[-1],), f"give only one of {', '.join(ways[:-1])} and {ways[-1]}, not "
                          f"{' and '.join(given)}",
                          f"keep {name}_file or {name}_env, which keep the {name} out of this file"))
    return found


def _secret_fields(data: object, model: type[BaseModel], loc: Loc = ()
                   ) -> Iterable[tuple[str, Loc, type[BaseModel], object]]:
    """Walk plain config data along its model and yield the secrets written in it: ("inline", key location, the
    section's model, value) for every ``SecretStr`` field, ("file", ...) for every :data:`SECRET_FILE` field.

    Keys the model does not know, and values of the wrong shape, are skipped: validation reports them.
    """
    if not isinstance(data, dict):
        return
    for key, value in data.items():
        field = model.model_fields.get(key)
        if field is None or value is None:
            continue
        inner, is_list = _unwrap(field.annotation)
        here = (*loc, key)
        if inner is SecretStr and value != "":
            yield "inline", here, model, value
        elif any(isinstance(m, SecretFile) for m in field.metadata) and isinstance(value, str):
            yield "file", here, model, value
        elif isinstance(inner, type) and issubclass(inner, BaseModel):
            if is_list and isinstance(value, list):
                for i, item in enumerate(value):
                    yield from _secret_fields(item, inner, (*here, i))
            elif not is_list:
                yield from _secret_fields(value, inner, here)


def _who_can_read(perms: int) -> str | None:
    """'every user' when other users may read a file of these permission bits, 'group' when its group may."""
    if perms & stat.S_IROTH:
        return "every user"
    if perms & stat.S_IRGRP:
        return "group"
    return None


def _secret_mode_problems(plain: dict[str, Any], model: type[BaseModel], *, source: str, base_dir: Path,
                          file_mode: int | None, secret_file_modes: bool, service_user: str
                          ) -> tuple[list[Found], list[Found]]:
    """(errors, warnings) for secrets that other users, or the group, can read.

    Other users: a secret in a file they can read is theirs, so the config is refused. The group: a service's
    own group (``denen``) reading its config is a legitimate setup, so only a warning.
    """
    errors: list[Found] = []
    warnings: list[Found] = []
    perms = stat.S_IMODE(file_mode) if file_mode is not None else 0
    config_readers = _who_can_read(perms)
    for what, loc, holder, value in _secret_fields(plain, model):
        name = str(loc[-1])
        if what == "inline":
            if config_readers is None:
                continue
            others = [k for k in (f"{name}_file", f"{name}_env") if k in holder.model_fields]
            move = " / ".join(others) if others else "a file of its own"
            if config_readers == "every user":
                errors.append((loc, f"this file holds a secret ({_dotted(loc)}) and every user on this machine can "
                               f"read it (mode {perms:03o})", f"chmod 600 {source}, or move the secret to {move}"))
            else:
                warnings.append((loc, f"this file holds a secret ({_dotted(loc)}) and its group can read it (mode "
                                 f"{perms:03o})", f"fine when the group is the service's own (e.g. denen); "
                                 f"otherwise chmod 600 {source}, or move the secret to {move}"))
            continue
        if not secret_file_modes or not isinstance(value, str):
            continue
        path = Path(value)
        if not path.is_absolute():
            path = base_dir / path  # as the field validators resolve it
        try:
            file_perms = stat.S_IMODE(path.stat().st_mode)
        except (OSError, ValueError):
            continue  # missing, unreadable, a bad name: the field's own validator reports it
        readers = _who_can_read(file_perms)
        if readers == "every user":
            errors.append((loc, f"secret file {path} can be read by every user on this machine (mode "
                           f"{file_perms:03o})", f"chmod 600 {path}, owned by {service_user}"))
        elif readers == "group":
            warnings.append((loc, f"secret file {path} can be read by its group (mode {file_perms:03o})",
                             f"fine when the group is the service's own (e.g. denen); otherwise chmod 600 {path}"))
    return errors, warnings
