"""Secrets in config files: the three ways to give one (inline, ``*_file``, ``*_env``), and who may read them.

One set of field types serves every secret of every config file (the gateway's MQTT password and node keys, the
bridge's passwords and token, the console's link secret, webhook token and SMTP password)::

    password: SecretText = Field(...)                         inline: text only, kept as SecretStr (redacted)
    password_file: secret_file("password file") = Field(...)  a readable file, path resolved beside the config,
                                                              marked SECRET_FILE so the loader checks its mode
    password_env: SecretEnv = Field(...)                      a variable name, set and not blank at load time

and a section holding secrets derives from :class:`WithSecrets`, which keeps what ``*_env`` variables held when
the config was loaded (never a field: never dumped or shown) and answers :meth:`WithSecrets.secret_text`
(inline, else the variable, else the file read on every call, so a rotated file is picked up).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    PrivateAttr,
    SecretStr,
    ValidationInfo,
)

from agent.config.values import (
    Found,
    _check_readable_file,
    _dotted,
    _resolve_path,
    _unwrap,
)
from agent.errors import ConfigError, ConfigIssue
from drivers.settings import N_, Loc, Section, Text, problem

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
            N_("{key} must be the name of an environment variable: upper-case letters A-Z, digits and '_', not "
               "starting with a digit"),
            N_("e.g. {key}: {example}; the {secret} itself goes into that variable, not into this file"),
            key=key, example=example, secret=secret,
        )
    return value


def read_env_secret(name: str) -> str:
    """Return the value of environment variable ``name``, which must be set and not blank.

    The value is a secret: it is never logged or put in a message. Only the variable's name is.

    Raises:
        ValueError: a config problem naming the variable, with a hint on how to set it.
    """
    value = os.environ.get(name)
    hint = N_("set {name} in the service's environment (systemd: EnvironmentFile=/etc/denen/secrets.env, mode "
              "600); to check the file with denen config validate, export it in your shell too")
    if value is None:
        raise problem(N_("environment variable {name} is not set"), hint, name=name)
    if not value.strip():
        raise problem(N_("environment variable {name} is empty"), hint, name=name)
    return value


def secret_source_problems(section: object, *names: str) -> list[tuple[Loc, str, str | None]]:
    """Problems for each secret ``name`` of ``section`` given more than one way (``name``, ``name_file``,
    ``name_env``), as (key, message, hint) below the section, for :func:`config_problems`."""
    found: list[tuple[Loc, str, str | None]] = []
    for name in names:
        ways = (name, f"{name}_file", f"{name}_env")
        given = [w for w in ways if getattr(section, w, None) is not None]
        if len(given) > 1:
            found.append(((given[-1],), Text(N_("give only one of {some} and {last}, not {given}"),
                                             some=", ".join(ways[:-1]), last=ways[-1], given=" and ".join(given)),
                          Text(N_("keep {name}_file or {name}_env, which keep the {name} out of this file"),
                               name=name)))
    return found


def secret_text(not_text: str = N_("{name} must be text"),
                hint: str = N_("put the {name} in quotes, or better use {name}_file or {name}_env"),
                *, parse: Callable[[str], str] | None = None) -> Any:
    """The type of an inline secret key (``password:``): ``SecretStr | None``, which is never printed.

    Args:
        not_text: Message for a value YAML did not read as text; ``{name}`` is replaced by the key.
        hint: Its hint, the same way.
        parse: Checks the text and returns it normalised (raising a config problem that never shows it).
    """

    def text_only(value: object, info: ValidationInfo) -> object:
        if value is None:
            return None
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if not isinstance(value, str):
            name = str(info.field_name)
            raise problem(not_text, hint, name=name)
        return SecretStr(parse(value)) if parse is not None else value

    return Annotated[SecretStr | None, BeforeValidator(text_only)]


def secret_file(what: str, *, read: Callable[[str], object] | None = None) -> Any:
    """The type of a ``*_file`` key: the path of a file holding a secret, resolved against the config file's
    directory and checked when the config is loaded, and marked :data:`SECRET_FILE` so that the loader refuses
    it when other users can read it.

    Args:
        what: Names the file in messages ("password file"); ``{name}`` is replaced by the key without ``_file``.
        read: Reads and checks the file instead of only checking that it is readable (node key files).
    """

    def check(value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        path = _resolve_path(value, info)
        if read is not None:
            read(path)  # fail at load time, not at first use
        else:
            name = str(info.field_name).removesuffix("_file")
            _check_readable_file(path, Text(what, name=name) if "{name}" in what else Text(what))
        return path

    return Annotated[str | None, SECRET_FILE, AfterValidator(check)]


def secret_env(*, check: Callable[[str, str], object] | None = None) -> Any:
    """The type of a ``*_env`` key: the name of an environment variable that must be set, and not blank, when the
    config is loaded (so a missing one fails then, not at the first connect).

    Args:
        check: Also checks the variable's value: ``check(value, variable name)`` raising a config problem.
    """

    def read(value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        name = env_secret_name(value, str(info.field_name))
        text = read_env_secret(name)
        if check is not None:
            check(text, name)
        return name

    return Annotated[str | None, AfterValidator(read)]


#: An inline secret: text, never printed (messages name the key, hint at ``*_file`` and ``*_env``).
SecretText = secret_text()
#: The name of an environment variable holding a secret, read when the config is loaded.
SecretEnv = secret_env()


def read_secret_file(path: str, key: str, what: str = N_("the file")) -> str:
    """The text of a secret file without its trailing newline.

    Raises:
        ConfigError: the file cannot be read (``key`` and ``what`` name it in the message).
    """
    try:
        return Path(path).read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise ConfigError(
            [ConfigIssue(path, None, None, key, Text(N_("cannot read {what}: {error}"),
                                                     what=what if isinstance(what, Text) else Text(what),
                                                     error=exc.strerror),
                         Text(N_("check the file's path and mode")))]
        ) from None


def read_once(section: object, name: str, key: str, *, missing: tuple[str, str], twice: tuple[str, str]
              ) -> tuple[str, str]:
    """A secret given only by ``<name>_file`` or ``<name>_env`` (never inline) and read once, when the config is
    loaded (from the section's model validator): (its text, the key that gave it).

    Args:
        key: The dotted key of the file, for its read error.
        missing: (message, hint) when neither key is given; ``twice``: when both are.

    Raises:
        ValueError: a config problem, at the key that gave the secret.
    """
    file_key, env_key = f"{name}_file", f"{name}_env"
    given = [k for k in (file_key, env_key) if getattr(section, k) is not None]
    if not given:
        raise problem(*missing)
    if len(given) > 1:
        raise problem(*twice, subloc=(env_key,))
    path = getattr(section, file_key)
    if path is None:
        return read_env_secret(getattr(section, env_key)), env_key
    try:
        return read_secret_file(path, key), file_key
    except ConfigError as exc:
        raise problem(exc.issues[0].message, exc.issues[0].hint, subloc=(file_key,)) from None


class WithSecrets(Section):
    """A config section holding secrets given by :func:`secret_text`, :func:`secret_file` and
    :func:`secret_env` keys named ``<name>``, ``<name>_file`` and ``<name>_env``."""

    # What the *_env variables held when the config was loaded (not fields: never dumped or shown).
    _env_secrets: dict[str, SecretStr] = PrivateAttr(default_factory=dict)

    def keep_env_secrets(self, *names: str) -> None:
        """Read the variable of each ``<name>_env`` key that is set, once, now (from the model's validator)."""
        for name in names:
            variable = getattr(self, f"{name}_env", None)
            if variable is not None:
                self._env_secrets[name] = SecretStr(read_env_secret(variable))

    def env_secret(self, name: str) -> str | None:
        """What the variable of ``<name>_env`` held when the config was loaded, or None."""
        kept = self._env_secrets.get(name)
        return kept.get_secret_value() if kept is not None else None

    def secret_text(self, name: str, read_file: Callable[[str], str]) -> str | None:
        """Secret ``name`` from the inline key, the variable (read at load time) or the file (``read_file(path)``,
        on every call), or None when none is given."""
        inline = getattr(self, name, None)
        if inline is not None:
            return inline.get_secret_value()
        kept = self.env_secret(name)
        if kept is not None:
            return kept
        path = getattr(self, f"{name}_file", None)
        return read_file(path) if path is not None else None


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
            move = " / ".join(others) if others else Text(N_("a file of its own"))
            values = {"key": _dotted(loc), "mode": f"{perms:03o}", "source": source, "move": move}
            if config_readers == "every user":
                errors.append((loc, Text(N_("this file holds a secret ({key}) and every user on this machine can read "
                                            "it (mode {mode})"), **values),
                               Text(N_("chmod 600 {source}, or move the secret to {move}"), **values)))
            else:
                warnings.append((loc, Text(N_("this file holds a secret ({key}) and its group can read it (mode "
                                              "{mode})"), **values),
                                 Text(N_("fine when the group is the service's own (e.g. denen); otherwise chmod 600 "
                                         "{source}, or move the secret to {move}"), **values)))
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
            errors.append((loc, Text(N_("secret file {path} can be read by every user on this machine (mode {mode})"),
                                     path=path, mode=f"{file_perms:03o}"),
                           Text(N_("chmod 600 {path}, owned by {user}"), path=path, user=service_user)))
        elif readers == "group":
            warnings.append((loc, Text(N_("secret file {path} can be read by its group (mode {mode})"), path=path,
                                       mode=f"{file_perms:03o}"),
                             Text(N_("fine when the group is the service's own (e.g. denen); otherwise chmod 600 "
                                     "{path}"), path=path)))
    return errors, warnings
