"""The JSON config file (``--config``): the same options as the flags, by their long names
with ``_`` for ``-`` (and goinfer-style keys such as ``models_dir`` and ``origins``), and
per-model settings under ``models``; each value is checked against its setting's type."""

from __future__ import annotations

import json
import math
from dataclasses import fields
from pathlib import Path
from typing import Any

from app.options import config_names, kind_of
from app.settings import MODEL_FIELDS, ConfigError, ModelConfig, Settings

#: the settings a config file may set
FIELDS = frozenset(f.name for f in fields(Settings))
#: the config file's other names for settings (``"ctx"`` for ``ctx_size``...), the table's
_CONFIG_ALIASES = config_names()


def _coerce(name: str, value: Any, default: Any) -> Any:
    """A config value as its setting's type: the option table's (:func:`kind_of`), else the
    default's."""
    kind = kind_of(name)
    if kind is Path:
        if not isinstance(value, str):
            raise ConfigError(f"config value '{name}' must be a path string")
        return Path(value)
    if name in ("api_keys", "origins"):
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise ConfigError(f"config value '{name}' must be a string or a list of strings")
        return tuple(items)
    if name == "flash_attn" and isinstance(value, bool):  # config files of earlier versions
        return "on" if value else "off"
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"config value '{name}' must be true or false")
        return value
    if kind is int or (isinstance(default, int) and not isinstance(default, bool)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config value '{name}' must be an integer")
        return value
    if kind is float or isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ConfigError(f"config value '{name}' must be a number")
        return float(value)
    if not isinstance(value, str):
        raise ConfigError(f"config value '{name}' must be a string")
    return value


def _models_from(value: Any, path: Path) -> tuple[ModelConfig, ...]:
    """The config file's ``"models": {"<name>": {"path": ..., "aliases": [...], <settings>}}``."""
    if not isinstance(value, dict):
        raise ConfigError(f"config value 'models' in {path} must be an object of named models")
    defaults = Settings()
    out = []
    for name, entry in value.items():
        where = f"models.{name}"
        if not name or len(name) > 256 or not isinstance(entry, dict):
            raise ConfigError(f"config value '{where}' must be an object with a 'path'")
        if not isinstance(entry.get("path"), str) or not entry["path"]:
            raise ConfigError(f"config value '{where}.path' must be a model file or an "
                              "embedded model's name")
        aliases = entry.get("aliases", [])
        if not isinstance(aliases, list) or not all(isinstance(a, str) and a for a in aliases):
            raise ConfigError(f"config value '{where}.aliases' must be a list of names")
        overrides = []
        for key, raw in entry.items():
            if key in ("path", "aliases"):
                continue
            field = _CONFIG_ALIASES.get(key, key)
            if field not in MODEL_FIELDS:
                raise ConfigError(f"unknown key '{where}.{key}': a model may set "
                                  f"{', '.join(MODEL_FIELDS)}")
            overrides.append((field, _coerce(field, raw, getattr(defaults, field))))
        values = dict(overrides)
        parallel = values.get("parallel", defaults.parallel)
        ctx = values.get("ctx_size", defaults.ctx_size)
        if not (isinstance(parallel, int) and 1 <= parallel <= 256
                and isinstance(ctx, int) and 16 * parallel <= ctx <= 1 << 22):
            raise ConfigError(f"config value '{where}': ctx_size must give each of its "
                              "1..256 slots at least 16 tokens")
        out.append(ModelConfig(name, Path(entry["path"]), tuple(aliases),
                               tuple(sorted(overrides))))
    return tuple(out)


def from_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a JSON object")
    defaults = Settings()
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key == "models":
            out["models"] = _models_from(value, path)
            continue
        name = _CONFIG_ALIASES.get(key, key)
        if name not in FIELDS:
            raise ConfigError(f"unknown config key '{key}' in {path}")
        out[name] = _coerce(name, value, getattr(defaults, name))
    return out
