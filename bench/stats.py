"""Latency histogram that is cheap to update and to merge across processes.

Values are integer microseconds. Buckets are log-linear (64 per power of two),
so a percentile is off by at most 1/64 (about 1.6 %); the maximum is exact.
"""

from __future__ import annotations

from typing import Optional

_SUB_BITS = 6
_SUB = 1 << _SUB_BITS  # 64
_LINEAR = _SUB * 2  # values below 128 get a bucket each
_BUCKETS = 2048  # covers up to 2**37 us (about 38 hours)


def _bucket(value: int) -> int:
    if value < _LINEAR:
        return value if value > 0 else 0
    shift = value.bit_length() - (_SUB_BITS + 1)
    index = _LINEAR + (shift - 1) * _SUB + ((value >> shift) - _SUB)
    return index if index < _BUCKETS else _BUCKETS - 1


def _upper(index: int) -> int:
    """Largest value that falls into bucket ``index``."""
    if index < _LINEAR:
        return index
    shift = (index - _LINEAR) // _SUB + 1
    mantissa = (index - _LINEAR) % _SUB + _SUB
    return ((mantissa + 1) << shift) - 1


class Histogram:
    """Counts of integer microsecond values."""

    __slots__ = ("counts", "max", "sum", "total")

    def __init__(self) -> None:
        self.counts: list[int] = [0] * _BUCKETS
        self.total = 0
        self.sum = 0
        self.max = 0

    def add(self, value_us: int) -> None:
        self.counts[_bucket(value_us)] += 1
        self.total += 1
        self.sum += value_us
        if value_us > self.max:
            self.max = value_us

    def merge(self, other: Histogram) -> None:
        counts = self.counts
        for index, count in enumerate(other.counts):
            if count:
                counts[index] += count
        self.total += other.total
        self.sum += other.sum
        self.max = max(self.max, other.max)

    def percentile(self, fraction: float) -> Optional[int]:
        """Upper bound of the bucket holding the given fraction, capped at the max."""
        if self.total == 0:
            return None
        rank = max(1, int(fraction * self.total + 0.999999))
        seen = 0
        for index, count in enumerate(self.counts):
            seen += count
            if seen >= rank:
                return min(_upper(index), self.max)
        return self.max

    def to_wire(self) -> dict[str, object]:
        sparse = {index: count for index, count in enumerate(self.counts) if count}
        return {"counts": sparse, "total": self.total, "sum": self.sum, "max": self.max}

    @classmethod
    def from_wire(cls, data: dict[str, object]) -> Histogram:
        hist = cls()
        counts = data["counts"]
        assert isinstance(counts, dict)
        for index, count in counts.items():
            hist.counts[int(index)] = int(count)
        hist.total = _as_int(data["total"])
        hist.sum = _as_int(data["sum"])
        hist.max = _as_int(data["max"])
        return hist

    def summary_ms(self) -> dict[str, Optional[float]]:
        """p50, p99, max and mean in milliseconds (None when empty)."""

        def ms(value: Optional[int]) -> Optional[float]:
            return None if value is None else round(value / 1000.0, 3)

        mean = None if self.total == 0 else self.sum / self.total
        return {
            "p50_ms": ms(self.percentile(0.50)),
            "p99_ms": ms(self.percentile(0.99)),
            "max_ms": ms(self.max if self.total else None),
            "mean_ms": None if mean is None else round(mean / 1000.0, 3),
        }


def _as_int(value: object) -> int:
    assert isinstance(value, int)
    return value
