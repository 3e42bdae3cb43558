"""llama.cpp's environment variables (``LLAMA_ARG_*``, ``LLAMA_API_KEY``) read as the flags
they stand for: a flag on the command line wins, as in llama.cpp."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from app.settings import ConfigError

#: llama.cpp's environment variables for the flags Sluice has that take a value
ENV_VALUES: dict[str, str] = {
    "LLAMA_ARG_MODEL": "--model", "LLAMA_ARG_MODELS_DIR": "--models-dir",
    "LLAMA_ARG_MODELS_MAX": "--models-max", "LLAMA_ARG_ALIAS": "--alias",
    "LLAMA_ARG_TAGS": "--tags",
    "LLAMA_ARG_HOST": "--host", "LLAMA_ARG_PORT": "--port", "LLAMA_ARG_CTX_SIZE": "--ctx-size",
    "LLAMA_ARG_N_PARALLEL": "--parallel", "LLAMA_ARG_BATCH": "--batch-size",
    "LLAMA_ARG_UBATCH": "--ubatch-size", "LLAMA_ARG_POOLING": "--pooling",
    "LLAMA_ARG_CORS_ORIGINS": "--cors-origins",
    "LLAMA_ARG_THREADS": "--threads", "LLAMA_ARG_N_GPU_LAYERS": "--n-gpu-layers",
    "LLAMA_ARG_N_PREDICT": "--n-predict", "LLAMA_ARG_TEMPERATURE": "--temp",
    "LLAMA_ARG_TOP_K": "--top-k", "LLAMA_ARG_TOP_P": "--top-p", "LLAMA_ARG_MIN_P": "--min-p",
    "LLAMA_ARG_REPEAT_PENALTY": "--repeat-penalty",
    "LLAMA_ARG_PRESENCE_PENALTY": "--presence-penalty",
    "LLAMA_ARG_FREQUENCY_PENALTY": "--frequency-penalty", "LLAMA_ARG_FLASH_ATTN": "--flash-attn",
    "LLAMA_ARG_CACHE_TYPE_K": "--cache-type-k", "LLAMA_ARG_CACHE_TYPE_V": "--cache-type-v",
    "LLAMA_API_KEY": "--api-key", "LLAMA_ARG_API_KEY_FILE": "--api-key-file",
    "LLAMA_ARG_SSL_KEY_FILE": "--ssl-key-file", "LLAMA_ARG_SSL_CERT_FILE": "--ssl-cert-file",
    "LLAMA_ARG_API_PREFIX": "--api-prefix",
    "LLAMA_ARG_TIMEOUT": "--timeout", "LLAMA_ARG_THREADS_HTTP": "--threads-http",
    "LLAMA_ARG_CACHE_RAM": "--cache-ram", "LLAMA_ARG_CACHE_REUSE": "--cache-reuse",
    "LLAMA_ARG_CHAT_TEMPLATE": "--chat-template",
    "LLAMA_ARG_CHAT_TEMPLATE_FILE": "--chat-template-file",
    "LLAMA_ARG_CHAT_TEMPLATE_KWARGS": "--chat-template-kwargs",
    "LLAMA_ARG_REASONING": "--reasoning", "LLAMA_ARG_THINK": "--reasoning-format",
    "LLAMA_ARG_THINK_BUDGET": "--reasoning-budget",
}
#: ... and for the on/off ones: (the flag, its negation or ""); ``LLAMA_ARG_NO_<X>`` negates
ENV_SWITCHES: dict[str, tuple[str, str]] = {
    "LLAMA_ARG_EMBEDDINGS": ("--embedding", ""), "LLAMA_ARG_ENDPOINT_METRICS": ("--metrics", ""),
    "LLAMA_ARG_RERANKING": ("--reranking", ""),
    "LLAMA_ARG_ENDPOINT_PROPS": ("--props", ""),
    "LLAMA_ARG_ENDPOINT_SLOTS": ("--slots", "--no-slots"),
    "LLAMA_ARG_UI": ("--webui", "--no-webui"),
    "LLAMA_ARG_CONTEXT_SHIFT": ("--context-shift", "--no-context-shift"),
    "LLAMA_ARG_KV_UNIFIED": ("--kv-unified", "--no-kv-unified"),
    "LLAMA_ARG_CACHE_PROMPT": ("--cache-prompt", "--no-cache-prompt"),
    "LLAMA_ARG_JINJA": ("--jinja", "--no-jinja"), "LLAMA_ARG_OFFLINE": ("--offline", ""),
    "LLAMA_ARG_CONT_BATCHING": ("--cont-batching", "--no-cont-batching"),
    "LLAMA_ARG_SWA_FULL": ("--swa-full", ""),
}
_TRUTHY = ("on", "enabled", "true", "1")
_FALSEY = ("off", "disabled", "false", "0")


def _given(parser: argparse.ArgumentParser, argv: list[str], flag: str) -> bool:
    """Whether ``argv`` sets what ``flag`` sets (any of its names, or its negation)."""
    actions = parser._option_string_actions
    dest = actions[flag].dest
    for token in argv:
        name = token.split("=", 1)[0]
        if name in actions and actions[name].dest == dest:
            return True
    return False


def env_arguments(parser: argparse.ArgumentParser, env: Mapping[str, str], argv: list[str]
                  ) -> tuple[list[str], list[str]]:
    """llama.cpp's ``LLAMA_ARG_*`` variables as arguments to put before ``argv`` (so a flag
    on the command line wins, as in llama.cpp), and a warning for each variable Sluice has
    no flag for.

    Raises:
        ConfigError: an on/off variable with another value.
    """
    out: list[str] = []
    warnings: list[str] = []
    negations = {k.replace("LLAMA_ARG_", "LLAMA_ARG_NO_", 1): k
                 for k, (_flag, neg) in ENV_SWITCHES.items() if neg}
    for name in sorted(env):
        value = env[name]
        if name in ENV_VALUES:
            flag = ENV_VALUES[name]
            if not _given(parser, argv, flag):
                if flag == "--flash-attn":  # llama.cpp reads on/off/auto as its other switches
                    value = ("on" if value in _TRUTHY else "off" if value in _FALSEY
                             else "auto" if value in ("auto", "-1") else value)
                out += [flag, value]
        elif name in ENV_SWITCHES or name in negations:
            flag, neg = ENV_SWITCHES[negations.get(name, name)]
            if value not in _TRUTHY + _FALSEY:
                raise ConfigError(f"environment variable {name} must be one of "
                                  f"{', '.join(_TRUTHY + _FALSEY)}")
            on = (value in _TRUTHY) != (name in negations)
            if not _given(parser, argv, flag) and (on or neg):
                out.append(flag if on else neg)
        elif name.startswith("LLAMA_ARG_"):
            warnings.append(f"environment variable {name} has no Sluice flag: ignored")
    return out, warnings
