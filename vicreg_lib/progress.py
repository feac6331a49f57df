"""A progress bar that looks right in a terminal and in a notebook.

``progress_bar`` is ``tqdm.auto.tqdm`` (a widget in Jupyter, text elsewhere). If tqdm is
not installed, or ``disable=True``, it returns a silent stand-in with the same methods,
so training code never has to check.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator


class _SilentBar:
    """The subset of tqdm's interface the package uses, doing nothing."""

    def __init__(self, iterable: Iterable | None = None, total: int | None = None, **_: Any) -> None:
        self.iterable = iterable
        self.total = total
        self.n = 0

    def __iter__(self) -> Iterator:
        for item in self.iterable or ():
            self.n += 1
            yield item

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, *_: Any, **__: Any) -> None:
        pass

    def set_description(self, *_: Any, **__: Any) -> None:
        pass

    def write(self, message: str) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "_SilentBar":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress_bar(
    iterable: Iterable | None = None,
    total: int | None = None,
    desc: str | None = None,
    disable: bool = False,
    **kwargs: Any,
):
    """tqdm.auto progress bar over ``iterable`` (or a manual one with ``total``)."""
    if disable:
        return _SilentBar(iterable, total=total)
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _SilentBar(iterable, total=total)
    return tqdm(iterable, total=total, desc=desc, dynamic_ncols=True, **kwargs)
