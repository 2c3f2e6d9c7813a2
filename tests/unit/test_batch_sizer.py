"""The claim size: grows with a deep backlog while batches are quick, shrinks when they are slow."""

from __future__ import annotations

import pytest

from vecmirror.run.batching import BatchSizer


def sizer() -> BatchSizer:
    return BatchSizer(smallest=256, largest=1024, target_seconds=2.0)


def test_starts_at_the_smallest_size() -> None:
    assert sizer().size == 256


def test_full_quick_claims_double_the_size_up_to_the_largest() -> None:
    batches = sizer()
    sizes = []
    for _ in range(4):
        batches.record(claimed=batches.size, seconds=0.1)
        sizes.append(batches.size)
    assert sizes == [512, 1024, 1024, 1024]


@pytest.mark.parametrize(
    ("claimed", "seconds"),
    [(255, 0.1), (256, 1.0), (256, 1.5)],
    ids=["the queue had less than a claim", "half the target", "between half and the target"],
)
def test_the_size_holds(claimed: int, seconds: float) -> None:
    batches = sizer()
    batches.record(claimed, seconds)
    assert batches.size == 256


def test_a_slow_batch_halves_the_size_down_to_the_smallest() -> None:
    batches = sizer()
    batches.size = 1024
    sizes = []
    for _ in range(3):
        batches.record(claimed=batches.size, seconds=2.5)
        sizes.append(batches.size)
    assert sizes == [512, 256, 256]


def test_sizes_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="1 <= 512 <= 256"):
        BatchSizer(smallest=512, largest=256, target_seconds=1.0)


def test_a_failed_batch_is_retried_from_the_smallest_size() -> None:
    batches = sizer()
    batches.size = 1024
    batches.failed()
    assert batches.size == 256
    batches.record(claimed=256, seconds=0.1)
    assert batches.size == 512  # and grows again once batches get through
