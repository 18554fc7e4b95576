"""Failures the local Lambda runtime injects, for tests: 429s, added latency, crashes, stragglers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hsds_backends.errors import ConfigError

__all__ = ["Faults"]


@dataclass
class Faults:
    """Failures to inject, consumed in order by the next invokes of one function.

    Attributes
    ----------
    throttle
        The next N invokes answer 429 ``TooManyRequestsException`` (``Reason``
        ``ConcurrentInvocationLimitExceeded``) without running.
    retry_after
        ``Retry-After`` seconds sent with injected 429s (0 = no header).
    latency_s
        Added before every invocation (counts towards the function timeout).
    crash
        The next N invocations kill their worker as it receives the event (``Runtime.ExitError``).
    straggle, straggle_s
        The next N invocations wait ``straggle_s`` before they run (counts towards the timeout,
        so ``straggle_s`` > ``timeout_s`` makes a ``Sandbox.Timedout``).
    """

    throttle: int = 0
    retry_after: float = 0.0
    latency_s: float = 0.0
    crash: int = 0
    straggle: int = 0
    straggle_s: float = 0.0

    def update(self, **changes: Any) -> None:
        """Set faults by name (values are cast to each field's type).

        Raises
        ------
        ConfigError
            A name that is not a fault.
        """
        for k, v in changes.items():
            if k not in self.__dataclass_fields__:
                raise ConfigError(f"unknown fault {k!r}; faults are {sorted(self.__dataclass_fields__)}")
            setattr(self, k, type(getattr(self, k))(v))

    def take_crash(self) -> bool:
        """Consume one scripted crash; return whether this invocation crashes."""
        if self.crash > 0:
            self.crash -= 1
            return True
        return False

    def take_delay(self) -> float:
        """Return the seconds this invocation waits before it runs (consumes one straggler)."""
        delay = self.latency_s
        if self.straggle > 0:
            self.straggle -= 1
            delay += self.straggle_s
        return delay

    def take_throttle(self) -> bool:
        """Consume one scripted 429; return whether this invoke is throttled."""
        if self.throttle > 0:
            self.throttle -= 1
            return True
        return False
