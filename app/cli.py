"""Command line and config file into one frozen :class:`~app.settings.Settings`.

Flags follow llama.cpp's server where they exist. A JSON config file
(``--config``; goinfer-style keys such as ``models_dir`` and ``origins``) sets
the same options by their long names with ``_`` for ``-``; flags override it.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

from app.checks import check
from app.config_file import FIELDS, from_file
from app.llama_env import env_arguments
from app.options import add_all, sampling_options
from app.settings import ConfigError, Settings


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def build_parser() -> argparse.ArgumentParser:
    """The parser of :data:`app.options.OPTIONS`."""
    p = _Parser(prog="python -m app", description="Sluice: serve a GGUF model over HTTP.")
    add_all(p)
    return p


def _sampling_defaults(args: argparse.Namespace) -> tuple[tuple[str, object], ...]:
    """The default sampling flags given, checked (finite, in range)."""
    from app.completion import KNOWN_SAMPLERS

    out: list[tuple[str, object]] = []
    for option in sampling_options():
        value = getattr(args, option.target)
        if value is not None:
            option.check(value)
            out.append((option.target, value))
    if args.ignore_eos:
        out.append(("ignore_eos", True))
    if args.dry_sequence_breakers is not None:
        breakers = tuple(b for b in args.dry_sequence_breakers if b != "none")
        if len(breakers) > 16 or any(not 1 <= len(b) <= 40 or "\0" in b for b in breakers):
            raise ConfigError("--dry-sequence-breaker: at most 16, each 1-40 characters")
        out.append(("dry_sequence_breakers", breakers))
    if args.samplers is not None:
        names = tuple(n.strip() for n in args.samplers.replace(",", ";").split(";") if n.strip())
        unknown = [n for n in names if n not in KNOWN_SAMPLERS]
        if unknown or not names:
            raise ConfigError(f"--samplers: {', '.join(unknown) or 'none given'} not available; "
                              f"use {';'.join(KNOWN_SAMPLERS)}")
        out.append(("samplers", names))
    return tuple(out)


def _server_constraint(args: argparse.Namespace) -> dict[str, str]:
    """``--grammar``/``--grammar-file`` or ``--json-schema``/``--json-schema-file``, checked as a
    request's would be (parsed; the schema converted): a bad one ends start-up."""
    from grammar import GbnfSyntaxError, SchemaError, convert, parse_gbnf

    def read(path: Path, flag: str) -> str:
        try:
            return path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read {flag} {path}: {exc.strerror}") from None

    grammar = args.grammar if args.grammar_file is None else read(args.grammar_file,
                                                                   "--grammar-file")
    schema = args.json_schema if args.json_schema_file is None else read(
        args.json_schema_file, "--json-schema-file")
    if grammar is not None and schema is not None:
        raise ConfigError("--grammar and --json-schema cannot be used together")
    if grammar is not None:
        try:
            parse_gbnf(grammar)
        except GbnfSyntaxError as exc:
            raise ConfigError(f"--grammar: {exc}") from None
        return {"grammar": grammar}
    if schema is not None:
        try:
            convert(json.loads(schema))
        except ValueError as exc:  # not JSON
            raise ConfigError(f"--json-schema: not JSON: {exc}") from None
        except (SchemaError, RecursionError) as exc:
            raise ConfigError(f"--json-schema: {exc}") from None
        return {"json_schema": schema}
    return {}


def load_settings(argv: list[str], env: Mapping[str, str] | None = None
                  ) -> tuple[Settings, argparse.Namespace]:
    """Parse ``argv`` (and the config file it names, and llama.cpp's ``LLAMA_ARG_*`` variables
    of ``env``) into settings. ``args.env_warnings`` lists the variables Sluice ignored.

    Raises:
        ConfigError: an unknown flag, a bad value, or a bad config file.
    """
    parser = build_parser()
    extra, warnings = env_arguments(env or {}, argv)
    args = parser.parse_args([*extra, *argv])
    args.env_warnings = warnings
    values: dict[str, Any] = {}
    if args.config is not None:
        values.update(from_file(args.config))
    for name, value in vars(args).items():
        if name in FIELDS and value is not None:
            # llama.cpp's --api-key takes a comma-separated list too
            values[name] = tuple(k for v in value for k in v.split(",") if k) \
                if name == "api_keys" else value
    lora = [(path, 1.0) for path in args.lora_files or ()]
    for name, raw in args.lora_scaled or ():
        try:
            scale = float(raw)
        except ValueError:
            raise ConfigError(f"--lora-scaled {name}: the scale must be a number") from None
        lora.append((Path(name), scale))
    for path, scale in lora:
        if not math.isfinite(scale) or not -100 <= scale <= 100:
            raise ConfigError(f"--lora-scaled {path}: the scale must be a number from -100 to 100")
        if not path.is_file():
            raise ConfigError(f"LoRA adapter not found: {path}")
    if len(lora) > 64:
        raise ConfigError("at most 64 LoRA adapters")
    if lora:
        values["lora"] = tuple((p, 0.0 if args.lora_init_without_apply else s) for p, s in lora)
    if args.no_cont_batching:
        raise ConfigError("--no-cont-batching: Sluice always batches continuously")
    if args.cors_origins is not None:
        values["origins"] = tuple(o.strip() for o in args.cors_origins.split(",") if o.strip())
    if isinstance(values.get("tags"), str):
        values["tags"] = tuple(dict.fromkeys(t.strip() for t in values["tags"].split(",")
                                             if t.strip()))
    if isinstance(values.get("adapt_threads"), str):
        values["adapt_threads"] = values["adapt_threads"] == "on"
    if args.api_key_file is not None:
        try:
            keys = [k.strip() for k in args.api_key_file.read_text(encoding="utf-8").splitlines()]
        except OSError as exc:
            raise ConfigError(f"cannot read --api-key-file: {exc.strerror}") from None
        values["api_keys"] = tuple(values.get("api_keys", ())) + tuple(k for k in keys if k)
    if args.system_prompt_file is not None:
        try:
            values["system_prompt"] = args.system_prompt_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cannot read --system-prompt-file: {exc.strerror}") from None
    values.update(_server_constraint(args))
    sampling = _sampling_defaults(args)
    if sampling:
        values["sampling"] = sampling
    settings = replace(Settings(), **values)
    check(settings)
    return settings, args
