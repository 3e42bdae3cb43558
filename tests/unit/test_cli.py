"""Flags and config file into Settings; start-up errors are one line and exit non-zero."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from app.cli import load_settings
from app.settings import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_flags_override_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"port": 9000, "parallel": 2, "origins": ["http://a"], "ctx": 4096}))
    s, _ = load_settings(["--config", str(cfg), "--port", "9001", "-np", "3", "--api-key", "k1",
                          "--api-key", "k2"])
    assert (s.port, s.parallel, s.ctx_size, s.origins, s.api_keys) == (
        9001, 3, 4096, ("http://a",), ("k1", "k2"))
    assert s.slot_ctx == 4096 // 3


def test_api_key_file(tmp_path: Path) -> None:
    f = tmp_path / "keys"
    f.write_text("a\n\n b \n")
    s, _ = load_settings(["--api-key", "x", "--api-key-file", str(f)])
    assert s.api_keys == ("x", "a", "b")


@pytest.mark.parametrize(
    ("argv", "config", "message"),
    [
        (["--bogus"], None, "unrecognized arguments"),
        (["--port", "x"], None, "invalid int value"),
        (["--parallel", "0"], None, "--parallel"),
        (["--port", "70000"], None, "--port"),
        ([], {"unknown_key": 1}, "unknown config key 'unknown_key'"),
        ([], {"port": "8080"}, "'port' must be an integer"),
        ([], {"origins": 5}, "'origins'"),
        ([], "not json", "not valid JSON"),
        (["-ctk", "q3_K"], None, "invalid choice: 'q3_K'"),
        ([], {"cache_type_k": "q3_K"}, "the KV cache types are f32, f16"),
    ],
)
def test_bad_settings(tmp_path: Path, argv: list[str], config: object, message: str) -> None:
    if config is not None:
        cfg = tmp_path / "c.json"
        cfg.write_text(config if isinstance(config, str) else json.dumps(config))
        argv = [*argv, "--config", str(cfg)]
    with pytest.raises(ConfigError, match=message):
        load_settings(argv)


def run_app(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("kind", ["missing", "corrupt", "truncated"])
def test_bad_model_file_ends_startup_with_one_line(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "model.gguf"
    if kind == "corrupt":
        path.write_bytes(b"not a model at all")
    elif kind == "truncated":
        path.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 16)
    result = run_app("--model", str(path), "--port", "0")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("sluice: error:")
    assert "model.gguf" in lines[0]


def test_unknown_flag_exits_non_zero() -> None:
    result = run_app("--no-such-flag")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "sluice: error: unrecognized arguments: --no-such-flag"]


def test_model_name_resolves_inside_models_dir(tmp_path: Path) -> None:
    from app.launch import resolve_model_path

    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    s, _ = load_settings(["--models-dir", str(tmp_path), "--model", "m.gguf"])
    assert resolve_model_path(s) == tmp_path / "m.gguf"
    s, _ = load_settings(["--models-dir", str(tmp_path), "--model", "../m.gguf"])
    with pytest.raises(ConfigError, match="inside --models-dir"):
        resolve_model_path(s)


@pytest.mark.parametrize(("args", "message"), [
    (("-np", "2", "-b", "1"), "--batch-size must be at least --parallel"),
    (("--max-queue", "-1"), "--max-queue must not be negative"),
    (("--ctx-size", "99999999"), "--ctx-size must be at most 4194304"),
    (("-ctv", "q8_0"), "-ctv q8_0: a quantized V cache needs flash attention (-fa on or auto)"),
    (("--keep", "-2"), "--keep must be -1..1048576"),
])
def test_impossible_flag_combinations_end_startup_with_one_line(args: tuple[str, ...],
                                                                message: str) -> None:
    result = run_app(*args, "--port", "0")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"sluice: error: {message}"], result.stderr


def test_poll_sets_the_openmp_wait_before_llama_cpp_loads() -> None:
    from app.launch import apply_poll

    cases = {0: {"OMP_WAIT_POLICY": "PASSIVE"}, 100: {"OMP_WAIT_POLICY": "ACTIVE"},
             50: {"GOMP_SPINCOUNT": "200000"}}
    for poll, expected in cases.items():
        env: dict[str, str] = {}
        apply_poll(poll, env)
        assert env == expected
    user = {"GOMP_SPINCOUNT": "7"}
    apply_poll(50, user)
    assert user == {"GOMP_SPINCOUNT": "7"}  # the user's own setting wins
    with pytest.raises(ConfigError, match="--poll"):
        load_settings(["--poll", "101"])


def test_flash_attention_takes_llama_cpps_values(tmp_path: Path) -> None:
    assert load_settings([])[0].flash_attn == "off"
    assert load_settings(["-fa"])[0].flash_attn == "on"  # alone: on, as before
    assert load_settings(["-fa", "auto"])[0].flash_attn == "auto"
    assert load_settings(["--flash-attn", "off"])[0].flash_attn == "off"
    with pytest.raises(ConfigError, match="invalid choice: 'maybe'"):
        load_settings(["--flash-attn", "maybe"])
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"flash_attn": True}))  # an earlier version's config file
    assert load_settings(["--config", str(cfg)])[0].flash_attn == "on"


def test_config_models_and_the_registry_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"models_max": 2, "models": {
        "chat": {"path": "smollm2-135m-instruct", "aliases": ["assistant"], "ctx_size": 4096,
                 "parallel": 2, "embedding": True}}}))
    s, _ = load_settings(["--config", str(cfg), "--sleep-idle-seconds", "300",
                          "--models-wait", "5"])
    assert (s.models_max, s.sleep_idle_s, s.models_wait_s) == (2, 300.0, 5.0)
    (chat,) = s.models
    assert (chat.name, str(chat.path), chat.aliases) == ("chat", "smollm2-135m-instruct",
                                                         ("assistant",))
    assert dict(chat.overrides) == {"ctx_size": 4096, "parallel": 2, "embedding": True}
    for models, message in [
            ({"x": {"ctx_size": 1}}, "'models.x.path'"),
            ({"x": {"path": "a.gguf", "port": 1}}, "unknown key 'models.x.port'"),
            ({"x": {"path": "a.gguf", "parallel": 8, "ctx_size": 64}}, "at least 16 tokens"),
            ({"x": {"path": "a.gguf", "aliases": "y"}}, "'models.x.aliases'"),
            ([], "named models")]:
        cfg.write_text(json.dumps({"models": models}))
        with pytest.raises(ConfigError, match=message):
            load_settings(["--config", str(cfg)])
    with pytest.raises(ConfigError, match=r"--models-max must be 1\.\.64"):
        load_settings(["--models-max", "0"])


def test_default_sampling_flags_as_llama_cpp_names_them() -> None:
    s, _ = load_settings(["--temp", "0.2", "--top-k", "5", "--top-p", "0.9", "--min-p", "0",
                          "--typical", "0.95", "--repeat-penalty", "1.1", "--repeat-last-n", "32",
                          "--presence-penalty", "0.5", "--frequency-penalty", "0.25",
                          "--mirostat", "2", "--mirostat-lr", "0.2", "--mirostat-ent", "4",
                          "--ignore-eos", "--samplers", "top_k;temperature"])
    assert dict(s.sampling) == {
        "temperature": 0.2, "top_k": 5, "top_p": 0.9, "min_p": 0.0, "typical_p": 0.95,
        "repeat_penalty": 1.1, "repeat_last_n": 32, "presence_penalty": 0.5,
        "frequency_penalty": 0.25, "mirostat": 2, "mirostat_eta": 0.2, "mirostat_tau": 4.0,
        "ignore_eos": True, "samplers": ("top_k", "temperature")}
    for argv, message in [(["--temp", "nan"], "--temp must be a number"),
                          (["--top-p", "1.5"], "--top-p must be a number from 0 to 1"),
                          (["--mirostat-lr", "inf"], "--mirostat-lr must be"),
                          (["--samplers", "adaptive_p;top_k"], "adaptive_p not available"),
                          (["--top-k", "x"], "invalid int value")]:
        with pytest.raises(ConfigError, match=message):
            load_settings(argv)


def test_chat_template_kwargs_must_be_an_object_without_reserved_names() -> None:
    s, _ = load_settings(["--chat-template-kwargs", '{"enable_thinking": false}'])
    assert json.loads(s.chat_template_kwargs) == {"enable_thinking": False}
    for raw, message in [("[1]", "must be a JSON object"), ("{", "must be a JSON object"),
                         ('{"messages": 1}', "may not set messages")]:
        with pytest.raises(ConfigError, match=message):
            load_settings(["--chat-template-kwargs", raw])


def test_dry_xtc_and_the_other_sampler_flags() -> None:
    s, _ = load_settings(["--dry-multiplier", "0.8", "--dry-base", "1.5", "--dry-allowed-length",
                          "3", "--dry-penalty-last-n", "256", "--dry-sequence-breaker", "\n",
                          "--dry-sequence-breaker", "###", "--xtc-probability", "0.5",
                          "--xtc-threshold", "0.2", "--top-nsigma", "1.5", "--dynatemp-range",
                          "0.3", "--dynatemp-exp", "2"])
    assert dict(s.sampling) == {
        "dry_multiplier": 0.8, "dry_base": 1.5, "dry_allowed_length": 3,
        "dry_penalty_last_n": 256, "dry_sequence_breakers": ("\n", "###"),
        "xtc_probability": 0.5, "xtc_threshold": 0.2, "top_n_sigma": 1.5,
        "dynatemp_range": 0.3, "dynatemp_exponent": 2.0}
    assert dict(load_settings(["--dry-sequence-breaker", "none"])[0].sampling) == {
        "dry_sequence_breakers": ()}
    for argv, message in [(["--xtc-probability", "1.5"], "--xtc-probability must be"),
                          (["--top-nsigma", "nan"], "--top-nsigma must be"),
                          (["--dry-sequence-breaker", "x" * 41], "1-40 characters")]:
        with pytest.raises(ConfigError, match=message):
            load_settings(argv)


def test_kv_cache_flags_and_their_types() -> None:
    s, _ = load_settings(["-ctk", "q8_0", "-ctv", "q4_0", "-fa", "auto", "-kvu",
                          "--context-shift", "--keep", "-1"])
    assert (s.cache_type_k, s.cache_type_v, s.kv_unified) == ("q8_0", "q4_0", True)
    assert (s.context_shift, s.keep) == (True, -1)
    s, _ = load_settings(["--kv-unified", "--no-kv-unified", "--no-context-shift"])
    assert (s.kv_unified, s.context_shift) == (False, False)


def test_host_takes_llama_cpps_address_list() -> None:
    s, _ = load_settings(["--host", "127.0.0.1, ::1,/run/sluice.sock", "--port", "8081"])
    assert s.binds == ("127.0.0.1:8081", "[::1]:8081", "unix:/run/sluice.sock")
    with pytest.raises(ConfigError, match="--host needs an address"):
        load_settings(["--host", " , "])


def test_llama_cpp_environment_variables_under_the_command_line() -> None:
    env = {"LLAMA_ARG_CTX_SIZE": "1024", "LLAMA_ARG_N_PARALLEL": "2",
           "LLAMA_ARG_ENDPOINT_METRICS": "1", "LLAMA_ARG_NO_ENDPOINT_SLOTS": "true",
           "LLAMA_ARG_FLASH_ATTN": "enabled", "LLAMA_API_KEY": "a,b",
           "LLAMA_ARG_CONTEXT_SHIFT": "off", "LLAMA_ARG_KV_UNIFIED": "on",
           "LLAMA_ARG_ROPE_SCALE": "2", "PATH": "/bin"}
    s, args = load_settings(["--parallel", "4", "--no-kv-unified"], env)
    assert (s.ctx_size, s.parallel) == (1024, 4)  # the flag on the command line wins
    assert (s.metrics, s.slots_endpoint, s.flash_attn) == (True, False, "on")
    assert s.api_keys == ("a", "b")  # a comma-separated list, as llama.cpp's --api-key
    assert (s.context_shift, s.kv_unified) == (False, False)
    assert args.env_warnings == ["environment variable LLAMA_ARG_ROPE_SCALE has no Sluice "
                                 "flag: ignored"]
    s, _ = load_settings([])  # no environment unless one is given
    assert s.ctx_size == 8192
    with pytest.raises(ConfigError, match="LLAMA_ARG_ENDPOINT_PROPS must be one of on"):
        load_settings([], {"LLAMA_ARG_ENDPOINT_PROPS": "yes"})


def test_jinja_reasoning_budget_threads_http_and_cache_prompt_flags() -> None:
    s, _ = load_settings(["--no-jinja", "--reasoning-budget", "0", "--threads-http", "8",
                          "--no-cache-prompt"])
    assert (s.jinja, s.reasoning_budget, s.threads_http, s.cache_prompt) == (False, 0, 8, False)
    s, _ = load_settings(["--jinja"])
    assert (s.jinja, s.reasoning_budget, s.cache_prompt) == (True, -1, True)
    with pytest.raises(ConfigError, match="--reasoning-budget: Sluice supports -1"):
        load_settings(["--reasoning-budget", "256"])
    with pytest.raises(ConfigError, match=r"--threads-http must be 1\.\.1024"):
        load_settings(["--threads-http", "0"])


def test_the_readme_documents_every_flag() -> None:
    from app.options import OPTIONS

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    flags = [f for o in OPTIONS for f in o.flags if f.startswith("--")]
    assert [f for f in flags if f"`{f}" not in readme and f", {f}" not in readme] == []


def test_the_option_table_is_the_parser_and_the_environment() -> None:
    from app.cli import build_parser
    from app.llama_env import ENV_SWITCHES, ENV_VALUES
    from app.options import BY_FLAG, OPTIONS

    parsed = {f for a in build_parser()._actions for f in a.option_strings} - {"-h", "--help"}
    assert parsed == {f for o in OPTIONS for f in o.flags}
    assert len(BY_FLAG) == sum(len(o.flags) for o in OPTIONS)  # no flag written twice
    for env, flag in ENV_VALUES.items():  # every variable names a flag that takes a value
        assert BY_FLAG[flag].env == env
        assert BY_FLAG[flag].action in ("store", "append")
    for env, (flag, negation) in ENV_SWITCHES.items():
        assert BY_FLAG[flag].env == env
        assert not negation or negation in BY_FLAG


def test_bounds_from_the_table_apply_to_flags_config_and_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"threads_http": 0}))
    for argv, env in ((["--threads-http", "0"], {}), (["--config", str(cfg)], {}),
                      ([], {"LLAMA_ARG_THREADS_HTTP": "0"})):
        with pytest.raises(ConfigError, match=r"--threads-http must be 1\.\.1024"):
            load_settings(argv, env)
    with pytest.raises(ConfigError, match=r"--sse-ping-interval must be a number from 0\.1 to 3600"):
        load_settings(["--sse-ping-interval", "nan"])
    with pytest.raises(ConfigError, match=r"--top-k must be 0\.\.1000000"):
        load_settings(["--top-k", "-2"])


def test_llama_cpp_flags_sluice_accepts_as_they_are() -> None:
    s, _ = load_settings(["--no-ui", "-ub", "64", "-cb", "--swa-full", "--no-mmproj",
                          "--pooling", "cls", "--cors-origins", "localhost, https://a.example"])
    assert (s.webui, s.ubatch_size, s.pooling) == (False, 64, "cls")
    assert s.origins == ("localhost", "https://a.example")
    assert load_settings(["--ui"])[0].webui is True
    with pytest.raises(ConfigError, match="--no-cont-batching: Sluice always batches"):
        load_settings(["-nocb"])
    with pytest.raises(ConfigError, match="--pooling rank: Sluice serves pooled embeddings"):
        load_settings(["--pooling", "rank"])
    with pytest.raises(ConfigError, match="--ubatch-size must be at least --parallel"):
        load_settings(["-np", "4", "-ub", "2"])


def test_cors_localhost_reflects_only_loopback_origins() -> None:
    from app.cors import headers

    allowed = ("localhost",)
    for origin in ("http://localhost:5173", "http://127.0.0.1:8080", "http://[::1]:3000"):
        assert headers(origin, allowed, preflight=False)["Access-Control-Allow-Origin"] == origin
    assert headers("https://evil.example", allowed, preflight=False) == {}
    assert headers("http://localhost.evil.example", allowed, preflight=False) == {}
    assert headers("http://[bad", allowed, preflight=False) == {}


def test_cors_credentials_only_when_asked_and_only_for_allowed_origins() -> None:
    from app.cors import headers

    settings, _ = load_settings(["--cors-origins", "*", "--cors-credentials"])
    assert settings.cors_credentials
    assert settings.origins == ("*",)
    got = headers("https://app.example", ("*",), preflight=True, credentials=True)
    assert got["Access-Control-Allow-Origin"] == "https://app.example"  # reflected, not "*"
    assert got["Access-Control-Allow-Credentials"] == "true"
    assert "Access-Control-Allow-Credentials" not in headers("https://app.example", ("*",),
                                                             preflight=True)
    assert headers("https://evil.example", ("https://app.example",), preflight=True,
                   credentials=True) == {}
    assert not load_settings([])[0].cors_credentials


def test_reranking_with_a_model_that_is_not_a_reranker_ends_startup_with_one_line() -> None:
    result = run_app("--reranking", "--port", "0")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "sluice: error: --reranking: gemma-3-270m-q4_k_m.gguf is not a reranker (its GGUF does "
        "not declare rank pooling)"), result.stderr


def test_server_grammar_and_json_schema_are_checked_at_startup(tmp_path: Path) -> None:
    s, _ = load_settings(["--grammar", 'root ::= "yes" | "no"'])
    assert s.grammar == 'root ::= "yes" | "no"'
    schema = tmp_path / "s.json"
    schema.write_text('{"type": "object"}')
    assert load_settings(["-jf", str(schema)])[0].json_schema == '{"type": "object"}'
    for argv, message in ((["--grammar", "root ::= ("], "--grammar: "),
                          (["-j", "{nope"], "--json-schema: not JSON"),
                          (["-j", '{"type": "nope"}'], "--json-schema: "),
                          (["--grammar", 'root ::= "a"', "-j", "{}"], "cannot be used together"),
                          (["--grammar-file", str(tmp_path / "missing.gbnf")], "cannot read")):
        with pytest.raises(ConfigError, match=message):
            load_settings(argv)


def test_alias_takes_llama_cpps_list_and_the_slot_save_path_is_made(tmp_path: Path) -> None:
    s, _ = load_settings(["--alias", "tinyllama-2,fim, code", "--slot-save-path",
                          str(tmp_path / "a" / "b")])
    assert s.alias_names == ("code", "fim", "tinyllama-2")  # the first is the model's name
    assert (tmp_path / "a" / "b").is_dir()


@pytest.mark.parametrize(("argv", "message"), [
    (["--ssl-key-file", "k.pem"], "go together"),
    (["--api-prefix", "/llama/"], "--api-prefix"),
    (["--api-prefix", "llama"], "--api-prefix"),
    (["--cors-headers", "X-A\r\nSet-Cookie: a=b"], "--cors-headers"),
    (["--cors-methods", ""], "--cors-methods"),
    (["--schema-dry", "nan"], "--schema-dry"),
    (["--sse-ping-interval", "0"], "--sse-ping-interval"),
])
def test_operator_flags_are_checked_at_start(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(argv)


def test_tls_files_that_do_not_load_end_startup(tmp_path: Path) -> None:
    (tmp_path / "k.pem").write_text("not a key")
    (tmp_path / "c.pem").write_text("not a certificate")
    with pytest.raises(ConfigError, match="do not load"):
        load_settings(["--ssl-key-file", str(tmp_path / "k.pem"),
                       "--ssl-cert-file", str(tmp_path / "c.pem")])


def test_operator_flags_by_llama_cpp_names_and_variables() -> None:
    settings, _ = load_settings(["--api-prefix", "/llama", "--cors-methods", "GET, POST",
                                 "--cors-headers", "Authorization, X-Trace"])
    assert settings.api_prefix == "/llama"
    assert (settings.cors_methods, settings.cors_headers) == ("GET, POST", "Authorization, X-Trace")
    from_env, _ = load_settings([], {"LLAMA_ARG_API_PREFIX": "/v2"})
    assert from_env.api_prefix == "/v2"
