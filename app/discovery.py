"""The models a server can serve, found from its settings: ``--model`` (or the embedded
Gemma), the config file's ``models``, the embedded models and ``--models-dir``'s files.

Pure: it reads the models directory and builds :class:`ModelSpec` values; what is loaded,
and when, is :mod:`app.registry`'s.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from app.settings import MODEL_FIELDS, Settings


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A model the server can load: its name, its file, other names, its own settings."""

    name: str
    path: Path
    aliases: tuple[str, ...] = ()
    overrides: tuple[tuple[str, Any], ...] = ()
    tags: tuple[str, ...] = ()  # informational (llama.cpp's --tags), listed by /v1/models
    #: LoRA adapters (file, scale): --lora's belong to the --model model alone
    lora: tuple[tuple[Path, float], ...] = ()
    #: named in ``/v1/models`` (and Ollama's tags) even while unloaded; an embedded model
    #: beside an explicit ``--model`` is not (a request may still name it, and it loads)
    listed: bool = True
    #: the ``aliases`` /v1/models shows, when not ``aliases`` (--alias: all its names, the
    #: model's own included, as llama.cpp lists them; file names route but are not shown)
    shown_aliases: tuple[str, ...] | None = None

    def settings(self, base: Settings) -> Settings:
        """The server's settings with this model's own."""
        return replace(base, model_path=self.path, lora=self.lora, **dict(self.overrides))

    def with_overrides(self, **values: Any) -> ModelSpec:
        unknown = set(values) - set(MODEL_FIELDS)
        if unknown:
            raise ValueError(f"not a per-model setting: {sorted(unknown)}")
        merged = {**dict(self.overrides), **values}
        return replace(self, overrides=tuple(sorted(merged.items())))

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


def specs_from_settings(settings: Settings, embedded: dict[str, Path]
                        ) -> tuple[list[ModelSpec], str | None, bool]:
    """The models a server with ``settings`` knows: ``(specs, default name, router mode)``.

    ``embedded`` maps the embedded models' short names to their files (those that are
    installed). The started model (``--model``, else the embedded Gemma when no model
    option is given) comes first and is the default; its name is ``--alias``, else the
    short name it was given by, else its file name. Config-file models follow, then the
    embedded ones under their short names (listed only without ``--model`` or in router mode),
    then every ``*.gguf`` in ``--models-dir``
    under its file name (alias: the name without ``.gguf``).
    """
    router = settings.models_dir is not None or bool(settings.models)
    specs: list[ModelSpec] = []
    default: str | None = None
    by_path: set[Path] = set()

    def add(spec: ModelSpec) -> None:
        if any(spec.name == s.name for s in specs):
            return
        specs.append(spec)
        by_path.add(spec.path.resolve())

    short = {path.resolve(): name for name, path in embedded.items()}
    if settings.model_path is not None or not router:
        path = settings.model_path
        if path is None:
            path = embedded["gemma3-270m"]
        elif str(path) in embedded and not path.exists():
            path = embedded[str(path)]
        given = str(settings.model_path) if settings.model_path is not None else ""
        # llama.cpp's --alias a,b,c: the model is named by the first in order and answers to
        # all of them; its file (and embedded) names stay aliases, so routing by them works
        name = settings.alias_names[0] if settings.alias_names else (
            given if given in embedded else path.name)
        aliases = tuple(dict.fromkeys(
            a for a in (*settings.alias_names, path.name, path.stem, short.get(path.resolve(), ""))
            if a and a != name))
        add(ModelSpec(name, path, aliases, tags=settings.tags, lora=settings.lora,
                      shown_aliases=settings.alias_names or None))
        default = name
    for config in settings.models:
        path = config.path
        if str(path) in embedded and not path.exists():
            path = embedded[str(path)]
        elif not path.is_absolute() and not path.exists() and settings.models_dir is not None:
            path = settings.models_dir / path
        add(ModelSpec(config.name, path, config.aliases, config.overrides))
    # the embedded models are always routable by name; they are listed out of the box (no
    # --model) and in router mode, and not beside a model the operator chose, where a
    # llama.cpp client expects one model in /v1/models
    listed = router or settings.model_path is None
    for name, path in embedded.items():
        if path.resolve() not in by_path:
            add(ModelSpec(name, path, (path.name,), listed=listed))
    specs.extend(directory_specs(settings.models_dir, by_path, {s.name for s in specs}))
    return linked_names(settings.models_dir, specs), default, router


def linked_names(directory: Path | None, specs: list[ModelSpec]) -> list[ModelSpec]:
    """A file of ``directory`` that is a known model's file (a link to it, or the file a
    config model names) gives that model its names as aliases, rather than being dropped
    (its name used to answer 404)."""
    if directory is None:
        return specs
    try:
        files = sorted(p for p in directory.iterdir() if p.suffix == ".gguf" and p.is_file())
    except OSError:
        return specs
    taken = {n for s in specs for n in s.names}
    index = {s.path.resolve(): i for i, s in enumerate(specs)}
    out = list(specs)
    for path in files:
        i = index.get(path.resolve())
        new = tuple(n for n in dict.fromkeys((path.name, path.stem)) if n not in taken)
        if i is not None and new:
            out[i] = replace(out[i], aliases=(*out[i].aliases, *new))
            taken.update(new)
    return out


def directory_specs(directory: Path | None, known_paths: set[Path] | None = None,
                    known_names: set[str] | None = None) -> list[ModelSpec]:
    """A spec for each ``*.gguf`` file in ``directory`` not already known."""
    if directory is None:
        return []
    out = []
    try:  # files before links to them: a model is named by its file, links are aliases
        files = sorted((p for p in directory.iterdir() if p.suffix == ".gguf" and p.is_file()),
                       key=lambda p: (p.is_symlink(), p.name))
    except OSError:
        return []
    seen = set(known_paths or ())
    for path in files:
        if path.resolve() in seen or (known_names is not None and path.name in known_names):
            continue
        seen.add(path.resolve())
        out.append(ModelSpec(path.name, path, (path.stem,)))
    return out
