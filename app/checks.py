"""The settings checked as a whole once they are built (flags, config file and environment
together): ranges, sizes that fit together, files that must exist. A bad one ends start-up
with one line (:class:`~app.settings.ConfigError`) naming the flag."""

from __future__ import annotations

import json
import re
from dataclasses import fields

from app.options import KV_TYPES, check_bounds
from app.settings import ConfigError, Settings
from app.toolformat import NAMES as TOOL_FORMATS

_HEADER_LIST = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+(, *[A-Za-z0-9!#$%&'*+.^_`|~-]+)*")
_PREFIX = re.compile(r"(/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)+")


def _check_operator(s: Settings) -> None:
    """TLS files that load, a prefix that is a path, CORS lists of tokens (a header value with a
    newline would split the response)."""
    if (s.ssl_key_file is None) != (s.ssl_cert_file is None):
        raise ConfigError("--ssl-key-file and --ssl-cert-file go together")
    if s.ssl_key_file is not None and s.ssl_cert_file is not None:
        import ssl

        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                s.ssl_cert_file, s.ssl_key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"--ssl-cert-file/--ssl-key-file do not load: {exc}") from None
    if s.api_prefix and not _PREFIX.fullmatch(s.api_prefix):
        raise ConfigError(f"--api-prefix {s.api_prefix!r} must be a path like /llama (no "
                          "trailing /)")
    for flag, value in (("--cors-methods", s.cors_methods), ("--cors-headers", s.cors_headers)):
        if not _HEADER_LIST.fullmatch(value):
            raise ConfigError(f"{flag} must be a comma-separated list of names")


def check(s: Settings) -> None:
    check_bounds({f.name: getattr(s, f.name) for f in fields(s)})  # the table's ranges
    checks = [
        (bool(s.binds), "--host needs an address"),
        (s.ctx_size >= 16 * s.parallel, "--ctx-size must give each slot at least 16 tokens"),
        # as with -b: fewer rows than slots in a micro-batch is not safe to hand llama.cpp
        (s.ubatch_size is None or s.ubatch_size >= s.parallel,
         "--ubatch-size must be at least --parallel"),
        (s.pooling in ("mean", "cls", "last"), f"--pooling {s.pooling}: Sluice serves pooled "
         "embeddings (mean, cls or last); per-token vectors (none) and reranking (rank) are "
         "not served"),
        # llama_decode reserves one output row per sequence: fewer rows than slots aborts it
        (s.batch_size >= s.parallel, "--batch-size must be at least --parallel"),
        (s.ctx_size <= 1 << 22, "--ctx-size must be at most 4194304"),
        (s.flash_attn in ("on", "off", "auto"), "--flash-attn must be on, off or auto"),
        (s.cache_type_k in KV_TYPES and s.cache_type_v in KV_TYPES,
         f"the KV cache types are {', '.join(KV_TYPES)}"),
        (s.cache_type_v in ("f32", "f16", "bf16") or s.flash_attn != "off",
         f"-ctv {s.cache_type_v}: a quantized V cache needs flash attention (-fa on or auto)"),
        (s.reasoning_format in ("none", "deepseek", "auto"),
         "--reasoning-format must be none, deepseek or auto"),
        (s.tool_call_format in ("auto", *TOOL_FORMATS),
         f"--tool-call-format must be auto or one of {', '.join(TOOL_FORMATS)}"),
        (s.cache_ram_mib >= -1, "--cache-ram must be -1 (no limit), 0 (off) or a size in MiB"),
        (s.reasoning_budget in (-1, 0), "--reasoning-budget: Sluice supports -1 (unlimited) and "
         "0 (no thinking)"),
        (s.request_timeout_s is None or s.request_timeout_s > 0, "--timeout must be positive"),
        (s.send_timeout_s > 0, "--send-timeout must be positive"),
        (0 < s.models_wait_s <= 86400, "--models-wait must be more than 0 and at most 86400"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    _check_operator(s)
    if s.chat_template_kwargs:
        from app.chat import RESERVED_VARIABLES

        try:
            kwargs = json.loads(s.chat_template_kwargs)
        except ValueError:
            raise ConfigError("--chat-template-kwargs must be a JSON object") from None
        if not isinstance(kwargs, dict):
            raise ConfigError("--chat-template-kwargs must be a JSON object")
        reserved = sorted(set(kwargs) & RESERVED_VARIABLES)
        if reserved:
            raise ConfigError(f"--chat-template-kwargs may not set {', '.join(reserved)}: the "
                              "template gets them from each request")
    if s.models_dir is not None and not s.models_dir.is_dir():
        raise ConfigError(f"--models-dir is not a directory: {s.models_dir}")
    if s.slot_save_path is not None and not s.slot_save_path.is_dir():
        try:  # as llama.cpp: the directory is made when missing
            s.slot_save_path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--slot-save-path {s.slot_save_path}: {exc.strerror}") from None
    if s.chat_template_file is not None and not s.chat_template_file.is_file():
        raise ConfigError(f"--chat-template-file not found: {s.chat_template_file}")
    from app.builtin_templates import ALIASES, BUILTINS

    if s.chat_template is not None and ALIASES.get(s.chat_template, s.chat_template) not in BUILTINS:
        raise ConfigError(f"unknown --chat-template {s.chat_template!r}; built-ins: "
                          f"{', '.join(sorted(BUILTINS))}")
