"""Metrics from real TensorBoard event files, as torch's SummaryWriter and Lightning write them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from torch.utils.tensorboard import SummaryWriter

from nas_operator.core import metrics
from nas_operator.core.event_reader import ReadLimits
from nas_operator.core.metrics import (
    MetricsError,
    ScalarPoint,
    event_files,
    metric_definitions,
    parse_termination_message,
    read_scalars,
    read_tensorboard_metrics,
    reduce_curve,
)
from nas_operator.resource.spec import MetricDefinition
from nas_operator.resource.spec_checks import load_experiment

from .conftest import EXAMPLES, load_yaml


def _write(log_dir: Path, curves: dict[str, list[float]], new_style: bool = False) -> None:
    writer = SummaryWriter(log_dir=str(log_dir))
    for tag, values in curves.items():
        for step, value in enumerate(values):
            writer.add_scalar(tag, value, global_step=step, new_style=new_style)
    writer.close()


@pytest.mark.parametrize("new_style", [False, True], ids=["simple_value", "tensor"])
def test_reads_both_scalar_encodings_with_each_reduction(tmp_path: Path, new_style: bool) -> None:
    _write(tmp_path, {"val/acc": [0.5, 0.9, 0.8], "params": [1234.0]}, new_style=new_style)
    definitions = [
        MetricDefinition(name="acc_last", tag="val/acc", reduce="last"),
        MetricDefinition(name="acc_max", tag="val/acc", reduce="max"),
        MetricDefinition(name="acc_min", tag="val/acc", reduce="min"),
        MetricDefinition(name="params"),
    ]
    values = read_tensorboard_metrics(tmp_path, definitions)
    assert values == pytest.approx({"acc_last": 0.8, "acc_max": 0.9, "acc_min": 0.5, "params": 1234.0})


def test_finds_event_files_in_nested_lightning_style_dirs(tmp_path: Path) -> None:
    _write(tmp_path / "lightning_logs" / "version_0", {"val_acc": [0.1, 0.7]})
    _write(tmp_path / "extra", {"num_params": [99.0]})
    values = read_tensorboard_metrics(tmp_path, [MetricDefinition(name="val_acc"), MetricDefinition(name="num_params")])
    assert values == pytest.approx({"val_acc": 0.7, "num_params": 99.0})


def test_last_means_highest_step_not_file_order(tmp_path: Path) -> None:
    writer = SummaryWriter(log_dir=str(tmp_path))
    for step in (2, 0, 1):
        writer.add_scalar("loss", float(step), global_step=step)
    writer.close()
    assert [p.step for p in read_scalars(tmp_path)["loss"]] == [0, 1, 2]
    assert read_tensorboard_metrics(tmp_path, [MetricDefinition(name="loss")]) == {"loss": 2.0}


def test_a_missing_tag_names_the_metric_and_the_tags_found(tmp_path: Path) -> None:
    _write(tmp_path, {"val_acc": [0.5]})
    with pytest.raises(
        MetricsError, match=r'metric "num_params": tag "num_params" not found .* \(tags there: val_acc\)'
    ):
        read_tensorboard_metrics(tmp_path, [MetricDefinition(name="val_acc"), MetricDefinition(name="num_params")])


def test_no_event_files_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(MetricsError, match="no TensorBoard event files"):
        read_tensorboard_metrics(tmp_path / "absent", [MetricDefinition(name="val_acc")])


def test_a_torn_event_file_does_not_hide_good_ones(tmp_path: Path) -> None:
    _write(tmp_path, {"val_acc": [0.25]})
    (tmp_path / "events.out.tfevents.999.broken").write_bytes(b"\x00\x01garbage")
    assert read_tensorboard_metrics(tmp_path, [MetricDefinition(name="val_acc")]) == {"val_acc": 0.25}


def test_non_finite_values_fail_the_metric(tmp_path: Path) -> None:
    _write(tmp_path, {"val_loss": [float("nan")]})
    with pytest.raises(MetricsError, match="value is nan"):
        read_tensorboard_metrics(tmp_path, [MetricDefinition(name="val_loss")])


def test_termination_message() -> None:
    definitions = [MetricDefinition(name="val_acc"), MetricDefinition(name="n", tag="num_params")]
    assert parse_termination_message(json.dumps({"val_acc": 0.9, "num_params": 10}), definitions) == {
        "val_acc": 0.9,
        "n": 10.0,
    }
    with pytest.raises(MetricsError, match="not JSON"):
        parse_termination_message("Error: OOM", definitions)
    with pytest.raises(MetricsError, match='metric "n" missing'):
        parse_termination_message(json.dumps({"val_acc": 0.9}), definitions)


def test_objectives_without_a_definition_default_to_their_name() -> None:
    doc = load_yaml(EXAMPLES / "digits-mlp.yaml")
    doc["spec"]["metrics"]["definitions"] = [{"name": "val_acc", "tag": "validation/accuracy", "reduce": "max"}]
    definitions = {d.name: d for d in metric_definitions(load_experiment(doc).spec)}
    assert definitions["val_acc"].effective_tag == "validation/accuracy"
    assert (definitions["num_params"].effective_tag, definitions["num_params"].reduce) == ("num_params", "last")


VAL_ACC = [MetricDefinition(name="val_acc")]


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ('{"val_acc": 1e999}', "value is inf"),
        ('{"val_acc": -1e999}', "value is -inf"),
        ('{"val_acc": ' + "9" * 4000 + "}", "value is inf"),
        ('{"val_acc": ' + "9" * 5000 + "}", "over the 4096 bytes"),  # 10**5000: refused before parsing
        ('{"val_acc": NaN}', "value is nan"),
        ('{"val_acc": Infinity}', "value is inf"),
        ('{"x": 1e308*10}', "not JSON"),
        ('{"val_acc": "0.9"}', 'metric "val_acc" missing or not a number'),
        ('{"val_acc": true}', 'metric "val_acc" missing or not a number'),
        ('{"val_acc": {"val_acc": 0.9}}', 'metric "val_acc" missing or not a number'),
        ('{"val_acc": [0.9]}', 'metric "val_acc" missing or not a number'),
        ("[" * 2000 + "]" * 2000, "nested too deeply"),
        ('{"val_acc": ' + "[" * 2000 + "]" * 2000 + "}", "nested too deeply"),
        ("[0.9]", "must be a JSON object, got list"),
        ("0.9", "must be a JSON object, got float"),
        ('"val_acc"', "must be a JSON object, got str"),
        ("null", "must be a JSON object, got NoneType"),
        ('{"val_acc": 0.9', "not JSON"),
        ("\udcff\x00", "not JSON"),
        (json.dumps({"val_acc": 0.9, "pad": "x" * 5000}), "over the 4096 bytes"),
    ],
)
def test_termination_message_errors_are_all_metrics_errors(message: str, error: str) -> None:
    with pytest.raises(MetricsError, match=error):
        parse_termination_message(message, VAL_ACC)


def test_termination_message_numbers() -> None:
    big = parse_termination_message('{"val_acc": 123456789012345678901234567890}', VAL_ACC)
    assert big == {"val_acc": pytest.approx(1.2345678901234568e29)}
    assert parse_termination_message('{"val_acc": -0.0, "other": ' + "9" * 4000 + "}", VAL_ACC) == {"val_acc": 0.0}
    assert parse_termination_message(json.dumps({"val_acc": 0.5, "pad": "x" * 3900}), VAL_ACC) == {"val_acc": 0.5}


def test_integers_past_pythons_int_string_limit_are_inf_not_value_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """The size cap already refuses 10**5000; without it, the parser must still not raise ValueError."""
    monkeypatch.setattr(metrics, "MAX_TERMINATION_MESSAGE_BYTES", 1_000_000)
    with pytest.raises(MetricsError, match="value is inf"):
        parse_termination_message('{"val_acc": ' + "1" + "0" * 5000 + "}", VAL_ACC)
    assert parse_termination_message('{"val_acc": 0.5, "n": ' + "1" * 6000 + "}", VAL_ACC) == {"val_acc": 0.5}


def test_a_bound_that_hides_the_metric_is_named_in_the_error(tmp_path: Path) -> None:
    _write(tmp_path / "a", {"loss": [1.0]})
    _write(tmp_path / "b", {"val_acc": [0.5]})
    with pytest.raises(MetricsError, match=r'tag "val_acc" not found .* reading stopped at a bound: .*MAX_EVENT_FILES'):
        read_tensorboard_metrics(tmp_path, VAL_ACC, ReadLimits(max_files=1))
    assert read_tensorboard_metrics(tmp_path, VAL_ACC) == {"val_acc": 0.5}


def test_a_bound_that_leaves_the_metric_computable_is_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _write(tmp_path / "a", {"val_acc": [0.5]})
    _write(tmp_path / "b", {"val_acc": [0.75]})
    assert read_tensorboard_metrics(tmp_path, VAL_ACC, ReadLimits(max_files=1)) == {"val_acc": 0.5}
    assert "MAX_EVENT_FILES" in caplog.text


def test_event_files_and_read_scalars_skip_links_and_fifos(tmp_path: Path) -> None:
    _write(tmp_path / "trial", {"val_acc": [0.5]})
    _write(tmp_path / "other", {"val_acc": [0.99]})
    (tmp_path / "trial" / "elsewhere").symlink_to(tmp_path / "other", target_is_directory=True)
    os.mkfifo(tmp_path / "trial" / "events.out.tfevents.0.fifo")
    assert [p.parent for p in event_files(tmp_path / "trial")] == [tmp_path / "trial"]
    assert [p.value for p in read_scalars(tmp_path / "trial")["val_acc"]] == [0.5]
    assert read_tensorboard_metrics(tmp_path / "trial", [MetricDefinition(name="val_acc", reduce="max")]) == {
        "val_acc": 0.5
    }


def test_a_log_dir_that_is_a_symlink_is_refused_with_the_reason(tmp_path: Path) -> None:
    _write(tmp_path / "other", {"val_acc": [0.99]})
    (tmp_path / "trial").symlink_to(tmp_path / "other", target_is_directory=True)
    with pytest.raises(MetricsError, match=r"no TensorBoard event files under .*links are not followed"):
        read_tensorboard_metrics(tmp_path / "trial", VAL_ACC)


def test_reduce_curve_keeps_its_contract() -> None:
    points = [ScalarPoint(2, 0.0, 0.25), ScalarPoint(0, 1.0, 0.5), ScalarPoint(1, 2.0, float("nan"))]
    assert [reduce_curve(points, how) for how in ("last", "max", "min")] == [0.25, 0.5, 0.25]
    with pytest.raises(ValueError, match="unknown reduction"):
        reduce_curve(points, "mean")
