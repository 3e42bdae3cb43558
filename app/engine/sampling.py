"""Per-request sampling: a llama.cpp sampler chain plus a grammar fast path.

The grammar is kept *out* of the chain. Each step samples with the chain, then
checks only the chosen token against the grammar (microseconds). Only when the
grammar rejects it does the sampler look further:

1. the walk: the best candidates by logit are checked one at a time; this is
   exact when the chain is greedy, or when it truncates with top-k first and at
   least k allowed candidates were found (no penalties, no mirostat: those
   change logits before truncation);
2. otherwise the full pass: the grammar masks all candidates (about 40 ms on a
   262k vocabulary), then the chain samples from what is left.

A token the grammar rejects is never accepted (llama.cpp aborts the process on
that), and an end-of-generation token is accepted only when the grammar allows
it, i.e. when the constrained text is complete.
"""

from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass
from typing import Any

import llama_cpp.llama_cpp as C
import numpy as np
import numpy.typing as npt

from app.completion import SamplingParams
from app.engine.grammar_filter import GrammarTracker
from app.engine.model import Model
from grammar import Grammar

WALK_CANDIDATES = 128
#: a rejected step whose grammar leaves at most this many candidate tokens is finished inline
#: (masking them costs well under a millisecond) instead of on a grammar worker
INLINE_CANDIDATES = 8192
#: ... and only while the grammar is narrow (few parse stacks): an ambiguous grammar makes each
#: token check slow, and those steps belong on a worker, under the watchdog
INLINE_MAX_STACKS = 32

_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


class SamplerInitError(Exception):
    """llama.cpp refused to build the sampler (for a grammar that passed our parser)."""


@dataclass(frozen=True, slots=True)
class TokenProb:
    token: int
    logprob: float


@dataclass(frozen=True, slots=True)
class Sampled:
    token: int
    logprob: float | None = None  # the chosen token's log-probability (when n_probs > 0)
    top: tuple[TokenProb, ...] = ()
    grammar_exhausted: bool = False  # the grammar allows no token at all


def _TokenDataArray(data: int, size: int, selected: int, is_sorted: bool) -> ctypes.Structure:
    """A ``llama_token_data_array`` over a numpy buffer of ``_TOKEN_DATA`` records."""
    return C.llama_token_data_array(
        data=ctypes.cast(data, C.llama_token_data_p), size=size, selected=selected,
        sorted=is_sorted)


class Sampler:
    """The sampling state of one request. Used by one thread at a time; close it."""

    def __init__(self, model: Model, params: SamplingParams, grammar: str | None,
                 parsed: Grammar | None = None) -> None:
        self._model = model
        self.params = params
        self._n_vocab = model.n_vocab
        self._vocab = model.vocab
        self._chain = self._build_chain(params)
        self._grammar: Any = None
        if grammar is not None:
            self._grammar = C.llama_sampler_init_grammar(model.vocab, grammar.encode(), b"root")
            if not self._grammar:
                self.close()
                raise SamplerInitError("llama.cpp refused the grammar")
        bias: dict[int, float] = {}
        for token, value in params.logit_bias:
            bias[token] = bias.get(token, 0.0) + value
        if params.ignore_eos:
            for token in model.eog_ids:
                bias[token] = -math.inf
        self._bias_ids = np.fromiter(bias.keys(), dtype=np.int64, count=len(bias))
        self._bias_vals = np.fromiter(bias.values(), dtype=np.float32, count=len(bias))
        self._walk_ok = self._grammar is not None and self._walk_is_exact(params)
        # Plain greedy needs no candidate array: argmax over the row picks the same
        # token as llama.cpp's greedy sampler (the first maximum) in a fraction of the time.
        self._argmax = params.plain_greedy
        # the grammar followed in Python too, to narrow full passes (app/engine/grammar_filter.py)
        self._tracker: GrammarTracker | None = None
        if self._grammar is not None and parsed is not None:
            self._tracker = GrammarTracker(parsed, model.vocab_index(), model.grammar_piece,
                                           model.eog_ids)
        # post-sampling probabilities: the chain runs over a candidate array here, which then
        # holds what the chain left (``_post`` of them, with their probabilities)
        self._post_probs = params.post_sampling_probs and params.n_probs > 0
        self._post = 0
        if self._grammar is not None or self._post_probs:
            self._cand = np.zeros(self._n_vocab, dtype=_TOKEN_DATA)
            self._ids = np.arange(self._n_vocab, dtype=np.int32)
            self._one = np.zeros(1, dtype=_TOKEN_DATA)
        self.rejections = 0
        self.full_passes = 0
        self.narrowed_passes = 0
        self._pending: npt.NDArray[np.float32] | None = None  # logits of an open step

    # --- construction ---------------------------------------------------
    @staticmethod
    def _walk_is_exact(params: SamplingParams) -> bool:
        if (params.mirostat or params.penalties_active or params.dry_active or params.xtc_active
                or params.top_n_sigma > 0 or params.dynatemp_range > 0):
            return False  # they change logits or truncate before the walk's top-k
        if params.greedy:
            return True
        order = [s for s in params.samplers if s not in ("temperature", "penalties")]
        return bool(order) and order[0] == "top_k" and 0 < params.top_k <= WALK_CANDIDATES

    def _build_chain(self, p: SamplingParams) -> Any:
        chain = C.llama_sampler_chain_init(C.llama_sampler_chain_default_params())
        add = C.llama_sampler_chain_add
        seed = p.seed & 0xFFFFFFFF
        if p.penalties_active and "penalties" in p.samplers:
            add(chain, C.llama_sampler_init_penalties(
                self._n_vocab, p.repeat_last_n if p.repeat_last_n >= 0 else 4096,
                p.repeat_penalty, p.frequency_penalty, p.presence_penalty))
        if p.dry_active and "dry" in p.samplers:
            add(chain, self._dry(p))
        if p.mirostat == 1:
            add(chain, C.llama_sampler_init_temp(p.temperature))
            add(chain, C.llama_sampler_init_mirostat(self._n_vocab, seed, p.mirostat_tau,
                                                     p.mirostat_eta, 100))
            return chain
        if p.mirostat == 2:
            add(chain, C.llama_sampler_init_temp(p.temperature))
            add(chain, C.llama_sampler_init_mirostat_v2(seed, p.mirostat_tau, p.mirostat_eta))
            return chain
        if p.greedy:
            if p.xtc_active and "xtc" in p.samplers:  # it can remove the maximum, as in llama.cpp
                add(chain, C.llama_sampler_init_xtc(p.xtc_probability, p.xtc_threshold, 1, seed))
            add(chain, C.llama_sampler_init_greedy())
            return chain
        for name in p.samplers:
            if name == "top_k" and p.top_k > 0:
                add(chain, C.llama_sampler_init_top_k(p.top_k))
            elif name == "typ_p" and p.typical_p < 1.0:
                add(chain, C.llama_sampler_init_typical(p.typical_p, 1))
            elif name == "top_p" and p.top_p < 1.0:
                add(chain, C.llama_sampler_init_top_p(p.top_p, 1))
            elif name == "min_p" and p.min_p > 0.0:
                add(chain, C.llama_sampler_init_min_p(p.min_p, 1))
            elif name == "top_n_sigma" and p.top_n_sigma > 0.0:
                add(chain, C.llama_sampler_init_top_n_sigma(p.top_n_sigma))
            elif name == "xtc" and p.xtc_active:
                add(chain, C.llama_sampler_init_xtc(p.xtc_probability, p.xtc_threshold, 1, seed))
            elif name == "temperature" and p.dynatemp_range > 0.0:
                add(chain, C.llama_sampler_init_temp_ext(p.temperature, p.dynatemp_range,
                                                         p.dynatemp_exponent))
            elif name == "temperature":
                add(chain, C.llama_sampler_init_temp(p.temperature))
        add(chain, C.llama_sampler_init_dist(seed))
        return chain

    def _dry(self, p: SamplingParams) -> Any:
        """llama.cpp's DRY sampler; the breakers were checked by the request's schema
        (at most 16, 1-40 characters, no NUL) and are copied by llama.cpp."""
        breakers = [b.encode("utf-8") for b in p.dry_sequence_breakers]
        array = (ctypes.c_char_p * max(1, len(breakers)))(*breakers)
        last_n = p.dry_penalty_last_n if p.dry_penalty_last_n >= 0 else 4096
        return C.llama_sampler_init_dry(self._vocab, p.dry_multiplier, p.dry_base,
                                        p.dry_allowed_length, last_n, array, len(breakers))

    # --- the step ----------------------------------------------------------
    def sample(self, ctx: ctypes.c_void_p, row: int) -> Sampled | None:
        """Sample (and accept) the next token from batch row ``row`` of ``ctx``.

        Must run on the engine thread that owns ``ctx``, right after the decode.
        Returns None when the grammar rejected the chain's choice: the logits are
        copied and :meth:`resolve` (on any one thread) finishes the step, so a
        slow grammar pass never holds up the other slots' decoding.
        """
        ptr = C.llama_get_logits_ith(ctx, row)
        if not ptr:
            raise RuntimeError(f"no logits at batch row {row}")
        logits: npt.NDArray[np.float32] = np.ctypeslib.as_array(ptr, shape=(self._n_vocab,))
        if self._bias_ids.size:
            logits[self._bias_ids] += self._bias_vals
        if self._grammar is None and self._post_probs:
            token = int(np.argmax(logits)) if self._argmax else self._apply_chain(logits)
            C.llama_sampler_accept(self._chain, token)
            return self._with_probs(token, logits)
        if self._grammar is None:
            if self._argmax:
                token = int(np.argmax(logits))
                C.llama_sampler_accept(self._chain, token)
            else:
                token = int(C.llama_sampler_sample(self._chain, ctx, row))
            return self._with_probs(token, logits)
        token = int(np.argmax(logits)) if self._argmax else self._apply_chain(logits)
        if not self._allowed(token, logits):
            self.rejections += 1
            tracker = self._tracker
            inline = tracker is not None and tracker.width <= INLINE_MAX_STACKS
            ids = tracker.candidates() if tracker is not None and inline else None
            if ids is not None and len(ids) <= INLINE_CANDIDATES:
                # few tokens can pass: mask just those here, exactly as the full pass would
                narrowed = self._narrowed_pass(ids, logits)
                if narrowed is not None:
                    return self._accept(narrowed, logits)
                assert self._tracker is not None
                self._tracker.disable()
            self._pending = logits.copy()
            return None
        return self._accept(token, logits)

    def resolve(self) -> Sampled:
        """Finish a step :meth:`sample` left open: walk the best candidates, else the full pass."""
        logits = self._pending
        if logits is None:
            raise RuntimeError("no sampling step is pending")
        self._pending = None
        walked = self._walk(logits) if self._walk_ok else None
        if walked is None:
            walked = self._full_pass(logits)
            if walked is None:
                return Sampled(token=-1, grammar_exhausted=True)
        return self._accept(walked, logits)

    def _accept(self, token: int, logits: npt.NDArray[np.float32]) -> Sampled:
        C.llama_sampler_accept(self._chain, token)
        if token not in self._model.eog_ids:
            C.llama_sampler_accept(self._grammar, token)
            if self._tracker is not None:
                self._tracker.accept(token)
        return self._with_probs(token, logits)

    def _run(self, sampler: ctypes.c_void_p, cand: npt.NDArray[np.void], size: int) -> int:
        arr = _TokenDataArray(cand.ctypes.data, size, -1, False)
        C.llama_sampler_apply(sampler, ctypes.byref(arr))
        self._post = int(arr.size)
        return int(arr.selected)

    def _apply_chain(self, logits: npt.NDArray[np.float32]) -> int:
        cand = self._cand
        cand["id"] = self._ids
        cand["logit"] = logits
        selected = self._run(self._chain, cand, self._n_vocab)
        return int(cand["id"][selected])

    def _allowed(self, token: int, logits: npt.NDArray[np.float32]) -> bool:
        one = self._one
        one["id"][0] = token
        one["logit"][0] = 0.0
        arr = _TokenDataArray(one.ctypes.data, 1, -1, False)
        C.llama_sampler_apply(self._grammar, ctypes.byref(arr))
        return bool(np.isfinite(one["logit"][0])) and bool(np.isfinite(logits[token]))

    def _walk(self, logits: npt.NDArray[np.float32]) -> int | None:
        top = np.argpartition(logits, -WALK_CANDIDATES)[-WALK_CANDIDATES:]
        top = top[np.argsort(-logits[top], kind="stable")]
        need = 1 if self.params.greedy else self.params.top_k
        allowed: list[int] = []
        for token in top.tolist():
            if self._allowed(token, logits):
                allowed.append(token)
                if len(allowed) >= need:
                    break
        if len(allowed) < need:
            return None
        if self.params.greedy:
            return allowed[0]
        cand = self._cand
        n = len(allowed)
        cand["id"][:n] = allowed
        cand["logit"][:n] = logits[allowed]
        return int(cand["id"][self._run(self._chain, cand, n)])

    def _full_pass(self, logits: npt.NDArray[np.float32]) -> int | None:
        ids = self._tracker.candidates() if self._tracker is not None else None
        if ids is not None:
            token = self._narrowed_pass(ids, logits)
            if token is not None:
                return token
            assert self._tracker is not None
            self._tracker.disable()  # nothing passed: the Python state is off; trust llama.cpp
        self.full_passes += 1
        cand = self._cand
        cand["id"] = self._ids
        cand["logit"] = logits
        arr = _TokenDataArray(cand.ctypes.data, self._n_vocab, -1, False)
        C.llama_sampler_apply(self._grammar, ctypes.byref(arr))
        keep = np.isfinite(cand["logit"])
        n = int(keep.sum())
        if n == 0:
            return None
        cand[:n] = cand[keep]
        return int(cand["id"][self._run(self._chain, cand, n)])

    def _narrowed_pass(self, ids: npt.NDArray[np.int32], logits: npt.NDArray[np.float32]
                       ) -> int | None:
        """The full pass over ``ids`` only: the tokens that can pass, in ascending order, as the
        full pass leaves them, so the chain picks the same token."""
        cand = self._cand
        n = len(ids)
        cand["id"][:n] = ids
        cand["logit"][:n] = logits[ids]
        arr = _TokenDataArray(cand.ctypes.data, n, -1, False)
        C.llama_sampler_apply(self._grammar, ctypes.byref(arr))
        keep = np.isfinite(cand["logit"][:n])
        m = int(keep.sum())
        if m == 0:
            return None
        cand[:m] = cand[:n][keep]
        self.narrowed_passes += 1
        return int(cand["id"][self._run(self._chain, cand, m)])

    def _with_probs(self, token: int, logits: npt.NDArray[np.float32]) -> Sampled:
        n = self.params.n_probs
        if n <= 0:
            return Sampled(token=token)
        if self._post_probs:
            return self._post_sampling(token, n)
        finite = np.where(np.isfinite(logits), logits, -np.inf)
        peak = float(finite.max())
        log_z = peak + math.log(float(np.exp(finite - peak).sum()))
        n = min(n, self._n_vocab)
        top = np.argpartition(finite, -n)[-n:]
        top = top[np.argsort(-finite[top], kind="stable")]
        return Sampled(
            token=token,
            logprob=float(finite[token]) - log_z,
            top=tuple(TokenProb(int(t), float(finite[t]) - log_z) for t in top),
        )

    def _post_sampling(self, token: int, n: int) -> Sampled:
        """The chosen token's probability and the ``n`` most likely among what the chain left
        of the candidates (log-probabilities of them): a greedy pick had probability 1."""
        if self.params.greedy or self._argmax:
            return Sampled(token=token, logprob=0.0, top=(TokenProb(token, 0.0),))
        left = self._cand[: self._post]
        left = left[left["p"] > 0]
        order = np.argsort(-left["p"], kind="stable")[:n]
        chosen = left["p"][left["id"] == token]
        return Sampled(
            token=token, logprob=math.log(float(chosen[0])) if chosen.size else None,
            top=tuple(TokenProb(int(left["id"][i]), math.log(float(left["p"][i]))) for i in order))

    def close(self) -> None:
        if self._chain:
            C.llama_sampler_free(self._chain)
            self._chain = 0
        if self._grammar:
            C.llama_sampler_free(self._grammar)
            self._grammar = 0
