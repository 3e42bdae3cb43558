"""One typed, frozen Settings object, built once at start-up and passed down."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from app.completion import SchemaMode

#: the Settings fields a model in the config file (or goinfer's load) may set for itself
MODEL_FIELDS = ("ctx_size", "parallel", "chat_template", "chat_template_file", "embedding",
                "n_gpu_layers", "batch_size", "cache_ram_mib")


class ConfigError(Exception):
    """A bad flag value or config file: start-up ends with this one line."""


#: the KV cache types llama.cpp's server accepts (-ctk/-ctv): ggml's names and type ids
KV_CACHE_TYPES = {"f32": 0, "f16": 1, "bf16": 30, "q8_0": 8, "q4_0": 2, "q4_1": 3, "iq4_nl": 20,
                  "q5_0": 6, "q5_1": 7}


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """A model the config file names: ``"models": {"<name>": {"path": ..., ...}}``.

    ``path`` is a GGUF file, or the short name of an embedded model. ``overrides``
    are :data:`MODEL_FIELDS` settings for this model alone.
    """

    name: str
    path: Path
    aliases: tuple[str, ...] = ()
    overrides: tuple[tuple[str, object], ...] = ()


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the server is configured with.

    Built by :func:`app.cli.load_settings` from the command line and the JSON
    config file; flags override the file, the file overrides these defaults.
    """

    model_path: Path | None = None  # None: the embedded default model
    models_dir: Path | None = None
    alias: str | None = None
    tags: tuple[str, ...] = ()  # of the --model model: informational, listed by /v1/models
    lora: tuple[tuple[Path, float], ...] = ()  # LoRA adapters of the --model model (file, scale)
    host: str = "127.0.0.1"
    port: int = 8080
    ctx_size: int = 8192  # total KV cells, shared by all slots (llama.cpp's -c)
    parallel: int = 4  # slots
    ubatch_size: int | None = None  # physical micro-batch (-ub); None: the batch size
    pooling: str = "mean"  # the embedding context's pooling: mean, cls or last (--pooling)
    batch_size: int = 512  # tokens per llama_decode
    threads: int | None = None
    threads_batch: int | None = None
    poll: int = 50  # decode threads' spin before sleeping, 0-100 (see app.launch.apply_poll)
    n_gpu_layers: int = 0
    seed: int = -1  # default per-request seed; -1: random
    n_predict: int = -1  # default token limit per request; -1: until EOS or context end
    flash_attn: str = "off"  # on | off | auto, llama.cpp's -fa
    cache_type_k: str = "f16"  # KV cache element types (llama.cpp's -ctk / -ctv)
    cache_type_v: str = "f16"
    kv_unified: bool = False  # one KV buffer for all slots (llama.cpp's --kv-unified)
    context_shift: bool = False  # a full slot drops old tokens and goes on (--context-shift)
    cache_reuse: int = 0  # a request's default n_cache_reuse (llama.cpp's --cache-reuse)
    cache_prompt: bool = True  # a request's default cache_prompt (--cache-prompt/--no-...)
    threads_http: int | None = None  # worker threads for requests' blocking work (Trio's: 40)
    keep: int = 0  # default n_keep of a request: prompt tokens a context shift keeps (--keep)
    api_keys: tuple[str, ...] = ()
    origins: tuple[str, ...] = ()
    #: CORS preflight answers (--cors-methods, --cors-headers): comma-separated
    cors_methods: str = "GET, POST, OPTIONS"
    cors_headers: str = "Authorization, Content-Type, X-Api-Key"
    #: Access-Control-Allow-Credentials: true for allowed origins (--cors-credentials)
    cors_credentials: bool = False
    #: TLS (--ssl-key-file, --ssl-cert-file: PEM files, both or neither)
    ssl_key_file: Path | None = None
    ssl_cert_file: Path | None = None
    #: a path every route is served under (--api-prefix, llama.cpp's: "/llama", no trailing /)
    api_prefix: str = ""
    verbose: bool = False
    metrics: bool = False  # serve /metrics
    chat_template: str | None = None  # a built-in's name
    chat_template_file: Path | None = None
    jinja: bool = True  # run Jinja chat templates (llama.cpp's --jinja / --no-jinja)
    reasoning_budget: int = -1  # -1: unlimited thinking; 0: none (enable_thinking false)
    reasoning: str = "auto"  # llama.cpp's --reasoning: "off" gives templates enable_thinking false
    chat_template_kwargs: str = ""  # a JSON object: more variables for every chat template
    system_prompt: str | None = None
    reasoning_format: str = "deepseek"  # "none": leave <think> blocks in the content
    tool_call_format: str = "auto"  # "auto": the chat template's (app/toolformat.py), or a name
    embedding: bool = False  # serve /embedding and /v1/embeddings
    reranking: bool = False  # serve /rerank (a reranking model only: llama.cpp's --reranking)
    websocket: bool = True  # goinfer's /ws token feed
    slots_endpoint: bool = True  # GET /slots (llama.cpp's --slots / --no-slots)
    props_endpoint: bool = False  # POST /props (llama.cpp's --props)
    webui: bool = True  # the web page at / (llama.cpp's --webui / --no-webui)
    slot_save_path: Path | None = None  # directory for /slots/{id}?action=save|restore
    request_timeout_s: float | None = None  # None: no limit
    send_timeout_s: float = 30.0  # a client that takes no data this long is treated as gone
    shutdown_grace_s: float = 5.0
    max_body_bytes: int = 4 * 1024 * 1024
    max_queue: int = 64  # requests waiting beyond the slots; more are refused with 503
    max_ws: int = 64  # goinfer /ws subscribers at once
    adapt_threads: bool = True  # fewer decode threads while the machine is busy (app.engine.threads)
    cache_ram_mib: int = 8192  # host-memory prompt cache bound; -1: no limit, 0: off (llama.cpp's)
    queue_ping_interval_s: float = 5.0
    models: tuple[ModelConfig, ...] = ()  # named models from the config file
    models_max: int = 1  # models loaded at once; one more evicts the least recently used idle one
    models_wait_s: float = 60.0  # how long a request waits for room to load its model, then 503
    sleep_idle_s: float | None = None  # unload a model idle this long; None: keep it loaded
    #: the server's default sampling (llama.cpp's --temp, --top-k, ...): SamplingParams fields
    sampling: tuple[tuple[str, object], ...] = ()
    #: the server's default constraint for requests without one (--grammar(-file), -j/-jf)
    grammar: str | None = None
    json_schema: str | None = None  # JSON text
    schema_strict: bool = False  # close objects without additionalProperties in every schema
    schema_mode: SchemaMode = "generation"  # how schemas become grammars when a request does not say
    #: DRY multiplier of a JSON-schema or tools request that sets no dry_* field (0: off)
    schema_dry: float = 0.8

    @property
    def alias_names(self) -> tuple[str, ...]:
        """``--alias`` as llama.cpp reads it: comma-separated names, in sorted order (its
        first is the model's name, as llama.cpp's ``id``)."""
        if not self.alias:
            return ()
        return tuple(sorted({a.strip() for a in self.alias.split(",") if a.strip()}))

    @property
    def binds(self) -> tuple[str, ...]:
        """``--host`` as llama.cpp reads it: comma-separated addresses, each on ``--port``, or
        UNIX socket paths ending in ``.sock``; an IPv6 address binds in brackets."""
        out = []
        for host in (h.strip() for h in self.host.split(",")):
            if not host:
                continue
            if host.endswith(".sock"):
                out.append(f"unix:{host}")
            elif ":" in host and not host.startswith("["):
                out.append(f"[{host}]:{self.port}")
            else:
                out.append(f"{host}:{self.port}")
        return tuple(out)

    @property
    def slot_ctx(self) -> int:
        """Context cells each slot may use."""
        return max(1, self.ctx_size // self.parallel)
