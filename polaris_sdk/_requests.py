"""The facades' calling convention: a request object, or the same fields as keywords.

Contract: :func:`coerce_request` is pure and thread-safe. Misuse is a
programming error, so it raises :class:`TypeError` (not a
:class:`~polaris_sdk.errors.PolarisError`): both forms at once, an object of
the wrong type, or a keyword the request dataclass has no field for. The
values themselves are not checked here; the facades validate them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields as dataclass_fields
from typing import Any, TypeVar

__all__ = ["coerce_request"]

R = TypeVar("R")


def coerce_request(cls: type[R], request: R | None, values: Mapping[str, Any]) -> R:
    """``request`` as given, or a ``cls`` built from the keyword ``values``."""
    if request is not None:
        if values:
            raise TypeError(f"pass a {cls.__name__} or keyword fields, not both")
        if not isinstance(request, cls):
            raise TypeError(f"expected a {cls.__name__}, got {type(request).__name__}")
        return request
    try:
        return cls(**values)
    except TypeError as exc:
        # Only on the error path: naming the unknown field costs a scan of the fields.
        names = {f.name for f in dataclass_fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - names)
        if unknown:
            raise TypeError(f"{cls.__name__} has no field {unknown[0]!r}") from None
        raise TypeError(f"{cls.__name__}: {exc}") from None
