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
from app.settings import KV_CACHE_TYPES, ConfigError, Settings
from app.toolformat import NAMES as TOOL_FORMATS


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


_KV_TYPES = tuple(KV_CACHE_TYPES)


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
