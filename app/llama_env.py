"""llama.cpp's environment variables (``LLAMA_ARG_*``, ``LLAMA_API_KEY``) read as the flags
they stand for: a flag on the command line wins, as in llama.cpp."""

from __future__ import annotations

from collections.abc import Mapping

from app.options import BY_FLAG, env_switches, env_values
from app.settings import ConfigError

#: llama.cpp's environment variables for the flags Sluice has that take a value (the table's)
ENV_VALUES: dict[str, str] = env_values()
#: ... and for the on/off ones: (the flag, its negation or ""); ``LLAMA_ARG_NO_<X>`` negates
ENV_SWITCHES: dict[str, tuple[str, str]] = env_switches()
_TRUTHY = ("on", "enabled", "true", "1")
_FALSEY = ("off", "disabled", "false", "0")


def _given(argv: list[str], flag: str) -> bool:
    """Whether ``argv`` sets what ``flag`` sets (any of its names, or its negation)."""
    target = BY_FLAG[flag].target
    for token in argv:
        option = BY_FLAG.get(token.split("=", 1)[0])
        if option is not None and option.target == target:
            return True
    return False


def env_arguments(env: Mapping[str, str], argv: list[str]) -> tuple[list[str], list[str]]:
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
            if not _given(argv, flag):
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
            if not _given(argv, flag) and (on or neg):
                out.append(flag if on else neg)
        elif name.startswith("LLAMA_ARG_"):
            warnings.append(f"environment variable {name} has no Sluice flag: ignored")
    return out, warnings
