"""The rows an engine's GP is fitted on once an experiment outgrows an exact GP (search/training_subset.py)."""

from __future__ import annotations

import torch

from nas_operator.search.training_subset import TrainingSubset


def _points(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    X = torch.rand(n, 3, generator=generator, dtype=torch.float64)
    # acc rises with x0, params rise with x0 too: a real trade-off, its front along x1 = 0
    Y = torch.stack([X[:, 0] - 0.3 * X[:, 1], 100 * X[:, 0] + 10 * X[:, 2]], dim=-1)
    return X, Y


def _front(F: torch.Tensor) -> set[int]:
    """Rows no other row dominates (F maximized), by brute force."""
    return {
        i
        for i in range(F.shape[0])
        if not any(bool((F[j] >= F[i]).all() and (F[j] > F[i]).any()) for j in range(F.shape[0]))
    }


def test_under_the_limit_every_row_is_kept() -> None:
    X, Y = _points(40)
    subset = TrainingSubset(40, {"acc": 1, "params": -1})
    assert subset.rows(X, Y, ["acc", "params"]) is None
    assert subset.kept == {("acc", "params"): None}
    assert torch.equal(subset.baseline(X, [["acc", "params"]]), X)


def test_above_the_limit_the_front_is_kept_in_each_metrics_own_direction() -> None:
    X, Y = _points(400)
    subset = TrainingSubset(100, {"acc": 1, "params": -1})
    rows = subset.rows(X, Y, ["acc", "params"])
    assert rows is not None and rows.numel() == 100 and torch.equal(rows, rows.sort().values)
    front = _front(Y * torch.tensor([1.0, -1.0], dtype=Y.dtype))
    assert len(front) < 50 and front <= set(rows.tolist())
    # the other direction has another front: what is kept follows the goals, not the raw values
    flipped = TrainingSubset(100, {"acc": -1, "params": 1}).rows(X, Y, ["acc", "params"])
    assert flipped is not None and _front(Y * torch.tensor([-1.0, 1.0], dtype=Y.dtype)) <= set(flipped.tolist())
    assert set(flipped.tolist()) != set(rows.tolist())


def test_the_rest_covers_the_space_and_the_choice_is_a_function_of_the_data() -> None:
    X, Y = _points(400)
    subset = TrainingSubset(60, {"acc": 1, "params": -1})
    rows = subset.rows(X, Y, ["acc", "params"])
    assert rows is not None
    assert torch.equal(rows, TrainingSubset(60, {"acc": 1, "params": -1}).rows(X, Y, ["acc", "params"]))
    # farthest-point sampling: every point lies closer to a kept one than a random subset of that size manages
    random_rows = torch.randperm(400, generator=torch.Generator().manual_seed(1))[:60]
    gap = torch.cdist(X, X[rows]).min(dim=-1).values.max()
    random_gap = torch.cdist(X, X[random_rows]).min(dim=-1).values.max()
    assert gap < random_gap


def test_a_front_larger_than_half_the_limit_is_thinned_from_end_to_end() -> None:
    x = torch.linspace(0, 1, 200, dtype=torch.float64)
    X = torch.stack([x, torch.zeros_like(x)], dim=-1)
    Y = torch.stack([x, 1 - x], dim=-1)  # all 200 non-dominated (both maximized)
    rows = TrainingSubset(20, {"a": 1, "b": 1}).rows(X, Y, ["a", "b"])
    assert rows is not None and rows.numel() == 20
    assert {0, 199} <= set(rows.tolist())  # both ends of the front


def test_metrics_without_a_goal_and_unfinished_values_do_not_decide() -> None:
    X, Y = _points(100)
    Y = torch.cat([Y, torch.rand(100, 1, dtype=torch.float64)], dim=-1)
    Y[5] = torch.tensor([float("nan"), 0.0, 0.0], dtype=torch.float64)
    subset = TrainingSubset(30, {"acc": 1, "params": -1})
    rows = subset.rows(X, Y, ["acc", "params", "logged_only"])
    assert rows is not None and rows.numel() == 30
    kept = subset.kept[("acc", "params", "logged_only")]
    assert kept is not None and torch.equal(kept, X[rows])


def test_the_baseline_is_the_kept_rows_of_the_observed_points() -> None:
    X, Y = _points(100)
    subset = TrainingSubset(30, {"acc": 1, "params": -1})
    rows = subset.rows(X, Y, ["acc", "params"])
    assert rows is not None
    shuffled = X[torch.randperm(100, generator=torch.Generator().manual_seed(2))]
    baseline = subset.baseline(shuffled, [["acc", "params"]])
    assert baseline.shape == (30, 3)
    assert {tuple(r) for r in baseline.tolist()} == {tuple(r) for r in X[rows].tolist()}
    # a model the subset did not fit (another grouping of the outcomes): every row, as Ax would have it
    assert torch.equal(subset.baseline(shuffled, [["acc"], ["params"]]), shuffled)


def test_with_a_model_per_outcome_the_baseline_is_the_union_of_their_rows() -> None:
    X, Y = _points(100)
    subset = TrainingSubset(30, {"acc": 1, "params": -1})
    acc_rows = subset.rows(X, Y[:, :1], ["acc"])
    params_rows = subset.rows(X[:90], Y[:90, 1:], ["params"])  # fewer rows: a trial logged only acc
    assert acc_rows is not None and params_rows is not None
    assert set(acc_rows.tolist()) != set(params_rows.tolist())
    union = set(acc_rows.tolist()) | set(params_rows.tolist())
    baseline = subset.baseline(X, [["acc"], ["params"]])
    assert {tuple(r) for r in baseline.tolist()} == {tuple(r) for r in X[sorted(union)].tolist()}


def test_a_three_objective_front_keeps_each_objectives_best_when_thinned() -> None:
    generator = torch.Generator().manual_seed(3)
    W = torch.rand(300, 3, generator=generator, dtype=torch.float64)
    Y = W / W.norm(dim=-1, keepdim=True)  # all on the positive octant of the unit sphere: one layer of 300
    X = torch.rand(300, 2, generator=generator, dtype=torch.float64)
    rows = TrainingSubset(40, {"a": 1, "b": 1, "c": 1}).rows(X, Y, ["a", "b", "c"])
    assert rows is not None and rows.numel() == 40
    assert {int(i) for i in torch.argmax(Y, dim=0)} <= set(rows.tolist())
