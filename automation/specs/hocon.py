"""HOCON text for ClearML configuration objects, read back with pyhocon.

pyhocon's own writer (`HOCONConverter.to_hocon`) treats dots in keys as paths and drops
characters such as `:` and `$`, so a key like `re:.*lm_head` does not survive it. This writer
quotes every key that is not a plain identifier and writes scalars as JSON literals (valid HOCON),
so whatever a spec holds comes back from `pyhocon.ConfigFactory.parse_string` unchanged.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from pyhocon import ConfigFactory
from pyhocon.exceptions import ConfigException

from automation.errors import HoconError

_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def _key(key: str) -> str:
    return key if _PLAIN_KEY.match(key) else json.dumps(key, ensure_ascii=False)


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _scalar(value: Any) -> str:
    if isinstance(value, str) and _CONTROL.search(value):
        # pyhocon does not decode \uXXXX escapes; a triple-quoted string is taken verbatim.
        if '"""' in value or value.endswith('"'):
            raise HoconError("cannot write a string holding both control characters and quotes to HOCON")
        return f'"""{value}"""'
    if value is None or isinstance(value, (bool, int, float, str)):
        return json.dumps(value, ensure_ascii=False)
    raise HoconError(f"cannot write {type(value).__name__} to HOCON: convert it to plain data first")


def _value(value: Any, indent: int) -> str:
    pad = "  " * (indent + 1)
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        body = "\n".join(f"{pad}{_entry(k, v, indent + 1)}" for k, v in value.items())
        return "{\n" + body + "\n" + "  " * indent + "}"
    if isinstance(value, (list, tuple)):
        if not value:
            return "[]"
        body = "\n".join(f"{pad}{_value(v, indent + 1)}" for v in value)
        return "[\n" + body + "\n" + "  " * indent + "]"
    return _scalar(value)


def _entry(key: Any, value: Any, indent: int) -> str:
    if not isinstance(key, str):
        raise HoconError(f"HOCON keys must be strings, got {key!r}")
    if isinstance(value, Mapping):
        return f"{_key(key)} {_value(value, indent)}"
    return f"{_key(key)} = {_value(value, indent)}"


def dumps(data: Mapping[str, Any]) -> str:
    """Plain data (dicts, lists, scalars) -> HOCON text."""
    return "\n".join(_entry(k, v, 0) for k, v in data.items()) + "\n"


def loads(text: str, what: str = "configuration") -> dict[str, Any]:
    """HOCON (or JSON) text -> plain dicts and lists; errors name what was being read."""
    try:
        tree = ConfigFactory.parse_string(text)
    except (ConfigException, Exception) as exc:  # pyparsing errors are not ConfigExceptions
        raise HoconError(f"invalid HOCON in {what}: {exc}") from exc
    return _plain(tree.as_plain_ordered_dict())


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
