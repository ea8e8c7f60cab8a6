"""Config dataclasses as files and flags: one reader for every config file, one way a
dataclass's fields become command-line flags.

A command's settings are a dataclass whose fields carry a one-line ``help``
(:func:`option`). The same fields are read from a YAML/JSON file (``--config``) and from
flags (:func:`add_flags`); a flag a user typed beats the file, which beats the default
(:func:`merge`). The app writes such a file and runs ``infosft COMMAND --config FILE``,
so the browser and the command line share one path.
"""

from __future__ import annotations

import argparse
import functools
import json
from dataclasses import MISSING, Field, field, fields
from pathlib import Path
from typing import Any

from infosft.errors import InfosftError


def option(default: Any, help: str, **kw: Any):
    """A dataclass field with a one-line help (shown by ``infosft COMMAND --help``).

    ``kw`` goes into the field's metadata: ``flag`` (the flag's name when it is not
    ``--field-name``), ``cli`` (extra ``argparse.add_argument`` arguments),
    ``positional=True`` (a positional argument, optional when a config file may give it)
    or ``no_flag=True`` (a config-file key only: the command fills it from flags of its
    own, as ``infosft train`` fills ``knobs`` from ``--alpha``, ``--knob NAME=VALUE``).
    """
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


def required(help: str, **kw: Any):
    """A field without a default (a flag, a positional argument or a config key must
    give it; :func:`merge` says which is missing)."""
    return field(metadata={"help": help, **kw})


def names(cls) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


def default_of(f: Field) -> Any:
    return (f.default_factory() if f.default_factory is not MISSING  # type: ignore[misc]
            else None if f.default is MISSING else f.default)


def add_flags(parser: argparse.ArgumentParser, cls, *, exclude=frozenset(),
              only: tuple[str, ...] | None = None) -> None:
    """Every field of dataclass ``cls`` (those in ``only``, but not ``exclude``) as a flag
    with default None, so only the flags a user typed override a config file.

    The flag's kind follows the annotation: ``bool`` -> ``--x/--no-x``, ``int``, ``float``,
    ``list[...]`` -> repeatable; a field's ``cli`` metadata overrides it.
    """
    for f in fields(cls):
        meta = f.metadata
        if (f.name in exclude or (only is not None and f.name not in only)
                or meta.get("no_flag")):
            continue
        help_ = meta.get("help", "")
        default = default_of(f)
        if default not in (None, [], {}) and "default" not in help_:
            help_ += f" (default {default})"
        spec = dict(meta.get("cli", {}))
        ann = str(f.type)
        if not spec:
            spec = (dict(action=argparse.BooleanOptionalAction) if ann.startswith("bool")
                    else dict(type=int) if ann.startswith("int")
                    else dict(type=float) if ann.startswith("float")
                    else dict(action="append") if ann.startswith("list") else {})
        if meta.get("positional"):
            parser.add_argument(f.name, default=None, help=help_, **{"nargs": "?", **spec})
            continue
        flag = meta.get("flag", "--" + f.name.replace("_", "-"))
        parser.add_argument(flag, dest=f.name, default=None, help=help_, **spec)


def flag_values(args: argparse.Namespace, cls) -> dict[str, Any]:
    """The fields of ``cls`` that ``args`` (from :func:`add_flags`) has, None = not given
    (so is an empty positional list: argparse's ``nargs="*"`` gives ``[]`` for nothing)."""
    return {name: (None if getattr(args, name) == [] else getattr(args, name))
            for name in names(cls) if hasattr(args, name)}


def check_keys(values: dict[str, Any], known: tuple[str, ...], where: str) -> None:
    unknown = sorted(str(k) for k in values if k not in known)
    if unknown:
        raise InfosftError(f"{where}: unknown config key {unknown[0]!r} (known: "
                           f"{', '.join(known)})")


def merge(cls, file_values: dict[str, Any] | None, overrides: dict[str, Any] | None, *,
          source: str | Path | None = None) -> dict[str, Any]:
    """Defaults < ``file_values`` (from ``source``) < ``overrides`` (None = not given),
    keys checked against ``cls``'s fields; required fields (no default) must be there."""
    file_values = dict(file_values or {})
    check_keys(file_values, names(cls), str(source or "config"))
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    check_keys(given, names(cls), "flags")
    values = file_values | given
    for f in fields(cls):
        if f.default is MISSING and f.default_factory is MISSING and values.get(f.name) is None:
            flag = (f.name.upper() if f.metadata.get("positional")
                    else f.metadata.get("flag", "--" + f.name.replace("_", "-")))
            raise InfosftError(f"{flag} is required (or {f.name!r} in the --config file)")
    return values


_SIMPLE = {"str": str, "int": int, "float": (int, float), "bool": bool}


def _fits(value: Any, ann: str) -> bool:
    for part in (a.strip() for a in ann.split("|")):
        if part == "None" and value is None:
            return True
        if part in _SIMPLE and isinstance(value, _SIMPLE[part]) and (
                part == "bool" or not isinstance(value, bool)):
            return True
        if part.startswith("list[") and isinstance(value, list):
            return all(_fits(v, part[5:-1]) for v in value)
        if part.startswith("dict[") and isinstance(value, dict):
            key, _, val = part[5:-1].partition(",")
            return all(_fits(k, key) and _fits(v, val) for k, v in value.items())
    return False


def check_types(obj: Any, where: str = "config") -> None:
    """A one-line error naming the first field of dataclass ``obj`` whose value does not
    fit its annotation (a config file can hold any YAML value)."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        if not _fits(value, str(f.type)):
            raise InfosftError(f"{where}: config field {f.name!r}: expected "
                               f"{str(f.type).replace(' | None', ' or null')}, got "
                               f"{value!r:.80}")


def build(cls, file_values: dict[str, Any] | None = None,
          overrides: dict[str, Any] | None = None, *, source: str | Path | None = None):
    """A ``cls`` from defaults < a config file's values < typed flags, its types checked
    (:func:`merge`, :func:`check_types`)."""
    obj = cls(**merge(cls, file_values, overrides, source=source))
    check_types(obj, str(source or "config"))
    return obj


def write_config(values: dict[str, Any], path: str | Path) -> Path:
    """``values`` as a YAML config file, atomically (what :func:`read_config_file` reads)."""
    import yaml

    from infosft.atomic import atomic_write_text

    path = Path(path)
    atomic_write_text(path, yaml.safe_dump(json.loads(json.dumps(values, default=str)),
                                           sort_keys=False, default_flow_style=None,
                                           allow_unicode=True))
    return path


MAX_CONFIG_BYTES = 1 << 20  # a config is a few hundred bytes; anything near this is a mistake


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML or JSON file (a ``--config`` or a run's ``config.yaml``),
    keys unchecked.

    Raises:
        InfosftError: one line naming the file (and the line where the parser knows it):
            missing, unreadable, too large, not UTF-8, not valid YAML/JSON, an alias, a
            duplicate key, too deeply nested, or not a mapping.
    """
    path = Path(path)
    kind = "JSON" if path.suffix.lower() == ".json" else "YAML"
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise InfosftError(f"{path}: {path.stat().st_size} bytes is too large for a "
                               "config file")
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise InfosftError(f"{path}: no such config file") from None
    except OSError as e:  # a directory, no permission, ...
        raise InfosftError(f"{path}: cannot read the config file ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise InfosftError(f"{path}: not a UTF-8 text file (byte 0x{e.object[e.start]:02x} "
                           f"at offset {e.start})") from None
    import yaml

    try:
        values = (json.loads(text, object_pairs_hook=_json_mapping) if kind == "JSON"
                  else yaml.load(text, Loader=_config_loader()))  # noqa: S506 - a SafeLoader
    except json.JSONDecodeError as e:
        raise InfosftError(f"{path}, line {e.lineno}: not valid JSON ({e.msg})") from None
    except RecursionError:
        raise InfosftError(f"{path}: nested too deeply for a config file") from None
    except (yaml.YAMLError, _DuplicateKey) as e:
        mark = getattr(e, "problem_mark", None)
        line = f", line {mark.line + 1}" if mark is not None else ""
        problem = (getattr(e, "problem", None) or getattr(e, "reason", None)
                   or (str(e).splitlines() or [type(e).__name__])[0])
        raise InfosftError(f"{path}{line}: not valid {kind} ({problem})") from None
    if values is None:  # an empty file (or only comments): no settings
        return {}
    if not isinstance(values, dict):
        raise InfosftError(f"{path}: expected a mapping of config fields, got "
                           f"{type(values).__name__}")
    return values


class _DuplicateKey(ValueError):
    def __init__(self, key: Any, mark: Any = None):
        self.problem, self.problem_mark = f"duplicate key {key!r}", mark
        super().__init__(self.problem)


def _json_mapping(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:  # json.loads would keep the last one silently
            raise _DuplicateKey(k)
        out[k] = v
    return out


@functools.cache
def _config_loader():
    import re

    import yaml

    class ConfigLoader(yaml.SafeLoader):
        """SafeLoader with three changes for config files:

        * aliases (``*name``) are refused: a config needs none, and a few nested ones
          expand a kilobyte into billions of values ("billion laughs") as soon as anything
          walks or prints the result;
        * a duplicate key is an error (YAML keeps the last one silently, so the first,
          perhaps the one the user meant, would be ignored);
        * ``2e-4`` is a number, as in JSON and YAML 1.2 (YAML 1.1 reads it as a string
          and insists on ``2.0e-4``), because that is how learning rates are written.
        """

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                raise yaml.composer.ComposerError(
                    None, None, "aliases (*name) are not allowed in a config file",
                    self.peek_event().start_mark)
            return super().compose_node(parent, index)

        def construct_mapping(self, node, deep=False):
            self.flatten_mapping(node)  # merge keys (<<) first, as SafeLoader does
            seen = []
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise _DuplicateKey(key, key_node.start_mark)
                seen.append(key)
            return super().construct_mapping(node, deep=deep)

    exponent = re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$")
    ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:float", exponent,
                                       list("-+0123456789."))
    return ConfigLoader


