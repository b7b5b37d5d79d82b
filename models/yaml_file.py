"""Reading a YAML file into a validated pydantic model: one loader for every file the project
reads (device manifests here; settings, sources, regions, routing rules, destinations and the
SEMD configuration in the gateway). It lives in ``models``, the lowest layer, so both sides
import it.

Every problem is raised as the caller's error class with the file named first, then what is
wrong — unreadable, not UTF-8, not YAML, not a mapping, or each invalid field by its path —
so an operator can fix the file without reading a traceback.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)
Describe = Callable[[ValidationError, dict[str, Any]], str]

_PYDANTIC_PREFIX = re.compile(r"^(Value error|Assertion failed), ")


def read_mapping(path: Path, error: type[Exception], *, empty_ok: bool = False) -> dict[str, Any]:
    """The file's top-level mapping; an empty file is ``{}`` only when ``empty_ok``."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text: {exc.reason} at byte {exc.start}") from exc
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML: {exc}") from exc
    if raw is None and empty_ok:
        return {}
    if not isinstance(raw, dict):
        raise error(f"{path}: expected a mapping of fields, found {type(raw).__name__}")
    return raw


def describe(exc: ValidationError, raw: dict[str, Any] | None = None) -> str:
    """Each invalid field as ``path.to.field: what is wrong``, joined by ``; ``."""
    return "; ".join(
        f"{'.'.join(str(part) for part in err['loc']) or '(top)'}: {message(err)}"
        for err in exc.errors()
    )


def message(err: Any) -> str:
    """One validation error's text without pydantic's own prefixes."""
    if err["type"] == "extra_forbidden":
        return "unknown field"
    return _PYDANTIC_PREFIX.sub("", str(err["msg"]))


def load_model(
    path: Path,
    model: type[M],
    error: type[Exception],
    *,
    empty_ok: bool = False,
    explain: Describe = describe,
) -> M:
    """Read ``path`` and validate it as ``model``; any problem raises ``error``."""
    raw = read_mapping(path, error, empty_ok=empty_ok)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise error(f"{path}: {explain(exc, raw)}") from exc
