"""The config schema machinery: one-line errors (`ConfigError`), safe YAML reading, and `build`,
which turns a mapping into a typed, frozen dataclass, refusing unknown keys, wrong types and bad
values with their field path.

Every config (study, profile, job.json) is read through here; the CLI prints a ConfigError as one
line `error: <file>: <field.path>: <problem> (<fix>)` with exit code 2. Nothing here imports torch.

    from launch.core.schema import ConfigError, build, read_yaml
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from pathlib import Path
from typing import Literal

import yaml

# patterns match whole strings of bounded length (fullmatch: '$' lets a trailing newline in)
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")   # in folder names and cell ids


class ConfigError(Exception):
    """Bad input: names the file, the field path, the problem and the fix."""

    def __init__(self, field_path: str, problem: str, fix: str, file: str = ""):
        self.file, self.field, self.problem, self.fix = file, field_path, problem, fix
        super().__init__(self.line())

    def line(self) -> str:
        """One line, whatever the input held: control characters (a newline in a key) escaped."""
        where = f"{self.file}: " if self.file else ""
        text = f"error: {where}{self.field or '<top>'}: {self.problem} ({self.fix})"
        return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def check(ok: bool, field_path: str, problem: str, fix: str) -> None:
    if not ok:
        raise ConfigError(field_path, problem, fix)


# ------------------------------------------------------------------------------------- loading
class _NoAliasLoader(yaml.SafeLoader):
    """Safe YAML without anchors/aliases: aliases are how YAML bombs multiply; configs need none."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.events.AliasEvent):
            ev = self.peek_event()
            raise ConfigError(f"line {ev.start_mark.line + 1}", "YAML aliases (*name) are not "
                                                                "allowed",
                              "write the value out in full")
        return super().compose_node(parent, index)


def _no_duplicate_keys(node, path: str = "") -> None:
    """A key given twice is refused, named by field path and line (YAML would keep the last)."""
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for key_node, value in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            where = f"{path}.{key}" if path else str(key)
            if key is not None and key in seen:
                raise ConfigError(where, f"is given twice (line {key_node.start_mark.line + 1})",
                                  "keep one of them")
            seen.add(key)
            _no_duplicate_keys(value, where)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _no_duplicate_keys(item, f"{path}[{i}]")


MAX_CONFIG_BYTES = 1 << 20


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError("", f"config file {str(path)!r} not found", "check the path",
                          file=str(path))
    raw = p.read_bytes()
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError("", f"file is {len(raw)} bytes", "configs are under 1 MiB",
                          file=str(path))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError("", f"not UTF-8 (byte {e.start})", "save the file as UTF-8",
                          file=str(path)) from None
    try:
        loader = _NoAliasLoader(text)
        try:
            node = loader.get_single_node()
            _no_duplicate_keys(node)
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except ConfigError as e:
        e.file = str(path)
        raise
    except RecursionError:
        raise ConfigError("", "the YAML nests too deeply", "configs are a few levels deep: flatten "
                                                           "it",
                          file=str(path)) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(where, f"invalid YAML: {problem}", "fix the syntax",
                          file=str(path)) from None
    if data is None:
        raise ConfigError("", "file is empty", "see configs/toy/setting2.yaml for an example",
                          file=str(path))
    if not isinstance(data, dict):
        raise ConfigError("", f"top level is a {type(data).__name__}", "write a mapping of keys",
                          file=str(path))
    return data


def _convert(tp, value, where: str):
    """Check and convert one YAML value to the annotated type; raise ConfigError naming `where`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(a, value, where)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if origin is Literal:
        if value not in args:
            close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"use one of {', '.join(map(str, args))}"
            raise ConfigError(where, f"{value!r} is not allowed", hint)
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(where, f"expected a mapping, got {type(value).__name__}",
                              f"write {where}: {{...}}")
        return build(tp, value, where)
    if origin in (tuple, list):
        # (tuples: a dataclass's own values, merged with overrides)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(where, f"expected a list, got {type(value).__name__}",
                              f"write {where}: [...]")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if origin is tuple:
            if len(value) != len(args):
                raise ConfigError(where, f"expected {len(args)} values, got {len(value)}",
                                  f"give {len(args)} values")
            return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args,
                                                                                        value)))
        return [_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(where, f"expected a mapping, got {type(value).__name__}",
                              f"write {where}: {{...}}")
        return {str(k): _convert(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(where, f"expected true or false, got {value!r}",
                              "write true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(where, f"expected an integer, got {value!r}", "write a whole number")
        return value
    if tp is float:
        if isinstance(value, str):
            try:  # YAML 1.1 reads 1e-5 (no dot) as a string
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value,
                                                     (int, float)) or not math.isfinite(value):
            raise ConfigError(where, f"expected a number, got {value!r}",
                              "write a number such as 1.0e-5")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(where, f"expected text, got {value!r}", "quote the value")
        return value
    if tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(where, f"expected a mapping, got {type(value).__name__}",
                              "write a mapping")
        return value
    raise TypeError(f"unsupported annotation {tp!r} at {where}")


def build(cls, data: dict, where: str = ""):
    """Build dataclass `cls` from a mapping: unknown keys, bad types or values raise ConfigError."""
    hints = typing.get_type_hints(cls)
    fields_ = {f.name: f for f in dataclasses.fields(cls)}
    prefix = f"{where}." if where else ""
    for key in data:
        if key not in fields_:
            close = difflib.get_close_matches(str(key), list(fields_), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(fields_)}"
            if key in getattr(cls, "RENAMED", {}):
                hint = f"replaced by {cls.RENAMED[key]}"
            if key in getattr(cls, "MOVED", {}):
                hint = f"{key} is how a stage runs, not what it computes: move it to {cls.MOVED[key]}: " \
                       f"(per stage: runtime_overrides)"
            raise ConfigError(f"{prefix}{key}", "unknown key", hint)
    kwargs = {}
    for name, f in fields_.items():
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], f"{prefix}{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{prefix}{name}", "is required", f"add {name}: to "
                                                                f"{where or 'the file'}")
    try:
        return cls(**kwargs)
    except ConfigError as e:  # __post_init__ names fields relative to its own dataclass
        if prefix:
            e.field = f"{prefix}{e.field}" if e.field else where
        raise
