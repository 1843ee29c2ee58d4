"""What the app counts while it runs, and the Prometheus text exposition of it.

Counters and the scan histogram live in memory and start from zero with the process, as Prometheus
expects of counters. Everything that the database knows (tickets by status, the outbox backlog) is read
at scrape time instead, so it is right after a restart and never drifts from the tables.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from bot.domain import Platform, TicketStatus

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds; a scan is one indexed query per kind of promise, so most land in the first buckets.
SCAN_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Histogram:
    def __init__(self, buckets: Sequence[float]) -> None:
        self.bounds = tuple(sorted(buckets))
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    @property
    def count(self) -> int:
        return sum(self.counts)


class Metrics:
    """In-process counters, fed by small hooks in the intake, the outbox worker and the scheduler."""

    def __init__(self) -> None:
        # (platform name, "ok" or "error"): an update whose handler raised still counts, as an error.
        self.updates: Counter[tuple[str, str]] = Counter()
        # (kind, reason): kind is retry_after, transient, permanent, migrated or unexpected.
        self.send_errors: Counter[tuple[str, str]] = Counter()
        self.scan_seconds = Histogram(SCAN_BUCKETS)
        self.scan_failures = 0

    def update_handled(self, platform: Platform, ok: bool) -> None:
        self.updates[(platform.name, "ok" if ok else "error")] += 1

    def send_error(self, kind: str, reason: str = "") -> None:
        self.send_errors[(kind, reason)] += 1

    def scan_finished(self, seconds: float, ok: bool) -> None:
        if ok:
            self.scan_seconds.observe(seconds)
        else:
            self.scan_failures += 1


@dataclass(frozen=True)
class Backlog:
    """Undelivered messages of one platform."""

    pending: int
    oldest_age_seconds: float


@dataclass(frozen=True)
class DatabaseState:
    tickets: Mapping[str, int]
    backlog: Mapping[Platform, Backlog]


def render(metrics: Metrics, state: DatabaseState | None) -> str:
    """The exposition; `state` is None when the database did not answer, which the output says."""
    out = _Exposition()
    out.family(
        "civicdesk_updates_handled_total",
        "counter",
        "Updates from the platforms handled, by platform and outcome.",
        (({"platform": p, "result": r}, n) for (p, r), n in sorted(metrics.updates.items())),
    )
    out.family(
        "civicdesk_send_errors_total",
        "counter",
        "Failed delivery attempts by kind (retry_after, transient, permanent, migrated, unexpected) "
        "and reason.",
        (({"kind": k, "reason": r}, n) for (k, r), n in sorted(metrics.send_errors.items())),
    )
    out.histogram(
        "civicdesk_scheduler_scan_seconds", "Duration of the scheduler's scans of due promises.", metrics
    )
    out.family(
        "civicdesk_scheduler_scan_failures_total",
        "counter",
        "Scheduler scans that failed (the next one tries again).",
        [({}, metrics.scan_failures)],
    )
    out.family(
        "civicdesk_database_up",
        "gauge",
        "1 when the database answered this scrape.",
        [({}, 0 if state is None else 1)],
    )
    if state is not None:
        statuses = [s.value for s in TicketStatus] + sorted(
            set(state.tickets) - {s.value for s in TicketStatus}
        )
        out.family(
            "civicdesk_tickets",
            "gauge",
            "Tickets by status.",
            (({"status": s}, state.tickets.get(s, 0)) for s in statuses),
        )
        empty = Backlog(0, 0.0)
        out.family(
            "civicdesk_outbox_pending",
            "gauge",
            "Messages waiting in the outbox, by platform.",
            (({"platform": p.name}, state.backlog.get(p, empty).pending) for p in Platform),
        )
        out.family(
            "civicdesk_outbox_oldest_pending_age_seconds",
            "gauge",
            "How long the oldest waiting message has waited, by platform (0: none waits).",
            (({"platform": p.name}, state.backlog.get(p, empty).oldest_age_seconds) for p in Platform),
        )
    return out.text()


class _Exposition:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(
        self,
        name: str,
        kind: str,
        help_text: str,
        samples: Iterable[tuple[Mapping[str, str], float]],
    ) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        self.lines.extend(f"{name}{_labels(labels)} {_number(value)}" for labels, value in samples)

    def histogram(self, name: str, help_text: str, metrics: Metrics) -> None:
        histogram = metrics.scan_seconds
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} histogram")
        running = 0
        for bound, count in zip((*histogram.bounds, math.inf), histogram.counts, strict=True):
            running += count
            self.lines.append(f"{name}_bucket{_labels({'le': _bound(bound)})} {running}")
        self.lines.append(f"{name}_sum {_number(histogram.total)}")
        self.lines.append(f"{name}_count {histogram.count}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{key}="{_escape(value)}"' for key, value in labels.items()) + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _bound(value: float) -> str:
    return "+Inf" if math.isinf(value) else repr(float(value))


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)
