"""Drift: the weekly positive rate of a device version in a region against the band of its
first weeks.

The rule is a p-chart (the binomial control chart):

- a study's week is the calendar week (Monday 00:00 UTC) of its first processed job by the
  device version in the region; a study is positive when any of those jobs has a positive
  finding;
- the **baseline** is the device version's first ``baseline_weeks`` calendar weeks in the
  region, counted from the week of its first study (empty weeks count); its rate p̄ is
  positives ÷ studies over those weeks, and it needs at least ``min_week_studies`` studies,
  else there is no baseline yet;
- each later week with at least ``min_week_studies`` studies has the band
  p̄ ± ``sigmas`` · √(p̄(1 − p̄) / n), n its studies (clipped to [0, 1]); weeks with fewer
  studies are shown but not judged;
- the **signal** is on when the latest judged week is outside its band.

Defaults (settings ``drift_baseline_weeks``, ``drift_sigmas``, ``drift_min_week_studies``):
4 weeks, 3 σ, 20 studies — a false alarm about once in 370 judged weeks for a device that
has not changed (the normal approximation); against a baseline of 10 % a week of 40 studies
is judged outside above 24 %.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum

from pydantic import BaseModel, ConfigDict

from gateway.settings import Settings

SHOWN_WEEKS = 12  # the latest weeks after the baseline that a signal lists


class DriftState(StrEnum):
    NO_BASELINE = "no_baseline"  # too few studies in the first weeks (or none yet)
    IN_BAND = "in_band"
    DRIFT = "drift"


@dataclass(frozen=True)
class DriftParams:
    baseline_weeks: int = 4
    sigmas: float = 3.0
    min_week_studies: int = 20

    @classmethod
    def of(cls, settings: Settings) -> DriftParams:
        return cls(
            settings.drift_baseline_weeks, settings.drift_sigmas, settings.drift_min_week_studies
        )

    def rule(self) -> str:
        return (
            f"weekly positive rate outside p̄ ± {self.sigmas:g}·√(p̄(1−p̄)/n), p̄ from the first "
            f"{self.baseline_weeks} weeks; weeks of at least {self.min_week_studies} studies"
        )


class WeekRate(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    start: date  # Monday
    studies: int
    positive: int
    rate: float
    low: float | None  # the band; None for a week with too few studies to judge
    high: float | None
    outside: bool


class DriftSignal(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    state: DriftState
    baseline_rate: float | None
    baseline_studies: int
    baseline_from: date | None
    baseline_to: date | None  # the Monday after the baseline's last week
    weeks: list[WeekRate]  # after the baseline, the latest SHOWN_WEEKS
    rule: str


def week_of(moment: datetime) -> date:
    """The Monday (UTC) of ``moment``'s calendar week."""
    day = moment.astimezone(UTC).date()
    return day - timedelta(days=day.weekday())


def assess(studies: Iterable[tuple[datetime, bool]], params: DriftParams) -> DriftSignal:
    """The drift signal of one device version in one region from its studies: (when first
    processed, positive)."""
    weeks: dict[date, list[int]] = {}
    for at, positive in studies:
        counts = weeks.setdefault(week_of(at), [0, 0])
        counts[0] += 1
        counts[1] += int(positive)
    if not weeks:
        return DriftSignal(
            state=DriftState.NO_BASELINE,
            baseline_rate=None,
            baseline_studies=0,
            baseline_from=None,
            baseline_to=None,
            weeks=[],
            rule=params.rule(),
        )
    first = min(weeks)
    end = first + timedelta(weeks=params.baseline_weeks)
    base_n = sum(n for start, (n, _) in weeks.items() if start < end)
    base_pos = sum(p for start, (_, p) in weeks.items() if start < end)
    rate = base_pos / base_n if base_n >= params.min_week_studies else None
    later = [
        _week(start, n, p, rate, params) for start, (n, p) in sorted(weeks.items()) if start >= end
    ]
    judged = [week for week in later if week.low is not None]
    if rate is None:
        state = DriftState.NO_BASELINE
    elif judged and judged[-1].outside:
        state = DriftState.DRIFT
    else:
        state = DriftState.IN_BAND
    return DriftSignal(
        state=state,
        baseline_rate=rate,
        baseline_studies=base_n,
        baseline_from=first,
        baseline_to=end,
        weeks=later[-SHOWN_WEEKS:],
        rule=params.rule(),
    )


def _week(start: date, n: int, positive: int, p: float | None, params: DriftParams) -> WeekRate:
    rate = positive / n
    if p is None or n < params.min_week_studies:
        return WeekRate(
            start=start,
            studies=n,
            positive=positive,
            rate=rate,
            low=None,
            high=None,
            outside=False,
        )
    half = params.sigmas * math.sqrt(p * (1 - p) / n)
    low, high = max(0.0, p - half), min(1.0, p + half)
    return WeekRate(
        start=start,
        studies=n,
        positive=positive,
        rate=rate,
        low=low,
        high=high,
        outside=not low <= rate <= high,
    )
