"""Resolve ``module:attr`` / ``path/file.py:attr`` references named in a config."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from landscape_cli.errors import ConfigError, exception_line

#: What user code may raise that still means "this config's code failed": ``SystemExit``
#: too, from a script's ``sys.exit()`` or argparse run at import, which would otherwise end
#: the process with its own exit code.
USER_CODE_ERRORS = (Exception, SystemExit)


def add_python_path(entries: Iterable[str]) -> None:
    """Prepend config ``python_path`` entries to ``sys.path`` (once each, in order)."""
    for entry in reversed(list(entries)):
        if entry not in sys.path:
            sys.path.insert(0, entry)


def _import_file(path: Path, source: str, key: str):
    if not path.is_file():
        raise ConfigError(source, key, f"file not found: {path}")
    name = "landscape_user_" + hashlib.sha1(str(path).encode()).hexdigest()[:12] + "_" + path.stem
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except USER_CODE_ERRORS as exc:
        del sys.modules[name]
        raise ConfigError(source, key, f"importing {path} failed: {exception_line(exc)}") from exc
    return module


def resolve(spec: str, source: str, key: str) -> Any:
    """Return the object ``spec`` names; errors name the config file and key."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise ConfigError(source, key, f"'{spec}' is not of the form 'module:attr' or 'file.py:attr'")
    if target.endswith(".py") or "/" in target:
        module = _import_file(Path(target), source, key)
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as exc:
            raise ConfigError(source, key, f"cannot import module '{exc.name}' (from '{spec}'); "
                              "check the name and python_path") from None
        except USER_CODE_ERRORS as exc:
            raise ConfigError(source, key, f"importing '{target}' failed: "
                              f"{exception_line(exc)}") from exc
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(source, key, f"'{target}' has no attribute '{attr}'") from None
    return obj


def call(spec: str, kwargs: dict[str, Any], source: str, key: str) -> Any:
    """Resolve ``spec`` and call it with ``kwargs``; a failure names the config key."""
    fn = resolve(spec, source, key)
    if not callable(fn):
        raise ConfigError(source, key, f"'{spec}' is not callable")
    try:
        return fn(**kwargs)
    except USER_CODE_ERRORS as exc:
        raise ConfigError(source, key, f"calling '{spec}' failed: {exception_line(exc)}") from exc
