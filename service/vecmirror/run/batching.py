"""How many changes a mirror's next claim takes: it grows with a deep backlog, within a time budget.

Each batch pays a fixed cost (about ten Postgres statements, an FT.INFO, the script loads) that a
small claim spreads over few rows: updates of non-embedded columns synced 256 rows in ~80 ms, a
few of which were that fixed cost. Larger claims spread it thinner, but hold their keys, locks and
memory longer and make a shutdown wait longer, so a batch is kept well under `target_seconds`: an
embedded batch on a CPU takes seconds and never grows, a cheap one grows while the queue is deep.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class BatchSizer:
    """Starts at `smallest`; doubles after a claim that came back full (the backlog is at least
    that deep) and finished within half of `target_seconds`; halves after a batch that took longer
    than `target_seconds`; starts again from `smallest` after a batch that failed. Never outside
    [smallest, largest]."""

    smallest: int
    largest: int
    target_seconds: float
    size: int = field(init=False)

    def __post_init__(self) -> None:
        if not 1 <= self.smallest <= self.largest:
            raise ValueError(f"batch sizes must satisfy 1 <= {self.smallest} <= {self.largest}")
        self.size = self.smallest

    def record(self, claimed: int, seconds: float) -> None:
        """After each batch: how many changes it claimed and how long it took."""
        if seconds > self.target_seconds:
            self.size = max(self.smallest, self.size // 2)
        elif claimed >= self.size and seconds < self.target_seconds / 2:
            self.size = min(self.largest, self.size * 2)

    def failed(self) -> None:
        """After a batch that failed: the retry starts from `smallest` again. Over a flaky link (a
        proxy dropping connections, a failover) a large batch may never fit between two faults, and
        its retries would fail the same way for good; a small one gets through, and grows again."""
        self.size = self.smallest
