"""given(events).when(command).then(events): decider tests without any I/O."""

from collections.abc import Callable
from typing import Any, Generic, TypeVar

import pytest

from core.errors import DomainError
from core.events import Event

S = TypeVar("S")


class Scenario(Generic[S]):
    def __init__(
        self,
        initial: S,
        decide: Callable[[Any, S], list[Event]],
        evolve: Callable[[S, Event, int], S],
    ) -> None:
        self._state = initial
        self._decide = decide
        self._evolve = evolve
        self._seq = 0
        self._command: Any = None

    def given(self, *events: Event) -> "Scenario[S]":
        for event in events:
            self._seq += 1
            self._state = self._evolve(self._state, event, self._seq)
        return self

    def when(self, command: Any) -> "Scenario[S]":
        self._command = command
        return self

    def then(self, *expected: Event) -> None:
        assert self._decide(self._command, self._state) == list(expected)

    def then_raises(self, error: type[DomainError], match: str | None = None) -> DomainError:
        with pytest.raises(error, match=match) as info:
            self._decide(self._command, self._state)
        return info.value
