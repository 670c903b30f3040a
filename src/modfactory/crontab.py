"""Cron expressions (MODFACTORY_RETRAIN_CRON) turned into arq's cron field sets.

Five fields ``minute hour day month weekday`` as in crontab, or six with ``second`` first
(as Spring and node-cron write them) for schedules finer than a minute. Each field takes
``*``, numbers, ranges ``a-b``, steps ``*/n`` and ``a-b/n``, lists ``a,b``, and month and
weekday names (``jan``, ``mon-fri``); ``@hourly``, ``@daily``, ``@weekly``, ``@monthly``
and ``@yearly`` are shorthands. Sunday is 0 or 7.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator

_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
_DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
# name, lowest, highest, names (numbered from the lowest)
_FIELDS = {
    "second": (0, 59, ()),
    "minute": (0, 59, ()),
    "hour": (0, 23, ()),
    "day": (1, 31, ()),
    "month": (1, 12, _MONTHS),
    "weekday": (0, 7, _DAYS),
}


class CronError(ValueError):
    """The expression is not a schedule; the message names the field at fault."""


@dataclass(frozen=True)
class CronSchedule:
    """One set of allowed values per field (None: any value)."""

    expression: str
    second: frozenset[int] | None
    minute: frozenset[int] | None
    hour: frozenset[int] | None
    day: frozenset[int] | None
    month: frozenset[int] | None
    weekday: frozenset[int] | None  # Python's numbering: Monday 0 … Sunday 6

    def arq_fields(self) -> dict[str, set[int] | None]:
        """Keyword arguments for ``arq.cron``."""
        names = ("second", "minute", "hour", "day", "month", "weekday")
        return {n: None if getattr(self, n) is None else set(getattr(self, n)) for n in names}

    def next_times(self, after: datetime, count: int = 3) -> list[datetime]:
        """The next ``count`` ticks after ``after``, computed as arq's worker does."""
        from arq.cron import next_cron

        ticks, at = [], after
        for _ in range(count):
            at = next_cron(at, **self.arq_fields(), microsecond=0)  # type: ignore[arg-type]
            ticks.append(at)
        return ticks


def parse_cron(expression: str) -> CronSchedule:
    """Parse a cron expression; CronError says which field is wrong and why."""
    text = _ALIASES.get(expression.strip().lower(), expression.strip())
    parts = text.split()
    if len(parts) == 5:
        parts = ["0", *parts]
    elif len(parts) != 6:
        raise CronError(
            f"{expression!r} has {len(parts)} fields; expected 5 (minute hour day month "
            "weekday) or 6 (second first), e.g. '0 3 * * *' for 03:00 every day"
        )
    values = {name: _parse_field(name, part) for name, part in zip(_FIELDS, parts, strict=True)}
    if values["day"] is not None and values["weekday"] is not None:
        raise CronError(
            f"{expression!r} restricts both the day of the month and the weekday; "
            "restrict one of them (crontab would run on either, arq on both)"
        )
    weekday = values["weekday"]
    if weekday is not None:
        weekday = frozenset((d - 1) % 7 for d in weekday)  # cron Sunday 0/7 -> Python 6
    return CronSchedule(
        expression=expression,
        second=values["second"],
        minute=values["minute"],
        hour=values["hour"],
        day=values["day"],
        month=values["month"],
        weekday=weekday,
    )


def _parse_field(name: str, text: str) -> frozenset[int] | None:
    low, high, names = _FIELDS[name]
    if text in ("*", "?"):
        return None

    def number(token: str) -> int:
        token = token.lower()
        if token[:3] in names and not token.isdigit():
            return names.index(token[:3]) + (low if name == "month" else 0)
        if not token.isdigit():
            raise CronError(f"{name} field {text!r}: {token!r} is not a number")
        value = int(token)
        if not low <= value <= high:
            raise CronError(f"{name} field {text!r}: {value} is outside {low}-{high}")
        return value

    allowed: set[int] = set()
    for item in text.split(","):
        span, _, step_text = item.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise CronError(f"{name} field {text!r}: step {step_text!r} must be a number > 0")
            step = int(step_text)
        if span == "*":
            first, last = low, high
        elif "-" in span:
            first_text, last_text = span.split("-", 1)
            first, last = number(first_text), number(last_text)
            if first > last:
                raise CronError(f"{name} field {text!r}: range {span!r} runs backwards")
        else:
            first = number(span)
            last = high if step_text else first
        allowed.update(range(first, last + 1, step))
    return frozenset(allowed)


def _cron_friendly(value: int) -> int:
    """The reconciler is an arq cron job: its period must tile a minute or an hour."""
    if (value < 60 and 60 % value) or (value >= 60 and (value % 60 or 3600 % value)):
        raise ValueError(
            "must divide 60 (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30) or be whole minutes "
            "that divide an hour (60, 120, 180, 240, 300, 360, 600, 720, 900, 1200, "
            "1800, 3600)"
        )
    return value


CronPeriod = Annotated[int, AfterValidator(_cron_friendly)]
"""Seconds between two runs of a cron job: a divisor of a minute, or minutes of an hour."""


def _schedule_or_none(value: str | None) -> str | None:
    """A bad schedule is refused when the settings load (naming the field); blank: unset."""
    if value is not None and value.strip():
        parse_cron(value)
        return value.strip()
    return None


CronText = Annotated[str | None, AfterValidator(_schedule_or_none)]
