"""Accumulates a completion's events into llama.cpp's response objects.

Shared by the streaming and the non-streaming form of ``/completion`` so both
report exactly the same final object.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from app.bridge import StopReason
from app.engine.events import Done, Failed, Started, Token, TokenInfo
from app.engine.model import Model
from app.errors import JSON
from app.service import Prepared
from grammar import validate


def _prob_entry(model: Model, token: int, logprob: float) -> JSON:
    raw = model.piece(token)
    return {"id": token, "token": raw.decode("utf-8", "replace"), "bytes": list(raw),
            "logprob": logprob}


def probabilities(model: Model, infos: tuple[TokenInfo, ...]) -> list[JSON]:
    out = []
    for info in infos:
        entry = _prob_entry(model, info.token, info.logprob if info.logprob is not None else 0.0)
        entry["top_logprobs"] = [_prob_entry(model, p.token, p.logprob) for p in info.top]
        out.append(entry)
    return out


@dataclass
class CompletionState:
    """The running state of one completion as the client sees it."""

    job_id: int
    prepared: Prepared
    model: Model
    model_name: str
    prompt_text: str
    id_slot: int = -1
    tokens_cached: int = 0
    content: list[str] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    probs: list[JSON] = field(default_factory=list)
    done: Done | None = None
    failure: str | None = None

    def on_started(self, event: Started) -> None:
        self.id_slot = event.id_slot
        self.tokens_cached = event.tokens_cached

    def on_token(self, event: Token) -> JSON:
        """Record a token event; returns the stream partial for it."""
        self.content.append(event.text)
        ids = [t.token for t in event.tokens]
        self.tokens.extend(ids)
        partial: JSON = {"content": event.text, "tokens": ids, "stop": False,
                         "id_slot": self.id_slot, "id": self.job_id,
                         "tokens_predicted": len(self.tokens),
                         "tokens_evaluated": len(self.prepared.request.prompt)}
        if self.prepared.sampling.n_probs > 0 and event.tokens:
            probs = probabilities(self.model, event.tokens)
            self.probs.extend(probs)
            partial["completion_probabilities"] = probs
        return partial

    def on_event(self, event: Started | Token | Done | Failed) -> JSON | None:
        match event:
            case Started():
                self.on_started(event)
            case Token():
                return self.on_token(event)
            case Done():
                self.done = event
            case Failed(message=message):
                self.failure = message
        return None

    def final(self, stop_reason: StopReason | None = None) -> JSON:
        done = self.done
        prep = self.prepared
        content = "".join(self.content)
        stop_type = done.stop_type.value if done is not None else "none"
        predicted_ms = done.predicted_ms if done else 0.0
        prompt_ms = done.prompt_ms if done else 0.0
        prompt_n = done.prompt_n if done else 0
        n_pred = len(self.tokens)
        s = prep.sampling
        out: JSON = {
            "id": self.job_id,
            "content": content,
            "tokens": list(self.tokens),
            "id_slot": self.id_slot,
            "stop": True,
            "model": self.model_name,
            "tokens_predicted": n_pred,
            "tokens_evaluated": len(prep.request.prompt),
            "tokens_cached": self.tokens_cached,
            "prompt": self.prompt_text,
            "has_new_line": "\n" in content,
            "truncated": bool(done and done.truncated),
            "stop_type": stop_type,
            "stopped_eos": stop_type == "eos",
            "stopped_word": stop_type == "word",
            "stopped_limit": stop_type == "limit",
            "stopping_word": done.stopping_word if done else "",
            "generation_settings": {
                "n_predict": prep.request.n_predict, "seed": s.seed,
                "temperature": s.temperature, "top_k": s.top_k, "top_p": s.top_p,
                "min_p": s.min_p, "typical_p": s.typical_p, "repeat_penalty": s.repeat_penalty,
                "repeat_last_n": s.repeat_last_n, "presence_penalty": s.presence_penalty,
                "frequency_penalty": s.frequency_penalty, "mirostat": s.mirostat,
                "mirostat_tau": s.mirostat_tau, "mirostat_eta": s.mirostat_eta,
                "ignore_eos": s.ignore_eos, "n_probs": s.n_probs, "samplers": list(s.samplers),
                "stop": list(prep.request.stops), "cache_prompt": prep.request.cache_prompt,
                "grammar": prep.grammar or "", "n_keep": prep.params.n_keep,
            },
            "timings": {
                "prompt_n": prompt_n,
                "prompt_ms": prompt_ms,
                "prompt_per_token_ms": prompt_ms / prompt_n if prompt_n else 0.0,
                "prompt_per_second": prompt_n * 1000.0 / prompt_ms if prompt_ms else 0.0,
                "predicted_n": n_pred,
                "predicted_ms": predicted_ms,
                "predicted_per_token_ms": predicted_ms / n_pred if n_pred else 0.0,
                "predicted_per_second": n_pred * 1000.0 / predicted_ms if predicted_ms else 0.0,
            },
        }
        if stop_reason is not None:
            out[stop_reason.value] = True
        if done is not None and prep.grammar is not None:
            out["grammar_stats"] = {"rejections": done.grammar_rejections,
                                    "full_passes": done.grammar_full_passes}
        if s.n_probs > 0:
            out["completion_probabilities"] = self.probs
        if prep.schema is not None:
            result = validate(content, prep.schema)
            out["schema_valid"] = result.valid
            out["schema_errors"] = [e.as_dict() for e in result.errors]
        return out
