"""rooms.telemetry: histograms bucket like Prometheus (le), and a drain hands over what was
counted while whoever holds the counters (the host's timed SQL) keeps counting into them."""

from __future__ import annotations

from rooms.telemetry import Histogram, Telemetry, analytics_points


def test_a_value_lands_in_the_first_bucket_whose_bound_is_at_least_it() -> None:
    histogram = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 1.0, 7.0):
        histogram.observe(value)
    assert histogram.counts == [2, 2, 1]
    assert histogram.count == 5
    assert histogram.sum == 8.65


def test_drain_takes_everything_and_keeps_the_same_histograms_counting() -> None:
    telemetry = Telemetry()
    held = telemetry.write_time  # as TimedSql holds it
    telemetry.messages_published = 3
    telemetry.rejected("bad_json")
    telemetry.closed(1000)
    held.observe(0.001)
    taken = telemetry.drain()
    assert (taken.messages_published, taken.rejections, taken.connections_closed) == (
        3, {"bad_json": 1}, {1000: 1})
    assert taken.write_time.count == 1
    assert (telemetry.messages_published, telemetry.rejections, telemetry.write_time.count) == (
        0, {}, 0)
    held.observe(0.002)
    assert telemetry.drain().write_time.count == 1
    assert analytics_points("lobby", telemetry.drain()) == []  # nothing happened: no point
