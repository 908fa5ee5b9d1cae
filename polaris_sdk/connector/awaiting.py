"""Later: an awaitable that makes its coroutine only once it is awaited.

What a begun call hands back (:meth:`AsyncNamingConnector.begin`,
``AioGrpcTransport.begin``): the request is already sent, the rest is a
coroutine made on the await. One that is dropped unawaited (its slot
cancelled by ``aclose()``) leaves no coroutine behind to be reported as
never awaited.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Generator
from typing import Any, Generic, TypeVar

__all__ = ["Later"]

T = TypeVar("T")


class Later(Generic[T]):
    """``await Later(fn, *args)`` is ``await fn(*args)``, ``fn`` called only then."""

    __slots__ = ("_args", "_fn")

    def __init__(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> None:
        self._fn = fn
        self._args = args

    def __await__(self) -> Generator[Any, None, T]:
        return self._fn(*self._args).__await__()

    def __repr__(self) -> str:
        name = getattr(self._fn, "__qualname__", None) or repr(self._fn)
        return f"<Later {name}>"
