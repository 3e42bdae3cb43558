"""Preparing a request: every check that can fail, done before the first byte of a response.

:func:`prepare` runs in a worker thread (tokenizing, converting a schema, parsing
a grammar and building llama.cpp's sampler can each take long on large input) and
either returns a :class:`Prepared` request, ready for a slot, or raises an
:class:`~app.errors.ApiError` naming the field. A grammar is parsed once here, in
Python; llama.cpp then builds its own from the same text.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, replace
from typing import Any

from app.completion import (
    DRY_BREAKERS,
    CompletionRequest,
    GrammarConstraint,
    SchemaConstraint,
    SchemaMode,
    ToolsConstraint,
)
from app.engine.events import GenerationRequest, SamplerLike
from app.engine.sampling import SamplerInitError
from app.errors import ContextOverflow, InvalidRequest, NotSupported
from app.runtime import ModelLike, RuntimeLike
from app.tools import RepeatWatch
from grammar import Conversion, GbnfSyntaxError, SchemaError, UnsupportedSchemaError, convert, parse_gbnf
from grammar.gbnf import Grammar
from grammar.gbnf_ast import token_refs
from grammar.linear_regex import UnsupportedPattern, check_schema_patterns
from grammar.tools import ToolSchema, after_thinking, raw_params, tool_calls_gbnf

#: More bytes than any token of a real vocabulary spells (they stay under 128): a prompt
#: longer than this many bytes per context token cannot fit, and is refused untokenized.
MAX_TOKEN_BYTES = 256


@dataclass(frozen=True, slots=True)
class Prepared:
    """A checked request: tokens, resolved sampling, grammar text, and its built sampler.

    The sampler belongs to whoever holds this until it is handed to the engine,
    which then closes it.
    """

    request: CompletionRequest  # seed resolved, logit_bias tokenized into request.sampling
    generation: GenerationRequest
    sampler: SamplerLike
    grammar: str | None
    schema: Any  # the JSON Schema to validate the output against (None: none)
    conversion: Conversion | None
    runtime: RuntimeLike  # the model it was prepared for


def convert_schema(schema: Any, *, field: str, prop_order: list[str] | None = None,
                   strict: bool = False, spec: bool = False, grammar_only: bool = False,
                   dotall: bool = False) -> Conversion:
    """Convert a request's JSON Schema, mapping grammar errors to a 400 naming ``field``."""
    try:
        return convert(schema, prop_order=prop_order, strict=strict, spec=spec,
                       grammar_only=grammar_only, dotall=dotall)
    except RecursionError:
        raise InvalidRequest(f"unsupported schema in '{field}': nested too deeply to convert",
                             param=field, pointer="/") from None
    except SchemaError as exc:
        kind = "unsupported" if isinstance(exc, UnsupportedSchemaError) else "invalid"
        where = exc.pointer or "/"
        raise InvalidRequest(f"{kind} schema in '{field}' at {where}: {exc.message}",
                             param=field, pointer=where) from None


def tools_grammar(constraint: ToolsConstraint, *, schema_strict: bool = False,
                  spec: bool = False) -> str:
    """The GBNF of a tool-calling reply, mapping a bad tool schema to a 400 naming the tool."""
    for tool in constraint.tools:
        try:
            check_schema_patterns(tool.parameters)
        except UnsupportedPattern as exc:
            raise InvalidRequest(f"unsupported schema in tool {tool.name!r} ('{tool.field}') at "
                                 f"{exc.pointer}: {exc}", param=tool.field,
                                 pointer=exc.pointer) from None
    try:
        return tool_calls_gbnf(
            [ToolSchema(t.name, t.parameters, t.strict or schema_strict)
             for t in constraint.tools],
            mode="required" if constraint.required else "auto", parallel=constraint.parallel,
            syntax=constraint.syntax, spec=spec).gbnf
    except RecursionError:
        raise InvalidRequest("unsupported schema in 'tools': nested too deeply to convert",
                             param="tools", pointer="/") from None
    except SchemaError as exc:
        tool = constraint.tools[exc.index or 0]
        kind = "unsupported" if isinstance(exc, UnsupportedSchemaError) else "invalid"
        where = exc.pointer or "/"
        raise InvalidRequest(f"{kind} schema in tool {tool.name!r} ('{tool.field}') at {where}: "
                             f"{exc.message}", param=tool.field, pointer=where) from None


#: DRY's other settings under the schema loop guard: llama.cpp's usual ones (``--dry-base``
#: 1.75, ``--dry-allowed-length`` 2, its default sequence breakers, the whole context)
SCHEMA_DRY_BASE = 1.75


def prepare(runtime: RuntimeLike, request: CompletionRequest, *,
            schema_strict: bool = False, schema_mode: SchemaMode = "generation",
            schema_dry: float = 0.0) -> Prepared:
    """Tokenize, check and compile ``request`` for ``runtime``. Blocking: call in a worker.

    ``schema_strict`` (``--schema-strict``) closes every schema's objects that do not say
    ``additionalProperties``, as a request's ``strict: true`` does for its own.
    ``schema_mode`` (``--schema-mode``) is how schemas become grammars unless the request
    says (its ``schema_mode``): every schema of the request (its own, the server's
    ``--json-schema``, its tools') takes the same shape.
    ``schema_dry`` (``--schema-dry``) is the loop guard: a request constrained by a JSON
    Schema or tools that sets no ``dry_*`` field samples with DRY at that multiplier. A
    grammar keeps every reply valid but cannot stop a small model from writing
    ``"1st floor, 1st floor, …"`` or the same array items again until the token limit; DRY
    penalises a token that would repeat a sequence the reply already holds.

    Raises:
        InvalidRequest: and its subclasses (``ContextOverflow``), naming the field.
    """
    model = runtime.model
    n_ctx = runtime.engine.slot_ctx
    text_bytes = sum(len(p) for p in request.prompt if isinstance(p, str))  # chars <= bytes
    if text_bytes > n_ctx * MAX_TOKEN_BYTES:  # refused before a tokenization of seconds
        raise InvalidRequest(f"the prompt is {text_bytes} characters: at {MAX_TOKEN_BYTES} "
                             f"bytes per token at most, it cannot fit in the context of "
                             f"{n_ctx} tokens", param="prompt")
    tokens = tokenize_prompt(model, request.prompt)
    if len(tokens) >= n_ctx:
        raise ContextOverflow(len(tokens), n_ctx)
    n_slots = len(runtime.engine.slots)
    if request.id_slot >= n_slots:
        raise InvalidRequest(f"invalid value for 'id_slot': there are {n_slots} slots",
                             param="id_slot")
    spec = (request.schema_mode or schema_mode) == "spec"
    conversion = None
    grammar: str | None = None
    parsed: Grammar | None = None
    schema: Any = None
    field = "grammar"
    match request.constraint:
        case SchemaConstraint(schema=schema, field=field, strict=strict):
            conversion = convert_schema(schema, field=field, strict=strict or schema_strict,
                                        spec=spec)
            try:
                check_schema_patterns(schema)  # they are matched again when validating
            except UnsupportedPattern as exc:
                raise InvalidRequest(f"unsupported schema in '{field}' at {exc.pointer}: {exc}",
                                     param=field, pointer=exc.pointer) from None
            grammar = conversion.gbnf
            parsed = _parse(grammar, field, model)
        case GrammarConstraint(text=grammar, field=field):
            parsed = _parse(grammar, field, model)
        case ToolsConstraint() as tools:
            field = "tools"
            grammar = tools_grammar(tools, schema_strict=schema_strict, spec=spec)
            parsed = _parse(grammar, field, model)
    if request.thinking and grammar is not None and \
            isinstance(request.constraint, SchemaConstraint | ToolsConstraint):
        grammar = after_thinking(grammar, opened=request.thinking == "open")
        parsed = _parse(grammar, field, model)
    # the penalty window cannot reach past the slot's context (-1 means all of it); the
    # schemas bound the value itself, so the penalties buffer stays small
    last_n = request.sampling.repeat_last_n
    seed = request.sampling.seed
    # 0xFFFFFFFF is LLAMA_DEFAULT_SEED, which llama.cpp replaces with a random seed
    bias = _logit_bias(model, request.logit_bias)
    if request.sampling.ignore_eos:  # as llama.cpp: the end-of-generation tokens at -inf
        bias += tuple((t, -math.inf) for t in sorted(model.eog_ids))
    sampling = replace(request.sampling, seed=seed if seed >= 0 else secrets.randbelow(0xFFFFFFFF),
                       repeat_last_n=n_ctx if last_n < 0 else min(last_n, n_ctx),
                       logit_bias=bias)
    if schema_dry > 0 and not sampling.dry_given and \
            isinstance(request.constraint, SchemaConstraint | ToolsConstraint):
        sampling = replace(sampling, dry_multiplier=schema_dry, dry_base=SCHEMA_DRY_BASE,
                           dry_allowed_length=2, dry_penalty_last_n=-1,
                           dry_sequence_breakers=DRY_BREAKERS)
    try:
        sampler = runtime.new_sampler(sampling, grammar, parsed)
    except SamplerInitError as exc:
        raise InvalidRequest(f"invalid grammar in '{field}': {exc}", param=field) from None
    lora: tuple[float, ...] = ()
    adapters = runtime.lora
    if request.lora is not None:
        n = len(adapters.items) if adapters is not None else 0
        bad = [i for i, _ in request.lora if i >= n]
        if bad:
            raise InvalidRequest(f"invalid value for 'lora': no adapter with id {bad[0]} "
                                 f"({n} loaded)", param="lora")
    if adapters is not None:
        lora = adapters.resolve(request.lora)
    # llama.cpp counts n_keep after the BOS it adds
    bos = 1 if model.info.add_bos and tokens and tokens[0] == model.info.bos else 0
    n_keep = len(tokens) if request.n_keep < 0 else min(len(tokens), request.n_keep + bos)
    ends = None
    if isinstance(request.constraint, ToolsConstraint) and request.constraint.parallel and \
            request.constraint.syntax.parallel:
        ends = RepeatWatch(request.constraint.syntax, required=request.constraint.required,
                           thinking=request.thinking,
                           raw={t.name: raw_params(t.parameters) for t in request.constraint.tools})
    generation = GenerationRequest(prompt=tuple(tokens), n_predict=request.n_predict, ends=ends,
                                   stops=request.stops, cache_prompt=request.cache_prompt,
                                   id_slot=request.id_slot, n_keep=n_keep,
                                   n_discard=request.n_discard, n_indent=request.n_indent,
                                   t_max_predict_ms=max(0, request.t_max_predict_ms),
                                   return_progress=request.return_progress,
                                   n_cache_reuse=request.n_cache_reuse, lora=lora)
    return Prepared(request=replace(request, sampling=sampling), generation=generation,
                    sampler=sampler, grammar=grammar, schema=schema, conversion=conversion,
                    runtime=runtime)


def tokenize_prompt(model: ModelLike, parts: tuple[str | int, ...]) -> list[int]:
    """A prompt of strings and token ids as tokens, with BOS where the model wants one."""
    tokens: list[int] = []
    for i, part in enumerate(parts):
        if isinstance(part, str):
            tokens.extend(model.tokenize(part, add_special=False, parse_special=True))
        elif not model.valid_token(part):
            field = "prompt" if len(parts) == 1 else f"prompt[{i}]"
            raise InvalidRequest(f"invalid value for '{field}': token id {part} is outside "
                                 f"the vocabulary of {model.n_vocab}", param=field)
        else:
            tokens.append(int(part))
    bos = model.info.bos
    if model.info.add_bos and bos >= 0 and (not tokens or tokens[0] != bos):
        tokens.insert(0, bos)
    return tokens


def _parse(text: str, field: str, model: ModelLike) -> Grammar:
    """The one Python parse of a grammar, with its token references checked."""
    try:
        parsed = parse_gbnf(text)
    except GbnfSyntaxError as exc:
        raise InvalidRequest(f"invalid grammar in '{field}': {exc}", param=field) from None
    for ref in token_refs(parsed):
        if isinstance(ref.value, int) and not model.valid_token(ref.value):
            raise InvalidRequest(f"invalid grammar in '{field}': token id {ref.value} is outside "
                                 "the vocabulary", param=field)
        if isinstance(ref.value, str) and len(model.tokenize(
                ref.value, add_special=False, parse_special=True)) != 1:
            raise InvalidRequest(f"invalid grammar in '{field}': {ref.value} is not a single "
                                 "token", param=field)
    return parsed


def _logit_bias(model: ModelLike, pairs: tuple[tuple[int | str, float], ...]
                ) -> tuple[tuple[int, float], ...]:
    out: list[tuple[int, float]] = []
    for key, bias in pairs:
        if isinstance(key, int):
            if not model.valid_token(key):
                raise InvalidRequest(f"invalid value for 'logit_bias': token id {key} is "
                                     "outside the vocabulary", param="logit_bias")
            out.append((key, bias))
        else:
            out.extend((t, bias) for t in model.tokenize(key, add_special=False,
                                                         parse_special=False))
    return tuple(out)


#: llama.cpp's separator of extra chunks for models without a file-separator token
_CHUNK_SEPARATOR = "\n\n--- snippet ---\n\n"


def fim_prompt(model: ModelLike, prefix: str, suffix: str, extra: list[tuple[str, str]],
               prompt: str, *, n_batch: int, n_predict: int, n_ctx: int) -> list[int]:
    """The tokens of an infill request, as llama.cpp's ``format_prompt_infill`` lays them out:
    the extra chunks (repo-level FIM: ``[FIM_REP]myproject``, ``[FIM_SEP]filename`` per chunk),
    then BOS, ``[FIM_PRE]`` prefix prompt ``[FIM_SUF]`` suffix ``[FIM_MID]``; the prefix keeps at
    most 3/4 of a batch (its end), the suffix what is left of a quarter, the extra chunks what
    the context has room for (their end).

    Raises:
        NotSupported: the model has no fill-in-the-middle tokens.
    """
    fim = model.fim_tokens()
    if fim is None:
        raise NotSupported("this model has no fill-in-the-middle tokens")
    pre, suf, mid = fim
    rep, sep = model.fim_repo_tokens()

    def tok(text: str) -> list[int]:
        return model.tokenize(text, add_special=False, parse_special=False)

    extra_tokens: list[int] = []
    if rep >= 0:
        extra_tokens += [rep, *tok("myproject\n")]
    for filename, text in extra:
        extra_tokens += [sep, *tok(filename + "\n")] if sep >= 0 else tok(_CHUNK_SEPARATOR)
        extra_tokens += tok(text)
    if sep >= 0:
        extra_tokens += [sep, *tok("filename\n")]
    prefix_tokens, suffix_tokens, prompt_tokens = tok(prefix), tok(suffix), tok(prompt)
    n_prefix = min(len(prefix_tokens), 3 * (n_batch // 4))
    n_suffix = min(len(suffix_tokens), max(0, n_batch // 4 - (2 + len(prompt_tokens))))
    n_extra = min(max(0, n_ctx - n_batch - 2 * max(n_predict, 0)), len(extra_tokens))
    head = [model.info.bos] if model.info.add_bos and model.info.bos >= 0 else []
    return [*(extra_tokens[len(extra_tokens) - n_extra:] if n_extra else []), *head, pre,
            *prefix_tokens[len(prefix_tokens) - n_prefix:], *prompt_tokens,
            suf, *suffix_tokens[:n_suffix], mid]
