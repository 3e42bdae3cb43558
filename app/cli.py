"""Command line and config file into one frozen :class:`~app.settings.Settings`.

Flags follow llama.cpp's server where they exist. A JSON config file
(``--config``; goinfer-style keys such as ``models_dir`` and ``origins``) sets
the same options by their long names with ``_`` for ``-``; flags override it.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Mapping
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, NoReturn

from app.settings import KV_CACHE_TYPES, MODEL_FIELDS, ModelConfig, Settings
from app.toolformat import NAMES as TOOL_FORMATS


class ConfigError(Exception):
    """A bad flag value or config file: start-up ends with this one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m app", description="Sluice: serve a GGUF model over HTTP.")
    a = p.add_argument
    a("--config", type=Path, help="JSON config file (flags override it)")
    a("-m", "--model", dest="model_path", type=Path,
      help="GGUF model file, or an embedded model: gemma3-270m (Gemma 3 270M, a base model; "
      "the default) or smollm2-135m-instruct (SmolLM2 135M Instruct, a chat model)")
    a("--models-dir", type=Path, help="directory of GGUF models")
    a("--alias", help="name of the --model model, reported to clients and used to route to it")
    a("--tags", help="tags of the --model model, comma-separated: informational, listed by "
      "/v1/models (as llama.cpp's)")
    a("--models-max", type=int, help="models loaded at once (default 1); loading one more "
      "unloads the least recently used one that no request uses")
    a("--models-wait", dest="models_wait_s", type=float, help="seconds a request waits for "
      "room to load its model when every loaded model is busy, then 503 (default 60)")
    a("--sleep-idle-seconds", dest="sleep_idle_s", type=float, help="unload a model no "
      "request has used for this long; the next request loads it again (default: never)")
    a("--host", help="address to listen on (default 127.0.0.1)")
    a("--port", type=int, help="port (default 8080)")
    a("-c", "--ctx-size", type=int, help="KV cells shared by all slots (default 8192)")
    a("-np", "--parallel", type=int, help="slots decoded together (default 4)")
    a("-b", "--batch-size", type=int, help="tokens per decode call (default 512)")
    a("-ub", "--ubatch-size", type=int, help="physical micro-batch inside a decode call "
      "(default: the batch size; larger values are held to it, as llama.cpp does)")
    a("-cb", "--cont-batching", action="store_true", help="accepted: Sluice always batches "
      "continuously")
    a("-nocb", "--no-cont-batching", action="store_true", help="refused: Sluice always batches "
      "continuously")
    a("--swa-full", action="store_true", help="accepted: Sluice always keeps the full "
      "sliding-window cache (so a cached prefix can be reused)")
    a("--no-mmproj", "--no-mmproj-auto", dest="no_mmproj", action="store_true",
      help="accepted: Sluice loads no multimodal projector")
    a("--pooling", choices=["none", "mean", "cls", "last", "rank"],
      help="pooling of /embedding vectors: mean (the default), cls or last")
    a("-t", "--threads", type=int, help="threads for generation")
    a("-tb", "--threads-batch", type=int, help="threads for prompt processing")
    a("--poll", type=int, help="how long decode threads spin before sleeping, 0-100 (0: sleep "
      "at once, 100: spin without limit, as ggml does by itself; default 50): see the README's "
      "performance section")
    a("-ngl", "--n-gpu-layers", type=int, help="layers to offload to a GPU")
    a("-s", "--seed", type=int, help="default seed (-1: random per request)")
    a("-n", "--n-predict", type=int, help="default tokens to predict (-1: unlimited)")
    sampling = p.add_argument_group("default sampling (a request's own fields win)")
    s = sampling.add_argument
    s("--temp", dest="temperature", type=float, help="temperature (0.8; 0 = greedy)")
    s("--top-k", type=int, help="top-k (40; 0 = off)")
    s("--top-p", type=float, help="top-p (0.95; 1 = off)")
    s("--min-p", type=float, help="min-p (0.05; 0 = off)")
    s("--typical", dest="typical_p", type=float, help="locally typical sampling p (1 = off)")
    s("--repeat-penalty", type=float, help="repetition penalty (1 = off)")
    s("--repeat-last-n", type=int, help="tokens the penalties look back on (64; -1 = context)")
    s("--presence-penalty", type=float, help="presence penalty (0 = off)")
    s("--frequency-penalty", type=float, help="frequency penalty (0 = off)")
    s("--mirostat", type=int, choices=[0, 1, 2], help="Mirostat sampling, version 1 or 2 (0)")
    s("--mirostat-lr", dest="mirostat_eta", type=float, help="Mirostat learning rate (0.1)")
    s("--mirostat-ent", dest="mirostat_tau", type=float, help="Mirostat target entropy (5)")
    s("--ignore-eos", action="store_const", const=True, help="generate past end-of-generation")
    s("--dry-multiplier", type=float, help="DRY repetition penalty strength (0 = off)")
    s("--dry-base", type=float, help="DRY base (1.75)")
    s("--dry-allowed-length", type=int, help="DRY: repeats this long are free (2)")
    s("--dry-penalty-last-n", type=int, help="DRY: tokens looked back on (-1 = 4096)")
    s("--dry-sequence-breaker", dest="dry_sequence_breakers", action="append",
      help="DRY sequence breaker (repeatable; replaces the defaults \\n : \" *; 'none': no breakers)")
    s("--xtc-probability", type=float, help="XTC: chance of removing the top tokens (0 = off)")
    s("--xtc-threshold", type=float, help="XTC: tokens above this probability are removed (0.1)")
    s("--top-nsigma", "--top-n-sigma", dest="top_n_sigma", type=float,
      help="top-n-sigma (-1 = off)")
    s("--dynatemp-range", type=float, help="dynamic temperature range (0 = off)")
    s("--dynatemp-exp", dest="dynatemp_exponent", type=float,
      help="dynamic temperature exponent (1)")
    s("--samplers", help="sampler order, ';'-separated: penalties;top_k;typ_p;top_p;min_p;"
      "temperature (that order)")
    s("--grammar", help="GBNF grammar every request without a constraint of its own follows")
    s("--grammar-file", type=Path, help="file holding that grammar")
    s("-j", "--json-schema", help="JSON Schema (as JSON text) every request without a constraint "
      "of its own follows")
    s("-jf", "--json-schema-file", type=Path, help="file holding that JSON Schema")
    s("--schema-strict", dest="schema_strict", action="store_const", const=True,
      help="close the objects of every JSON Schema that declare properties but do not say "
      "additionalProperties (as a request's strict: true does), in either --schema-mode")
    s("--schema-mode", choices=["generation", "spec"],
      help="how a JSON Schema becomes a grammar when a request does not say (its "
      "schema_mode field): generation (the default) closes objects without "
      "additionalProperties, keeps declared order and bounds strings, so a model writes the "
      "object described; spec is the spec-faithful shape (open objects, small ones in any "
      "order, unbounded strings)")
    s("--schema-dry", dest="schema_dry", type=float, metavar="F",
      help="the loop guard: a request constrained by a JSON Schema or tools that sets no dry_* "
      "field samples with DRY at this multiplier (base 1.75, allowed length 2; default 0.8, "
      "0 = off). Small models otherwise repeat a value or the same array items until the "
      "token limit")
    a("-fa", "--flash-attn", nargs="?", const="on", choices=["on", "off", "auto"],
      help="flash attention: on, off (the default) or auto (llama.cpp decides for the device); "
      "-fa alone is on")
    types = list(_KV_TYPES)
    a("-ctk", "--cache-type-k", choices=types,
      help="KV cache type for K (default f16): " + ", ".join(types))
    a("-ctv", "--cache-type-v", choices=types,
      help="KV cache type for V (default f16); a quantized one needs -fa on or auto")
    a("-kvu", "--kv-unified", dest="kv_unified", action="store_const", const=True,
      help="one KV buffer shared by all slots (each slot still holds at most -c / -np cells)")
    a("-no-kvu", "--no-kv-unified", dest="kv_unified", action="store_const", const=False,
      help="a KV stream per slot (the default: measured ~20%% faster for a lone stream here)")
    a("--context-shift", dest="context_shift", action="store_const", const=True,
      help="when a slot's context is full, drop the oldest tokens after --keep and go on "
      "(llama.cpp's context shift); off by default: the reply ends, truncated")
    a("--no-context-shift", dest="context_shift", action="store_const", const=False,
      help="a full slot ends its reply, truncated (the default)")
    a("--cache-prompt", dest="cache_prompt", action="store_const", const=True,
      help="a request reuses the KV of a matching prompt prefix unless it says cache_prompt: "
      "false (the default)")
    a("--no-cache-prompt", dest="cache_prompt", action="store_const", const=False,
      help="requests evaluate their whole prompt unless they say cache_prompt: true")
    a("--cache-reuse", type=int, help="after the common prefix, reuse cached chunks of at least "
      "this many tokens by shifting them into place (llama.cpp's; 0: off, the default); a "
      "request's n_cache_reuse wins")
    a("--threads-http", type=int, help="worker threads for the blocking work of requests "
      "(tokenizing, templates, grammar compilation; default 40): the HTTP side itself is one "
      "Trio thread")
    a("--keep", type=int, help="prompt tokens a context shift keeps (default 0; -1: the whole "
      "prompt); a request's n_keep wins")
    a("--lora", dest="lora_files", action="append", type=Path, metavar="FNAME",
      help="LoRA adapter of the --model model, at scale 1 (repeatable)")
    a("--lora-scaled", dest="lora_scaled", action="append", nargs=2, metavar=("FNAME", "SCALE"),
      help="LoRA adapter at a scale (repeatable)")
    a("--lora-init-without-apply", action="store_true",
      help="load the adapters at scale 0: requests or POST /lora-adapters turn them on")
    a("--api-key", dest="api_keys", action="append", help="accepted API key (repeatable)")
    a("--api-key-file", type=Path, help="file with one API key per line")
    a("--ssl-key-file", type=Path, help="PEM private key: serve HTTPS (with --ssl-cert-file)")
    a("--ssl-cert-file", type=Path, help="PEM certificate (chain): serve HTTPS (with "
      "--ssl-key-file)")
    a("--sse-ping-interval", dest="queue_ping_interval_s", type=float, metavar="S",
      help="seconds between keep-alive comments (': ping') of a stream with nothing to send, "
      "queued or loading (default 5)")
    a("--api-prefix", help="serve every route under this path (e.g. /llama; no trailing /); "
      "other paths answer 404")
    a("--timeout", dest="request_timeout_s", type=float,
      help="seconds a request may run before it is ended")
    a("--send-timeout", dest="send_timeout_s", type=float,
      help="seconds a streaming client may go without taking data before it is treated as "
      "gone and its slot freed (default 30)")
    a("--shutdown-grace", dest="shutdown_grace_s", type=float,
      help="seconds running requests get to finish on SIGTERM (default 5)")
    a("--max-body-bytes", type=int, help="largest accepted request body (default 4 MiB)")
    a("--max-queue", type=int, help="requests that may wait beyond the busy slots; more get 503 "
      "with Retry-After (default 64)")
    a("--adapt-threads", choices=["on", "off"],
      help="on (default): decode with 1 thread while that is faster (a busy machine), back to "
      "-t when the machine is free again; off: always -t")
    a("--cache-ram", dest="cache_ram_mib", type=int,
      help="MiB of host memory for saved slot states (the prompt cache): a request whose prompt "
      "starts like a saved one evaluates only the rest; -1 no limit, 0 off (default 8192)")
    a("--max-ws", type=int, help="/ws token-feed connections at once (default 64)")
    a("--metrics", action="store_const", const=True, help="serve Prometheus metrics at /metrics")
    a("--embedding", "--embeddings", dest="embedding", action="store_const", const=True,
      help="serve /embedding and /v1/embeddings")
    a("--reranking", "--rerank", dest="reranking", action="store_const", const=True,
      help="serve /rerank and /v1/rerank with a reranking model (one whose GGUF declares rank "
      "pooling); other models end start-up with one line")
    a("--slots", dest="slots_endpoint", action="store_const", const=True,
      help="serve GET /slots (the default)")
    a("--no-slots", dest="slots_endpoint", action="store_const", const=False,
      help="GET /slots answers 501, as llama.cpp's")
    a("--props", dest="props_endpoint", action="store_const", const=True,
      help="accept POST /props (501 without it, as llama.cpp's)")
    a("--webui", "--ui", dest="webui", action="store_const", const=True,
      help="serve the web page (default)")
    a("--no-webui", "--no-ui", dest="webui", action="store_const", const=False,
      help="no web page: / and /web/ answer 404")
    a("--cors-origins", help="origins allowed by CORS, comma-separated; * for any, localhost for "
      "any localhost origin (default: none; llama.cpp's is *)")
    a("--cors-methods", help="methods a CORS preflight allows, comma-separated (default: GET, "
      "POST, OPTIONS)")
    a("--cors-headers", help="request headers a CORS preflight allows, comma-separated "
      "(default: Authorization, Content-Type, X-Api-Key)")
    a("--cors-credentials", action="store_const", const=True,
      help="answer allowed origins with Access-Control-Allow-Credentials: true (llama.cpp "
      "always does; Sluice uses no cookies, so only a proxy's cookies would need it)")
    a("--offline", action="store_true",
      help="accepted for llama.cpp's command lines: Sluice never downloads anything")
    a("--no-ws", dest="websocket", action="store_const", const=False,
      help="disable goinfer's /ws token feed")
    a("--slot-save-path", type=Path, help="directory where slots can be saved and restored")
    a("--chat-template", help="built-in chat template: chatml, gemma, llama-2, llama-3, mistral, "
      "phi-3, vicuna_v1.1, zephyr (default: the model's own, else one for its architecture)")
    a("--chat-template-file", type=Path, help="Jinja chat template file")
    a("--jinja", dest="jinja", action="store_const", const=True,
      help="run Jinja chat templates: the model's, --chat-template-file's (the default)")
    a("--no-jinja", dest="jinja", action="store_const", const=False,
      help="use the built-in template the model's looks like instead (as llama.cpp); tools are "
      "refused")
    a("-rea", "--reasoning", choices=["on", "off", "auto"],
      help="thinking in chats: on or auto (the default) give chat templates enable_thinking "
      "true, off gives them false (as llama.cpp); a request's chat_template_kwargs win")
    a("--reasoning-budget", type=int, help="-1: thinking unlimited (the default); 0: no "
      "thinking (templates get enable_thinking false)")
    a("--chat-template-kwargs", help="a JSON object of more variables for the chat template, "
      "such as '{\"enable_thinking\": false}'; a request's own chat_template_kwargs win")
    a("--system-prompt", help="system prompt for chats that bring none")
    a("--system-prompt-file", type=Path, help="file holding the system prompt")
    a("--reasoning-format", choices=["none", "deepseek", "auto"],
      help="deepseek (or auto, the default): a reply's <think> block becomes reasoning_content, "
      "Anthropic thinking blocks and Responses reasoning items; none: it stays in the text")
    a("--tool-call-format", choices=["auto", *TOOL_FORMATS],
      help="how the model writes tool calls: auto (the default) reads it from the chat "
      "template, else Hermes'; or one of the formats by name (the README's table)")
    a("-v", "--verbose", action="store_const", const=True, help="log requests and llama.cpp")
    a("--assemble-model", action="store_true",
      help="write the embedded default model to the cache and exit")
    return p


_FIELDS = {f.name for f in fields(Settings)}
_CONFIG_ALIASES = {"model": "model_path", "api_key": "api_keys", "timeout": "request_timeout_s",
                   "ctx": "ctx_size", "n_parallel": "parallel", "shutdown_grace": "shutdown_grace_s"}


def _coerce(name: str, value: Any, default: Any) -> Any:
    if name in ("model_path", "models_dir", "chat_template_file", "slot_save_path"):
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
    if (isinstance(default, int) and not isinstance(default, bool)) or name in (
            "threads", "threads_batch"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config value '{name}' must be an integer")
        return value
    if isinstance(default, float) or name == "request_timeout_s":
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


def _from_file(path: Path) -> dict[str, Any]:
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
        if name not in _FIELDS:
            raise ConfigError(f"unknown config key '{key}' in {path}")
        out[name] = _coerce(name, value, getattr(defaults, name))
    return out


_KV_TYPES = tuple(KV_CACHE_TYPES)


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


def _check(s: Settings) -> None:
    checks = [
        (1 <= s.port <= 65535 or s.port == 0, "--port must be 0..65535"),
        (bool(s.binds), "--host needs an address"),
        (s.parallel >= 1, "--parallel must be at least 1"),
        (s.ctx_size >= 16 * s.parallel, "--ctx-size must give each slot at least 16 tokens"),
        (s.batch_size >= 1, "--batch-size must be at least 1"),
        # as with -b: fewer rows than slots in a micro-batch is not safe to hand llama.cpp
        (s.ubatch_size is None or s.ubatch_size >= s.parallel,
         "--ubatch-size must be at least --parallel"),
        (s.pooling in ("mean", "cls", "last"), f"--pooling {s.pooling}: Sluice serves pooled "
         "embeddings (mean, cls or last); per-token vectors (none) and reranking (rank) are "
         "not served"),
        # llama_decode reserves one output row per sequence: fewer rows than slots aborts it
        (s.batch_size >= s.parallel, "--batch-size must be at least --parallel"),
        (s.parallel <= 256, "--parallel must be at most 256"),
        (s.ctx_size <= 1 << 22, "--ctx-size must be at most 4194304"),
        (s.batch_size <= 1 << 16, "--batch-size must be at most 65536"),
        (s.max_queue >= 0, "--max-queue must not be negative"),
        (0 <= s.poll <= 100, "--poll must be 0..100"),
        (s.flash_attn in ("on", "off", "auto"), "--flash-attn must be on, off or auto"),
        (s.cache_type_k in _KV_TYPES and s.cache_type_v in _KV_TYPES,
         f"the KV cache types are {', '.join(_KV_TYPES)}"),
        (s.cache_type_v in ("f32", "f16", "bf16") or s.flash_attn != "off",
         f"-ctv {s.cache_type_v}: a quantized V cache needs flash attention (-fa on or auto)"),
        (s.reasoning_format in ("none", "deepseek", "auto"),
         "--reasoning-format must be none, deepseek or auto"),
        (s.tool_call_format in ("auto", *TOOL_FORMATS),
         f"--tool-call-format must be auto or one of {', '.join(TOOL_FORMATS)}"),
        (s.max_ws >= 0, "--max-ws must not be negative"),
        (math.isfinite(s.schema_dry) and 0 <= s.schema_dry <= 100, "--schema-dry must be 0..100"),
        (s.cache_ram_mib >= -1, "--cache-ram must be -1 (no limit), 0 (off) or a size in MiB"),
        (s.threads is None or s.threads >= 1, "--threads must be at least 1"),
        (s.threads_batch is None or s.threads_batch >= 1, "--threads-batch must be at least 1"),
        (s.n_predict >= -1, "--n-predict must be -1 or more"),
        (-1 <= s.keep <= 1 << 20, "--keep must be -1..1048576"),
        (0 <= s.cache_reuse <= 1 << 20, "--cache-reuse must be 0..1048576"),
        (s.reasoning_budget in (-1, 0), "--reasoning-budget: Sluice supports -1 (unlimited) and "
         "0 (no thinking)"),
        (s.threads_http is None or 1 <= s.threads_http <= 1024, "--threads-http must be 1..1024"),
        (s.seed >= -1, "--seed must be -1 or more"),
        (s.request_timeout_s is None or s.request_timeout_s > 0, "--timeout must be positive"),
        (s.shutdown_grace_s >= 0, "--shutdown-grace must not be negative"),
        (s.send_timeout_s > 0, "--send-timeout must be positive"),
        (math.isfinite(s.queue_ping_interval_s) and 0.1 <= s.queue_ping_interval_s <= 3600,
         "--sse-ping-interval must be 0.1..3600 seconds"),
        (s.max_body_bytes >= 1024, "--max-body-bytes must be at least 1024"),
        (1 <= s.models_max <= 64, "--models-max must be 1..64"),
        (0 < s.models_wait_s <= 86400, "--models-wait must be more than 0 and at most 86400"),
        (s.sleep_idle_s is None or 0 <= s.sleep_idle_s <= 1e7,
         "--sleep-idle-seconds must be 0..10000000"),
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


#: --flag dest -> (type, low, high) of the default sampling flags (bounds as the request schema's)
_SAMPLING_FLAGS: dict[str, tuple[type, float, float]] = {
    "temperature": (float, 0, 100), "top_k": (int, 0, 1_000_000), "top_p": (float, 0, 1),
    "min_p": (float, 0, 1), "typical_p": (float, 0, 1), "repeat_penalty": (float, 0, 100),
    "repeat_last_n": (int, -1, 1 << 20), "presence_penalty": (float, -100, 100),
    "frequency_penalty": (float, -100, 100), "mirostat": (int, 0, 2),
    "mirostat_eta": (float, 0, 1), "mirostat_tau": (float, 0, 100),
    "dry_multiplier": (float, 0, 100), "dry_base": (float, 0, 100),
    "dry_allowed_length": (int, 0, 4096), "dry_penalty_last_n": (int, -1, 65536),
    "xtc_probability": (float, 0, 1), "xtc_threshold": (float, 0, 1),
    "top_n_sigma": (float, -1, 100), "dynatemp_range": (float, 0, 100),
    "dynatemp_exponent": (float, 0, 100)}


def _sampling_defaults(args: argparse.Namespace) -> tuple[tuple[str, object], ...]:
    """The default sampling flags given, checked (finite, in range)."""
    from app.completion import KNOWN_SAMPLERS

    out: list[tuple[str, object]] = []
    for name, (_kind, low, high) in _SAMPLING_FLAGS.items():
        value = getattr(args, name)
        if value is None:
            continue
        if not math.isfinite(value) or not low <= value <= high:
            flag = "--" + {"temperature": "temp", "typical_p": "typical",
                           "mirostat_eta": "mirostat-lr", "mirostat_tau": "mirostat-ent",
                           "top_n_sigma": "top-nsigma", "dynatemp_exponent": "dynatemp-exp"
                           }.get(name, name.replace("_", "-"))
            raise ConfigError(f"{flag} must be a number from {low:g} to {high:g}")
        out.append((name, value))
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
    extra, warnings = env_arguments(parser, env or {}, argv)
    args = parser.parse_args([*extra, *argv])
    args.env_warnings = warnings
    values: dict[str, Any] = {}
    if args.config is not None:
        values.update(_from_file(args.config))
    for name, value in vars(args).items():
        if name in _FIELDS and value is not None:
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
    _check(settings)
    return settings, args


def embedded_model(settings: Settings) -> Path | None:
    """``--model`` naming an embedded model by its alias (and no file of that name exists)."""
    from app.engine.model import EMBEDDED

    name = str(settings.model_path) if settings.model_path is not None else ""
    if name not in EMBEDDED or settings.model_path is None or settings.model_path.exists() or (
            settings.models_dir is not None and (settings.models_dir / name).exists()):
        return None
    return EMBEDDED[name]()


def resolve_model_path(settings: Settings) -> Path | None:
    """``--model`` as given, or, when it names no file, a file of that name in ``--models-dir``."""
    path = settings.model_path
    if path is None or path.exists() or settings.models_dir is None or path.is_absolute():
        return path
    candidate = settings.models_dir / path
    # the name must be a plain file name in the folder (the file itself may be a symlink)
    if len(path.parts) != 1 or path.name in (".", ".."):
        raise ConfigError(f"model name {str(path)!r} must be a file name inside --models-dir")
    return candidate


#: glibc's M_MMAP_THRESHOLD; and the fixed threshold the server sets
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 128 * 1024


def fix_malloc_threshold() -> bool:
    """Keep large allocations in their own mappings, returned to the OS when freed.

    glibc raises its mmap threshold each time a large mapped block is freed, after which
    blocks of that size (the samplers' per-token arrays of a 262k vocabulary are 1-3 MB)
    come from the heap, whose freed memory it keeps. Measured with schema-constrained
    traffic: RSS rose from 552 to ~790 MiB and stayed there with the default; with the
    threshold fixed at 128 KiB it stayed at 587 MiB. Returns whether it could be set.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False  # not glibc
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


#: GOMP_SPINCOUNT per --poll step: --poll 50 spins 200,000 times before sleeping
SPINS_PER_POLL = 4000


def apply_poll(poll: int, env: dict[str, str] | Any) -> str:
    """Set OpenMP's wait policy for the decode threads; must run before llama.cpp loads.

    ggml asks for ``OMP_WAIT_POLICY=active`` when none is set, and an active wait spins
    without limit: beside one busy process, decoding on 2 cores fell 50-fold (ENGINE_NOTES).
    ``--poll`` bounds the spin as llama.cpp's flag of that name bounds its threadpool's:
    0 is ``PASSIVE``, 100 is ``ACTIVE`` (what ggml picks by itself), between them
    ``GOMP_SPINCOUNT = poll * 4000``; the default, 50, lets an idle decode thread sleep, which
    ``--adapt-threads`` needs (see the README's "A busy machine" and bench/contention.py).
    Variables the user set win. Returns what was set.
    """
    if "OMP_WAIT_POLICY" in env or "GOMP_SPINCOUNT" in env:
        return "OMP_WAIT_POLICY/GOMP_SPINCOUNT from the environment"
    if poll <= 0:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
        return "OMP_WAIT_POLICY=PASSIVE"
    if poll >= 100:
        env["OMP_WAIT_POLICY"] = "ACTIVE"
        return "OMP_WAIT_POLICY=ACTIVE"
    env["GOMP_SPINCOUNT"] = str(poll * SPINS_PER_POLL)
    return f"GOMP_SPINCOUNT={env['GOMP_SPINCOUNT']}"


def main(argv: list[str] | None = None) -> int:
    import logging
    import os

    import trio

    fix_malloc_threshold()
    try:
        settings, args = load_settings(sys.argv[1:] if argv is None else argv, os.environ)
    except ConfigError as exc:
        print(f"sluice: error: {exc}", file=sys.stderr)
        return 2
    for warning in args.env_warnings:
        print(f"sluice: warning: {warning}", file=sys.stderr)
    apply_poll(settings.poll, os.environ)  # before llama.cpp (and its OpenMP) loads

    from app.engine.model import EMBEDDED, Model, ModelLoadError
    from app.registry import specs_from_settings
    from app.runtime import chat_template_for
    from app.server import build_registry, serve

    try:
        if args.assemble_model:
            for make in EMBEDDED.values():
                print(make())
            return 0
        if settings.model_path is not None and embedded_model(settings) is None:
            settings = replace(settings, model_path=resolve_model_path(settings))
        specs, default, router = specs_from_settings(settings, embedded_paths())
        preloaded = None
        registry = build_registry(settings, specs, default, router)
        hosted = registry.default_hosted
        if hosted is not None:
            model_settings = hosted.spec.settings(settings)
            model = Model(hosted.spec.path, n_gpu_layers=model_settings.n_gpu_layers,
                          verbose=settings.verbose)
            try:
                preloaded = (model, chat_template_for(model_settings, model))
            except (ValueError, OSError) as exc:
                model.close()
                raise ConfigError(str(exc)) from None
    except (ConfigError, ModelLoadError) as exc:
        print(f"sluice: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO if settings.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cells = (f"sharing {settings.ctx_size} tokens" if settings.kv_unified
             else f"x {settings.slot_ctx} tokens")
    what = (f"{hosted.name} ({settings.parallel} slots {cells})"
            if hosted is not None else "no model loaded yet")
    scheme = "https" if settings.ssl_cert_file is not None else "http"
    where = ", ".join(b if b.startswith("unix:") else f"{scheme}://{b}{settings.api_prefix}"
                      for b in settings.binds)
    print(f"sluice: serving {what} on {where}; "
          f"{len(specs)} models known (--models-max {settings.models_max})",
          file=sys.stderr, flush=True)
    from app.engine.context import ContextError
    from app.engine.lora import LoraError
    from app.engine.rerank import RerankError

    try:
        trio.run(serve, settings, registry, preloaded)
    except (ContextError, LoraError, RerankError) as exc:
        print(f"sluice: error: {exc}", file=sys.stderr)
        return 2
    return 0


def embedded_paths() -> dict[str, Path]:
    """The embedded models that are installed, by short name (assembled on first use)."""
    from app.engine.model import EMBEDDED, ModelLoadError

    out = {}
    for name, make in EMBEDDED.items():
        try:
            out[name] = make()
        except (ModelLoadError, ImportError, OSError):
            continue
    return out
