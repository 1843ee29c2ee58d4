"""How the scheduler keeps promises: the timings an operator sets, as one value."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import time, timedelta


@dataclass(frozen=True, slots=True)
class Policy:
    """How the scheduler keeps promises; None switches a promise off."""

    overdue_repeat: timedelta = timedelta(hours=4)
    group_threshold: int = 5
    citizen_overdue_notice: bool = True
    citizen_update_every: timedelta | None = timedelta(days=3)
    resolved_autoclose: timedelta | None = timedelta(days=3)
    need_info_timeout: timedelta | None = timedelta(days=7)
    digest_at: time | None = time(9, 0)
