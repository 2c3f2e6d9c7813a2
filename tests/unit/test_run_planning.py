"""How the ONNX backend groups a call's texts into session runs: longest first, within a budget of
padded tokens and a number of texts, every text exactly once."""

from __future__ import annotations

import random

from vecmirror.pipeline.onnx import plan_runs


def test_runs_take_texts_longest_first_within_the_token_budget() -> None:
    lengths = [5, 40, 12, 40, 7, 30]
    runs = plan_runs(lengths, tokens_per_run=80, texts_per_run=10)
    assert runs == [[1, 3], [5, 2], [4, 0]]  # 2 x 40, 2 x 30 (12 pads to 30), 2 x 7


def test_a_text_longer_than_the_budget_runs_alone() -> None:
    assert plan_runs([300, 10, 10], tokens_per_run=100, texts_per_run=10) == [[0], [1, 2]]


def test_texts_per_run_caps_a_run_of_short_texts() -> None:
    runs = plan_runs([3] * 10, tokens_per_run=1000, texts_per_run=4)
    assert [len(run) for run in runs] == [4, 4, 2]


def test_every_text_is_in_exactly_one_run_and_no_run_exceeds_its_budget() -> None:
    rng = random.Random(5)
    for _ in range(200):
        lengths = [rng.randint(1, 256) for _ in range(rng.randint(0, 300))]
        budget, cap = rng.randint(1, 5000), rng.randint(1, 300)
        runs = plan_runs(lengths, tokens_per_run=budget, texts_per_run=cap)
        assert sorted(i for run in runs for i in run) == list(range(len(lengths)))
        for run in runs:
            padded = len(run) * max(lengths[i] for i in run)
            assert len(run) == 1 or (padded <= budget and len(run) <= cap)
            assert max(lengths[i] for i in run) == lengths[run[0]]  # the longest leads its run
