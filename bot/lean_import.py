"""aiogram's Bot API models built when first used, not all at import.

Importing `aiogram.types` calls `model_rebuild` on each of its ~450 models with the namespace of all of
them, which builds every validator and serializer of the Bot API at once: about 100 MB resident, most
of it for types this bot never sees. The models are declared `defer_build=True` already; `defer()`
keeps that promise: the rebuilds at import only note aiogram's namespace, and a model is built on its
first use (pydantic does that by itself), resolving its references in that namespace.

Call `defer()` before anything imports aiogram (`python -m bot` does); afterwards it changes nothing.
A model built late is built once, taking a few milliseconds the first time it is used.
"""

from __future__ import annotations

import inspect
import sys
from typing import Any

from pydantic import BaseModel

_namespace: dict[str, Any] = {}
_installed = False


def _aiogram_model(cls: type) -> bool:
    return cls.__module__.partition(".")[0] == "aiogram"


def defer() -> bool:
    """Install the deferral; False (and nothing changed) if aiogram is imported already or pydantic's
    `model_rebuild` no longer takes the arguments relied on here."""
    global _installed
    if _installed:
        return True
    if "aiogram" in sys.modules:
        return False
    original = BaseModel.model_rebuild.__func__  # type: ignore[attr-defined]
    parameters = inspect.signature(original).parameters
    if not {"_types_namespace", "_parent_namespace_depth", "force"} <= set(parameters):
        return False
    default_depth = parameters["_parent_namespace_depth"].default

    def model_rebuild(cls: type[BaseModel], *args: Any, **kwargs: Any) -> bool | None:
        if _aiogram_model(cls):
            namespace = kwargs.get("_types_namespace")
            if namespace is not None and not kwargs.get("force") and not cls.__pydantic_complete__:
                # aiogram's import: remember the names, build on first use.
                _namespace.update(namespace)
                return None
            if namespace is None and _namespace:
                kwargs["_types_namespace"] = _namespace
        elif (depth := kwargs.get("_parent_namespace_depth", default_depth)) > 0:
            # One frame more between the caller and pydantic, which looks names up in the caller's.
            kwargs["_parent_namespace_depth"] = depth + 1
        result: bool | None = original(cls, *args, **kwargs)
        return result

    BaseModel.model_rebuild = classmethod(model_rebuild)  # type: ignore[method-assign, assignment]
    _installed = True
    return True
