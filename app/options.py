"""Every command-line option in one table: its flags, where its value goes, its type and
bounds, llama.cpp's environment variable for it, the other names a config file may give it,
and its help. The parser (:func:`add_all`), the environment mapping
(:mod:`app.llama_env`), config-file coercion (:mod:`app.config_file`), the range checks
(:func:`check_bounds`) and the README's flag table test all read this table, so a flag is
written once.

Cross-option rules (``--ctx-size`` against ``--parallel``, files that must exist, TLS
pairs...) are :mod:`app.checks`'.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from app.settings import KV_CACHE_TYPES, ConfigError
from app.toolformat import NAMES as TOOL_FORMATS

KV_TYPES = tuple(KV_CACHE_TYPES)


@dataclass(frozen=True, slots=True)
class Option:
    """One option. ``action``: ``store`` a value (of ``kind``), ``true`` (a flag),
    ``const`` (store ``const``; two options with one ``dest`` make an on/off pair), or
    ``append`` (repeatable)."""

    flags: tuple[str, ...]
    help: str
    dest: str = ""  # argparse's: by default the first long flag's name
    kind: type | None = None  # the value's type; None: text
    action: Literal["store", "true", "const", "append"] = "store"
    const: Any = True
    choices: tuple[Any, ...] | None = None
    nargs: str | int | None = None
    metavar: str | tuple[str, ...] | None = None
    #: inclusive bounds of the value (a Settings field's, or a sampling default's)
    low: float | None = None
    high: float | None = None
    #: a default sampling field (Settings.sampling): a request's own value wins
    sampling: bool = False
    env: str = ""  # llama.cpp's environment variable
    env_negation: str = ""  # an on/off pair's other flag, which LLAMA_ARG_NO_<X> gives
    config: tuple[str, ...] = ()  # other names the config file may use for it
    group: Literal["", "sampling"] = ""  # the help section

    @property
    def name(self) -> str:
        """The flag messages name: the first long one."""
        return next(f for f in self.flags if f.startswith("--"))

    @property
    def target(self) -> str:
        return self.dest or self.name[2:].replace("-", "_")

    def add_to(self, parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
        kw: dict[str, Any] = {"help": self.help}
        if self.dest:
            kw["dest"] = self.dest
        if self.action == "true":
            kw["action"] = "store_true"
        elif self.action == "const":
            kw.update(action="store_const", const=self.const)
        else:
            if self.action == "append":
                kw["action"] = "append"
            if self.kind is not None:
                kw["type"] = self.kind
            if self.nargs is not None:
                kw["nargs"] = self.nargs
            if self.nargs == "?":
                kw["const"] = self.const
        if self.choices is not None:
            kw["choices"] = list(self.choices)
        if self.metavar is not None:
            kw["metavar"] = self.metavar
        parser.add_argument(*self.flags, **kw)

    def check(self, value: Any) -> None:
        """Refuse a value outside the bounds (NaN and infinities too, for a float)."""
        if (self.low is None and self.high is None) or value is None or isinstance(value, bool):
            return
        low = -math.inf if self.low is None else self.low
        high = math.inf if self.high is None else self.high
        if not (isinstance(value, int | float) and math.isfinite(value) and low <= value <= high):
            lo, hi = _number(low), _number(high)
            if self.high is None:
                what = "must not be negative" if low == 0 else f"must be at least {lo}"
            elif self.kind is float:
                what = f"must be a number from {lo} to {hi}"
            else:
                what = f"must be {lo}..{hi}"
            raise ConfigError(f"{self.name} {what}")


def _number(x: float) -> str:
    return str(int(x)) if math.isfinite(x) and x == int(x) else f"{x:g}"


OPTIONS: tuple[Option, ...] = (
    Option(("--config",), kind=Path, help="JSON config file (flags override it)"),
    Option(("-m", "--model"), dest="model_path", kind=Path, env="LLAMA_ARG_MODEL", config=("model",),
           help="GGUF model file, or an embedded model: gemma3-270m (Gemma 3 270M, a base model; the "
                "default) or smollm2-135m-instruct (SmolLM2 135M Instruct, a chat model)"),
    Option(("--models-dir",), kind=Path, env="LLAMA_ARG_MODELS_DIR", help="directory of GGUF models"),
    Option(("--alias",), env="LLAMA_ARG_ALIAS",
           help="name of the --model model, reported to clients and used to route to it"),
    Option(("--tags",), env="LLAMA_ARG_TAGS",
           help="tags of the --model model, comma-separated: informational, listed by /v1/models (as "
                "llama.cpp's)"),
    Option(("--models-max",), kind=int, low=1, high=64, env="LLAMA_ARG_MODELS_MAX",
           help="models loaded at once (default 1); loading one more unloads the least recently used "
                "one that no request uses"),
    Option(("--models-wait",), dest="models_wait_s", kind=float,
           help="seconds a request waits for room to load its model when every loaded model is busy, "
                "then 503 (default 60)"),
    Option(("--sleep-idle-seconds",), dest="sleep_idle_s", kind=float, low=0, high=10000000.0,
           help="unload a model no request has used for this long; the next request loads it again "
                "(default: never)"),
    Option(("--host",), env="LLAMA_ARG_HOST", help="address to listen on (default 127.0.0.1)"),
    Option(("--port",), kind=int, low=0, high=65535, env="LLAMA_ARG_PORT", help="port (default 8080)"),
    Option(("-c", "--ctx-size"), kind=int, env="LLAMA_ARG_CTX_SIZE", config=("ctx",),
           help="KV cells shared by all slots (default 8192)"),
    Option(("-np", "--parallel"), kind=int,
           low=1, high=256, env="LLAMA_ARG_N_PARALLEL", config=("n_parallel",),
           help="slots decoded together (default 4)"),
    Option(("-b", "--batch-size"), kind=int, low=1, high=1 << 16, env="LLAMA_ARG_BATCH",
           help="tokens per decode call (default 512)"),
    Option(("-ub", "--ubatch-size"), kind=int, env="LLAMA_ARG_UBATCH",
           help="physical micro-batch inside a decode call (default: the batch size; larger values are "
                "held to it, as llama.cpp does)"),
    Option(("-cb", "--cont-batching"), action="true",
           env="LLAMA_ARG_CONT_BATCHING", env_negation="--no-cont-batching",
           help="accepted: Sluice always batches continuously"),
    Option(("-nocb", "--no-cont-batching"), action="true",
           help="refused: Sluice always batches continuously"),
    Option(("--swa-full",), action="true", env="LLAMA_ARG_SWA_FULL",
           help="accepted: Sluice always keeps the full sliding-window cache (so a cached prefix can be"
                " reused)"),
    Option(("--no-mmproj", "--no-mmproj-auto"), action="true",
           help="accepted: Sluice loads no multimodal projector"),
    Option(("--pooling",), choices=("none", "mean", "cls", "last", "rank"), env="LLAMA_ARG_POOLING",
           help="pooling of /embedding vectors: mean (the default), cls or last"),
    Option(("-t", "--threads"), kind=int, low=1, env="LLAMA_ARG_THREADS", help="threads for generation"),
    Option(("-tb", "--threads-batch"), kind=int, low=1, help="threads for prompt processing"),
    Option(("--poll",), kind=int, low=0, high=100,
           help="how long decode threads spin before sleeping, 0-100 (0: sleep at once, 100: spin "
                "without limit, as ggml does by itself; default 50): see the README's performance "
                "section"),
    Option(("-ngl", "--n-gpu-layers"), kind=int, env="LLAMA_ARG_N_GPU_LAYERS",
           help="layers to offload to a GPU"),
    Option(("-s", "--seed"), kind=int, low=-1, help="default seed (-1: random per request)"),
    Option(("-n", "--n-predict"), kind=int, low=-1, env="LLAMA_ARG_N_PREDICT",
           help="default tokens to predict (-1: unlimited)"),
    Option(("--temp",), dest="temperature",
           kind=float, low=0, high=100, sampling=True, env="LLAMA_ARG_TEMPERATURE", group="sampling",
           help="temperature (0.8; 0 = greedy)"),
    Option(("--top-k",), kind=int,
           low=0, high=1000000, sampling=True, env="LLAMA_ARG_TOP_K", group="sampling",
           help="top-k (40; 0 = off)"),
    Option(("--top-p",), kind=float, low=0, high=1, sampling=True, env="LLAMA_ARG_TOP_P", group="sampling",
           help="top-p (0.95; 1 = off)"),
    Option(("--min-p",), kind=float, low=0, high=1, sampling=True, env="LLAMA_ARG_MIN_P", group="sampling",
           help="min-p (0.05; 0 = off)"),
    Option(("--typical",), dest="typical_p", kind=float, low=0, high=1, sampling=True, group="sampling",
           help="locally typical sampling p (1 = off)"),
    Option(("--repeat-penalty",), kind=float,
           low=0, high=100, sampling=True, env="LLAMA_ARG_REPEAT_PENALTY", group="sampling",
           help="repetition penalty (1 = off)"),
    Option(("--repeat-last-n",), kind=int, low=-1, high=1 << 20, sampling=True, group="sampling",
           help="tokens the penalties look back on (64; -1 = context)"),
    Option(("--presence-penalty",), kind=float,
           low=-100, high=100, sampling=True, env="LLAMA_ARG_PRESENCE_PENALTY", group="sampling",
           help="presence penalty (0 = off)"),
    Option(("--frequency-penalty",), kind=float,
           low=-100, high=100, sampling=True, env="LLAMA_ARG_FREQUENCY_PENALTY", group="sampling",
           help="frequency penalty (0 = off)"),
    Option(("--mirostat",), kind=int, choices=(0, 1, 2), low=0, high=2, sampling=True, group="sampling",
           help="Mirostat sampling, version 1 or 2 (0)"),
    Option(("--mirostat-lr",), dest="mirostat_eta",
           kind=float, low=0, high=1, sampling=True, group="sampling",
           help="Mirostat learning rate (0.1)"),
    Option(("--mirostat-ent",), dest="mirostat_tau",
           kind=float, low=0, high=100, sampling=True, group="sampling",
           help="Mirostat target entropy (5)"),
    Option(("--ignore-eos",), action="const", group="sampling", help="generate past end-of-generation"),
    Option(("--dry-multiplier",), kind=float, low=0, high=100, sampling=True, group="sampling",
           help="DRY repetition penalty strength (0 = off)"),
    Option(("--dry-base",), kind=float, low=0, high=100, sampling=True, group="sampling",
           help="DRY base (1.75)"),
    Option(("--dry-allowed-length",), kind=int, low=0, high=4096, sampling=True, group="sampling",
           help="DRY: repeats this long are free (2)"),
    Option(("--dry-penalty-last-n",), kind=int, low=-1, high=1 << 16, sampling=True, group="sampling",
           help="DRY: tokens looked back on (-1 = 4096)"),
    Option(("--dry-sequence-breaker",), dest="dry_sequence_breakers", action="append", group="sampling",
           help="DRY sequence breaker (repeatable; replaces the defaults \\n : \" *; 'none': no breakers)"),
    Option(("--xtc-probability",), kind=float, low=0, high=1, sampling=True, group="sampling",
           help="XTC: chance of removing the top tokens (0 = off)"),
    Option(("--xtc-threshold",), kind=float, low=0, high=1, sampling=True, group="sampling",
           help="XTC: tokens above this probability are removed (0.1)"),
    Option(("--top-nsigma", "--top-n-sigma"), dest="top_n_sigma",
           kind=float, low=-1, high=100, sampling=True, group="sampling",
           help="top-n-sigma (-1 = off)"),
    Option(("--dynatemp-range",), kind=float, low=0, high=100, sampling=True, group="sampling",
           help="dynamic temperature range (0 = off)"),
    Option(("--dynatemp-exp",), dest="dynatemp_exponent",
           kind=float, low=0, high=100, sampling=True, group="sampling",
           help="dynamic temperature exponent (1)"),
    Option(("--samplers",), group="sampling",
           help="sampler order, ';'-separated: penalties;top_k;typ_p;top_p;min_p;temperature (that "
                "order)"),
    Option(("--grammar",), group="sampling",
           help="GBNF grammar every request without a constraint of its own follows"),
    Option(("--grammar-file",), kind=Path, group="sampling", help="file holding that grammar"),
    Option(("-j", "--json-schema"), group="sampling",
           help="JSON Schema (as JSON text) every request without a constraint of its own follows"),
    Option(("-jf", "--json-schema-file"), kind=Path, group="sampling",
           help="file holding that JSON Schema"),
    Option(("--schema-strict",), action="const", group="sampling",
           help="close the objects of every JSON Schema that declare properties but do not say "
                "additionalProperties (as a request's strict: true does), in either --schema-mode"),
    Option(("--schema-mode",), choices=("generation", "spec"), group="sampling",
           help="how a JSON Schema becomes a grammar when a request does not say (its schema_mode "
                "field): generation (the default) closes objects without additionalProperties, keeps "
                "declared order and bounds strings, so a model writes the object described; spec is the"
                " spec-faithful shape (open objects, small ones in any order, unbounded strings)"),
    Option(("--schema-dry",), kind=float, metavar="F", low=0, high=100, group="sampling",
           help="the loop guard: a request constrained by a JSON Schema or tools that sets no dry_* "
                "field samples with DRY at this multiplier (base 1.75, allowed length 2; default 0.8, 0"
                " = off). Small models otherwise repeat a value or the same array items until the token"
                " limit"),
    Option(("-fa", "--flash-attn"), choices=("on", "off", "auto"),
           nargs="?", const="on", env="LLAMA_ARG_FLASH_ATTN",
           help="flash attention: on, off (the default) or auto (llama.cpp decides for the device); -fa"
                " alone is on"),
    Option(("-ctk", "--cache-type-k"), choices=KV_TYPES,
           env="LLAMA_ARG_CACHE_TYPE_K",
           help="KV cache type for K (default f16): f32, f16, bf16, q8_0, q4_0, q4_1, iq4_nl, q5_0, "
                "q5_1"),
    Option(("-ctv", "--cache-type-v"), choices=KV_TYPES,
           env="LLAMA_ARG_CACHE_TYPE_V",
           help="KV cache type for V (default f16); a quantized one needs -fa on or auto"),
    Option(("-kvu", "--kv-unified"), action="const",
           env="LLAMA_ARG_KV_UNIFIED", env_negation="--no-kv-unified",
           help="one KV buffer shared by all slots (each slot still holds at most -c / -np cells)"),
    Option(("-no-kvu", "--no-kv-unified"), dest="kv_unified", action="const", const=False,
           help="a KV stream per slot (the default: measured ~20%% faster for a lone stream here)"),
    Option(("--context-shift",), action="const",
           env="LLAMA_ARG_CONTEXT_SHIFT", env_negation="--no-context-shift",
           help="when a slot's context is full, drop the oldest tokens after --keep and go on "
                "(llama.cpp's context shift); off by default: the reply ends, truncated"),
    Option(("--no-context-shift",), dest="context_shift", action="const", const=False,
           help="a full slot ends its reply, truncated (the default)"),
    Option(("--cache-prompt",), action="const",
           env="LLAMA_ARG_CACHE_PROMPT", env_negation="--no-cache-prompt",
           help="a request reuses the KV of a matching prompt prefix unless it says cache_prompt: false"
                " (the default)"),
    Option(("--no-cache-prompt",), dest="cache_prompt", action="const", const=False,
           help="requests evaluate their whole prompt unless they say cache_prompt: true"),
    Option(("--cache-reuse",), kind=int, low=0, high=1 << 20, env="LLAMA_ARG_CACHE_REUSE",
           help="after the common prefix, reuse cached chunks of at least this many tokens by shifting "
                "them into place (llama.cpp's; 0: off, the default); a request's n_cache_reuse wins"),
    Option(("--threads-http",), kind=int, low=1, high=1024, env="LLAMA_ARG_THREADS_HTTP",
           help="worker threads for the blocking work of requests (tokenizing, templates, grammar "
                "compilation; default 40): the HTTP side itself is one Trio thread"),
    Option(("--keep",), kind=int, low=-1, high=1 << 20,
           help="prompt tokens a context shift keeps (default 0; -1: the whole prompt); a request's "
                "n_keep wins"),
    Option(("--lora",), dest="lora_files", action="append", kind=Path, metavar="FNAME",
           help="LoRA adapter of the --model model, at scale 1 (repeatable)"),
    Option(("--lora-scaled",), action="append", nargs=2, metavar=("FNAME", "SCALE"),
           help="LoRA adapter at a scale (repeatable)"),
    Option(("--lora-init-without-apply",), action="true",
           help="load the adapters at scale 0: requests or POST /lora-adapters turn them on"),
    Option(("--api-key",), dest="api_keys", action="append", env="LLAMA_API_KEY", config=("api_key",),
           help="accepted API key (repeatable)"),
    Option(("--api-key-file",), kind=Path, env="LLAMA_ARG_API_KEY_FILE",
           help="file with one API key per line"),
    Option(("--ssl-key-file",), kind=Path, env="LLAMA_ARG_SSL_KEY_FILE",
           help="PEM private key: serve HTTPS (with --ssl-cert-file)"),
    Option(("--ssl-cert-file",), kind=Path, env="LLAMA_ARG_SSL_CERT_FILE",
           help="PEM certificate (chain): serve HTTPS (with --ssl-key-file)"),
    Option(("--sse-ping-interval",), dest="queue_ping_interval_s",
           kind=float, metavar="S", low=0.1, high=3600,
           help="seconds between keep-alive comments (': ping') of a stream with nothing to send, "
                "queued or loading (default 5)"),
    Option(("--api-prefix",), env="LLAMA_ARG_API_PREFIX",
           help="serve every route under this path (e.g. /llama; no trailing /); other paths answer 404"),
    Option(("--timeout",), dest="request_timeout_s",
           kind=float, env="LLAMA_ARG_TIMEOUT", config=("timeout",),
           help="seconds a request may run before it is ended"),
    Option(("--send-timeout",), dest="send_timeout_s", kind=float,
           help="seconds a streaming client may go without taking data before it is treated as gone and"
                " its slot freed (default 30)"),
    Option(("--shutdown-grace",), dest="shutdown_grace_s", kind=float, low=0, config=("shutdown_grace",),
           help="seconds running requests get to finish on SIGTERM (default 5)"),
    Option(("--max-body-bytes",), kind=int, low=1024, help="largest accepted request body (default 4 MiB)"),
    Option(("--max-queue",), kind=int, low=0,
           help="requests that may wait beyond the busy slots; more get 503 with Retry-After (default "
                "64)"),
    Option(("--adapt-threads",), choices=("on", "off"),
           help="on (default): decode with 1 thread while that is faster (a busy machine), back to -t "
                "when the machine is free again; off: always -t"),
    Option(("--cache-ram",), dest="cache_ram_mib", kind=int, env="LLAMA_ARG_CACHE_RAM",
           help="MiB of host memory for saved slot states (the prompt cache): a request whose prompt "
                "starts like a saved one evaluates only the rest; -1 no limit, 0 off (default 8192)"),
    Option(("--max-ws",), kind=int, low=0, help="/ws token-feed connections at once (default 64)"),
    Option(("--metrics",), action="const", env="LLAMA_ARG_ENDPOINT_METRICS",
           help="serve Prometheus metrics at /metrics"),
    Option(("--embedding", "--embeddings"), action="const", env="LLAMA_ARG_EMBEDDINGS",
           help="serve /embedding and /v1/embeddings"),
    Option(("--reranking", "--rerank"), action="const", env="LLAMA_ARG_RERANKING",
           help="serve /rerank and /v1/rerank with a reranking model (one whose GGUF declares rank "
                "pooling); other models end start-up with one line"),
    Option(("--slots",), dest="slots_endpoint",
           action="const", env="LLAMA_ARG_ENDPOINT_SLOTS", env_negation="--no-slots",
           help="serve GET /slots (the default)"),
    Option(("--no-slots",), dest="slots_endpoint", action="const", const=False,
           help="GET /slots answers 501, as llama.cpp's"),
    Option(("--props",), dest="props_endpoint", action="const", env="LLAMA_ARG_ENDPOINT_PROPS",
           help="accept POST /props (501 without it, as llama.cpp's)"),
    Option(("--webui", "--ui"), action="const", env="LLAMA_ARG_UI", env_negation="--no-webui",
           help="serve the web page (default)"),
    Option(("--no-webui", "--no-ui"), dest="webui", action="const", const=False,
           help="no web page: / and /web/ answer 404"),
    Option(("--cors-origins",), env="LLAMA_ARG_CORS_ORIGINS",
           help="origins allowed by CORS, comma-separated; * for any, localhost for any localhost "
                "origin (default: none; llama.cpp's is *)"),
    Option(("--cors-methods",),
           help="methods a CORS preflight allows, comma-separated (default: GET, POST, OPTIONS)"),
    Option(("--cors-headers",),
           help="request headers a CORS preflight allows, comma-separated (default: Authorization, "
                "Content-Type, X-Api-Key)"),
    Option(("--cors-credentials",), action="const",
           help="answer allowed origins with Access-Control-Allow-Credentials: true (llama.cpp always "
                "does; Sluice uses no cookies, so only a proxy's cookies would need it)"),
    Option(("--offline",), action="true", env="LLAMA_ARG_OFFLINE",
           help="accepted for llama.cpp's command lines: Sluice never downloads anything"),
    Option(("--no-ws",), dest="websocket", action="const", const=False,
           help="disable goinfer's /ws token feed"),
    Option(("--slot-save-path",), kind=Path, help="directory where slots can be saved and restored"),
    Option(("--chat-template",), env="LLAMA_ARG_CHAT_TEMPLATE",
           help="built-in chat template: chatml, gemma, llama-2, llama-3, mistral, phi-3, vicuna_v1.1, "
                "zephyr (default: the model's own, else one for its architecture)"),
    Option(("--chat-template-file",), kind=Path, env="LLAMA_ARG_CHAT_TEMPLATE_FILE",
           help="Jinja chat template file"),
    Option(("--jinja",), action="const", env="LLAMA_ARG_JINJA", env_negation="--no-jinja",
           help="run Jinja chat templates: the model's, --chat-template-file's (the default)"),
    Option(("--no-jinja",), dest="jinja", action="const", const=False,
           help="use the built-in template the model's looks like instead (as llama.cpp); tools are "
                "refused"),
    Option(("-rea", "--reasoning"), choices=("on", "off", "auto"), env="LLAMA_ARG_REASONING",
           help="thinking in chats: on or auto (the default) give chat templates enable_thinking true, "
                "off gives them false (as llama.cpp); a request's chat_template_kwargs win"),
    Option(("--reasoning-budget",), kind=int, env="LLAMA_ARG_THINK_BUDGET",
           help="-1: thinking unlimited (the default); 0: no thinking (templates get enable_thinking "
                "false)"),
    Option(("--chat-template-kwargs",), env="LLAMA_ARG_CHAT_TEMPLATE_KWARGS",
           help="a JSON object of more variables for the chat template, such as '{\"enable_thinking\": "
                "false}'; a request's own chat_template_kwargs win"),
    Option(("--system-prompt",), help="system prompt for chats that bring none"),
    Option(("--system-prompt-file",), kind=Path, help="file holding the system prompt"),
    Option(("--reasoning-format",), choices=("none", "deepseek", "auto"), env="LLAMA_ARG_THINK",
           help="deepseek (or auto, the default): a reply's <think> block becomes reasoning_content, "
                "Anthropic thinking blocks and Responses reasoning items; none: it stays in the text"),
    Option(("--tool-call-format",), choices=("auto", *TOOL_FORMATS),
           help="how the model writes tool calls: auto (the default) reads it from the chat template, "
                "else Hermes'; or one of the formats by name (the README's table)"),
    Option(("-v", "--verbose"), action="const", help="log requests and llama.cpp"),
    Option(("--assemble-model",), action="true",
           help="write the embedded default model to the cache and exit"),
)

SAMPLING_TITLE = "default sampling (a request's own fields win)"
BY_FLAG = {flag: o for o in OPTIONS for flag in o.flags}
#: each destination's options (an on/off pair shares one)
BY_TARGET: dict[str, tuple[Option, ...]] = {}
for _o in OPTIONS:
    BY_TARGET[_o.target] = (*BY_TARGET.get(_o.target, ()), _o)


def add_all(parser: argparse.ArgumentParser) -> None:
    """Every option of the table, in its order, the sampling ones in their own section."""
    group = parser.add_argument_group(SAMPLING_TITLE)
    for option in OPTIONS:
        option.add_to(group if option.group == "sampling" else parser)


def check_bounds(values: dict[str, Any]) -> None:
    """Check each bounded option's value in ``values`` (by destination)."""
    for option in OPTIONS:
        if option.low is not None or option.high is not None:
            option.check(values.get(option.target))


def sampling_options() -> tuple[Option, ...]:
    return tuple(o for o in OPTIONS if o.sampling)


def config_names() -> dict[str, str]:
    """The config file's other names for settings: ``{"ctx": "ctx_size", ...}``."""
    return {name: o.target for o in OPTIONS for name in o.config}


def kind_of(target: str) -> type | None:
    """The value type of the options that set ``target`` (None: text or a switch)."""
    return next((o.kind for o in BY_TARGET.get(target, ()) if o.kind is not None), None)


def env_values() -> dict[str, str]:
    """llama.cpp's variables for options that take a value -> the flag."""
    return {o.env: o.name for o in OPTIONS if o.env and o.action in ("store", "append")}


def env_switches() -> dict[str, tuple[str, str]]:
    """... and for the on/off ones: the flag, and its negation or ""."""
    return {o.env: (o.name, o.env_negation) for o in OPTIONS
            if o.env and o.action in ("true", "const")}
