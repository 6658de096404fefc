"""Per-client flood control: a token bucket plus a strike count (pure logic)."""

from __future__ import annotations


class TokenBucket:
    """``rate`` lines per second on average, bursts of up to ``burst``.

    ``strikes`` counts lines refused in a row; an accepted line resets it.
    """

    __slots__ = ("burst", "last", "rate", "strikes", "tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.last = now
        self.strikes = 0

    def take(self, now: float) -> bool:
        """Spend one token if there is one; count a strike if not."""
        elapsed = now - self.last
        self.last = now
        if elapsed > 0:
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            self.strikes = 0
            return True
        self.strikes += 1
        return False
