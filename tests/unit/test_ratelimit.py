"""TokenBucket: bursts, refusal, refill over time and the strike count."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from chatsvc.ratelimit import TokenBucket


def test_a_full_bucket_allows_a_burst_then_refuses() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [True, True, True]
    assert bucket.take(0.0) is False


def test_tokens_refill_at_the_configured_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    for _ in range(3):
        assert bucket.take(0.0)
    assert bucket.take(0.25) is False  # half a token so far
    assert bucket.take(0.5) is True  # one whole token after 0.5 s at 2/s
    assert bucket.take(0.5) is False


def test_refill_is_capped_at_the_burst_size() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    for _ in range(3):
        assert bucket.take(0.0)
    # A long pause refills to the burst, not to rate * pause.
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]


def test_a_clock_going_backwards_does_not_add_tokens() -> None:
    bucket = TokenBucket(rate=1.0, burst=1, now=10.0)
    assert bucket.take(10.0)
    assert bucket.take(5.0) is False
    assert bucket.tokens == 0.0


def test_strikes_count_refusals_in_a_row() -> None:
    bucket = TokenBucket(rate=1.0, burst=1, now=0.0)
    assert bucket.take(0.0)
    assert bucket.strikes == 0
    for expected in (1, 2, 3):
        assert bucket.take(0.0) is False
        assert bucket.strikes == expected


def test_an_accepted_line_resets_the_strikes() -> None:
    bucket = TokenBucket(rate=1.0, burst=1, now=0.0)
    bucket.take(0.0)
    bucket.take(0.0)
    bucket.take(0.0)
    assert bucket.strikes == 2
    assert bucket.take(1.0) is True
    assert bucket.strikes == 0


@settings(max_examples=200)
@given(
    rate=st.sampled_from([0.5, 1.0, 2.0, 5.0, 10.0]),
    burst=st.integers(min_value=1, max_value=20),
    steps=st.lists(st.floats(min_value=0.0, max_value=2.0), max_size=60),
)
def test_accepted_lines_never_exceed_burst_plus_rate_times_elapsed(
    rate: float, burst: int, steps: list[float]
) -> None:
    bucket = TokenBucket(rate=rate, burst=burst, now=0.0)
    now = 0.0
    accepted = 0
    refused_in_a_row = 0
    for step in steps:
        now += step
        if bucket.take(now):
            accepted += 1
            refused_in_a_row = 0
        else:
            refused_in_a_row += 1
        assert accepted <= burst + rate * now + 1e-9
        assert 0.0 <= bucket.tokens <= burst
        assert bucket.strikes == refused_in_a_row
