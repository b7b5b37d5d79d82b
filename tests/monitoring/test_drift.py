"""The drift rule: a p-chart of the weekly positive rate against the first weeks' band."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gateway.monitoring.drift import DriftParams, DriftState, assess, week_of

MONDAY = datetime(2026, 9, 7, 10, tzinfo=UTC)


def _weeks(*weekly: tuple[int, int]) -> list[tuple[datetime, bool]]:
    """(studies, positive) per consecutive week from MONDAY, as (when, positive) studies."""
    studies = []
    for week, (n, positive) in enumerate(weekly):
        start = MONDAY + timedelta(weeks=week)
        studies += [(start + timedelta(hours=i), i < positive) for i in range(n)]
    return studies


def test_a_week_outside_the_band_of_the_first_weeks_raises_the_signal() -> None:
    params = DriftParams(baseline_weeks=4, sigmas=3.0, min_week_studies=20)
    # Baseline: 4 weeks at 10 % (p̄ = 0.1 over 160 studies); then 12 %, then 30 %.
    steady = assess(_weeks((40, 4), (40, 4), (40, 4), (40, 4), (40, 5)), params)
    assert steady.state == DriftState.IN_BAND and steady.baseline_rate == 0.1
    assert steady.baseline_studies == 160 and steady.baseline_from == MONDAY.date()
    (week,) = steady.weeks
    assert week.low == 0.0 and abs((week.high or 0) - 0.2423) < 1e-3  # 0.1 + 3·√(0.09/40)
    drifted = assess(_weeks((40, 4), (40, 4), (40, 4), (40, 4), (40, 5), (40, 12)), params)
    assert drifted.state == DriftState.DRIFT
    assert [w.outside for w in drifted.weeks] == [False, True]
    # Back in the band: the signal follows the latest judged week.
    recovered = assess(_weeks((40, 4), (40, 4), (40, 4), (40, 4), (40, 12), (40, 4)), params)
    assert recovered.state == DriftState.IN_BAND


def test_small_weeks_are_shown_but_not_judged_and_a_thin_baseline_is_none() -> None:
    params = DriftParams(baseline_weeks=2, sigmas=3.0, min_week_studies=20)
    small = assess(_weeks((30, 3), (30, 3), (5, 5)), params)
    assert small.state == DriftState.IN_BAND
    assert small.weeks[-1].rate == 1.0 and small.weeks[-1].low is None
    thin = assess(_weeks((5, 1), (5, 1), (40, 40)), params)
    assert thin.state == DriftState.NO_BASELINE and thin.baseline_rate is None
    assert assess([], params).state == DriftState.NO_BASELINE


def test_weeks_start_on_monday_in_utc() -> None:
    sunday_night_moscow = datetime(2026, 9, 13, 22, 30, tzinfo=UTC)  # Monday 01:30 in Moscow
    assert week_of(sunday_night_moscow) == MONDAY.date()
    assert week_of(MONDAY + timedelta(days=7)) == (MONDAY + timedelta(days=7)).date()
