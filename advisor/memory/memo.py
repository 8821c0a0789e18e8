"""The memo of memory estimates' pieces: an explicit object the caller holds for one search
or one command (:class:`MemoryMemo`), never module state."""

from __future__ import annotations

from collections.abc import Callable
from typing import Concatenate, ParamSpec, TypeVar, cast

from advisor.memory.derived import MemoryModel, as_model
from advisor.model.spec import ModelSpec

_P = ParamSpec("_P")
_R = TypeVar("_R")


class MemoryMemo:
    """Pieces of one model's memory estimates, kept for as long as the caller holds this.

    NOTE: the plan search estimates each layout and optimizer at many micro-batches and
    memory savers, and the same model's activations under many savers and shardings. An
    entry is keyed by the function and every argument it is given besides the model; those
    functions read nothing else (their arguments are immutable values: ints, enums,
    frozensets, frozen records), so the key is their whole input and no hand-kept field
    list decides when an entry is stale. The plan search holds one per command
    (:attr:`advisor.plan.space.Context.memory_memo`); an estimate asked without one builds
    a fresh one and gets the same numbers.

    Attributes:
        model: the model whose pieces are kept.
    """

    def __init__(self, spec: ModelSpec | MemoryModel) -> None:
        self.model = as_model(spec)
        self._results: dict[tuple[object, ...], object] = {}

    def __len__(self) -> int:
        """The pieces held."""
        return len(self._results)

    def call(
        self, fn: Callable[Concatenate[MemoryModel, _P], _R], /, *args: _P.args, **kwargs: _P.kwargs
    ) -> _R:
        """``fn(self.model, *args, **kwargs)``, computed once per distinct argument values.

        Args:
            fn: a pure function of the model and hashable, immutable arguments.
            *args: its other positional arguments.
            **kwargs: its keyword arguments.

        Returns:
            What ``fn`` returns (shared between callers: an int or an immutable value).
        """
        # NOTE: the search makes ~20k calls per command; most pass no keywords.
        key = (fn, args, tuple(kwargs.items())) if kwargs else (fn, args)
        hit = self._results.get(key)
        if hit is None:
            hit = self._results[key] = fn(self.model, *args, **kwargs)
        return cast(_R, hit)

    def call_with_memo(
        self, fn: Callable[Concatenate[MemoryMemo, _P], _R], /, *args: _P.args, **kwargs: _P.kwargs
    ) -> _R:
        """``fn(self, *args, **kwargs)``, computed once per distinct argument values: for a
        function that memoises its own pieces here too.

        Args:
            fn: a pure function of the memo's model and hashable, immutable arguments.
            *args: its other positional arguments.
            **kwargs: its keyword arguments.

        Returns:
            What ``fn`` returns (shared between callers: an int or an immutable value).
        """
        key = (fn, args, tuple(kwargs.items())) if kwargs else (fn, args)
        hit = self._results.get(key)
        if hit is None:
            hit = self._results[key] = fn(self, *args, **kwargs)
        return cast(_R, hit)


def memo_for(spec: ModelSpec | MemoryModel, memo: MemoryMemo | None) -> MemoryMemo:
    """``memo``, checked to hold ``spec``'s pieces, or a fresh one when it is None.

    Raises:
        ValueError: when ``memo`` was built for another model spec (a caller's bug).
    """
    if memo is None:
        return MemoryMemo(spec)
    wanted = spec.spec if isinstance(spec, MemoryModel) else spec
    if memo.model.spec is not wanted:
        raise ValueError(f"a memo of {memo.model.spec.id} was passed for {wanted.id}")
    return memo
