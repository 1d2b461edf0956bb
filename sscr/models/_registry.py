"""Registry of backbones by name (as in timm): a new backbone is one module plus one decorator."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from torch import nn

from sscr.config import MODEL_ALIASES

ModelClass = TypeVar("ModelClass", bound=type[nn.Module])

_MODELS: dict[str, type[nn.Module]] = {}
ALIASES: dict[str, str] = MODEL_ALIASES
"""Other names accepted for a backbone (``sscr`` = ``multisarv2``, the paper's name for the seed's network)."""


def register_model(name: str) -> Callable[[ModelClass], ModelClass]:
    """Class decorator: make the backbone buildable as ``build_model(name, ...)``."""

    def decorator(cls: ModelClass) -> ModelClass:
        if name in _MODELS or name in ALIASES:
            raise ValueError(f"a model named {name!r} is already registered ({_MODELS.get(name)})")
        cls.model_name = name
        _MODELS[name] = cls
        return cls

    return decorator


def resolve_name(name: str) -> str:
    """The registered name for ``name`` (aliases resolved); ValueError listing the names otherwise."""
    name = ALIASES.get(name, name)
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(list_models())}")
    return name


def model_class(name: str) -> type[nn.Module]:
    """The class registered under ``name`` (or its alias)."""
    return _MODELS[resolve_name(name)]


def list_models() -> list[str]:
    """Registered model names, sorted (aliases not included)."""
    return sorted(_MODELS)
