"""The event reader against a directory a hostile or careless trial controls, and against files still being written.

Event files are framed here with TensorBoard's own checksum (not the reader's), so a framing bug cannot cancel out.
"""

from __future__ import annotations

import errno
import math
import os
import shutil
import socket
import struct
import threading
import time
from pathlib import Path

import pytest
from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as tensorboard_crc
from torch.utils.tensorboard import SummaryWriter

from nas_operator.core.event_files import find_event_files, open_regular
from nas_operator.core.event_reader import EventReader, ReadLimits, scalar_tensor
from nas_operator.core.event_records import masked_crc32c
from nas_operator.core.scalar_curve import Curve, ScalarPoint

EVENTS = "events.out.tfevents.1.host"


def _record(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", tensorboard_crc(length)) + data + struct.pack("<I", tensorboard_crc(data))


def _scalar(tag: str, step: int, value: float) -> bytes:
    event = event_pb2.Event(step=step, wall_time=1000.0 + step)
    event.summary.value.add(tag=tag, simple_value=value)
    return _record(event.SerializeToString())


def _events(path: Path, points: list[tuple[str, int, float]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = _record(event_pb2.Event(wall_time=1.0, file_version="brain.Event:2").SerializeToString())
    path.write_bytes(header + b"".join(_scalar(tag, step, value) for tag, step, value in points))
    return path


def _append(path: Path, data: bytes) -> None:
    with path.open("ab") as handle:
        handle.write(data)


def _last(reader: EventReader, tag: str) -> float:
    curve = reader.curve(tag)
    assert curve is not None, f"no curve for {tag}"
    return curve.reduce("last")


@pytest.mark.parametrize("length", [0, 1, 7, 8, 9, 15, 16, 17, 40, 1000, 4099])
def test_checksum_matches_tensorboard(length: int) -> None:
    data = bytes((i * 37 + 11) % 256 for i in range(length))
    assert masked_crc32c(data) == tensorboard_crc(data)


def test_a_fifo_named_like_an_event_file_does_not_block(tmp_path: Path) -> None:
    _events(tmp_path / EVENTS, [("val_acc", 0, 0.5)])
    fifo = tmp_path / "events.out.tfevents.2.fifo"
    os.mkfifo(fifo)
    result: list[float] = []
    worker = threading.Thread(target=lambda: result.append(_read_last(tmp_path)), daemon=True)
    started = time.monotonic()
    worker.start()
    worker.join(timeout=10)
    if worker.is_alive():  # unblock the reader so the test process can end, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("reading a directory with a FIFO blocked")
    assert time.monotonic() - started < 2.0
    assert result == [0.5]


def _read_last(log_dir: Path) -> float:
    reader = EventReader(log_dir)
    reader.update()
    return _last(reader, "val_acc")


def test_a_fifo_or_socket_swapped_in_after_listing_is_refused_at_open(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "events.fifo")
    started = time.monotonic()
    assert open_regular(tmp_path, ["events.fifo"]) is None
    assert time.monotonic() - started < 2.0
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(tmp_path / "events.sock"))
        assert open_regular(tmp_path, ["events.sock"]) is None
    _events(tmp_path / "events.real", [("a", 0, 1.0)])
    opened = open_regular(tmp_path, ["events.real"])
    assert opened is not None
    os.close(opened[0])


def test_symlinks_are_never_followed(tmp_path: Path) -> None:
    other_team = tmp_path / "other-team"
    _events(other_team / "run" / EVENTS, [("val_acc", 0, 0.99)])
    trial = tmp_path / "trial"
    _events(trial / EVENTS, [("val_acc", 0, 0.5)])
    (trial / "stolen").symlink_to(other_team / "run", target_is_directory=True)
    (trial / "events.out.tfevents.9.link").symlink_to(other_team / "run" / EVENTS)
    reader = EventReader(trial)
    reader.update()
    assert reader.files == [trial / EVENTS]
    assert reader.curve("val_acc") is not None and reader.curve("val_acc").reduce("max") == 0.5  # type: ignore[union-attr]
    # A component swapped for a link after the listing is refused when the file is opened.
    assert open_regular(trial, ["stolen", EVENTS]) is None
    # The log dir itself being a link: nothing is read, and the reason is given.
    (tmp_path / "linked-trial").symlink_to(other_team / "run", target_is_directory=True)
    linked = EventReader(tmp_path / "linked-trial")
    linked.update()
    assert linked.files == []
    assert "links are not followed" in linked.root_problem


def test_file_bound_keeps_the_first_files_in_path_order_and_says_so(tmp_path: Path) -> None:
    for index in range(4):
        _events(tmp_path / f"run{index}" / EVENTS, [(f"tag{index}", 0, float(index))])
    reader = EventReader(tmp_path, limits=ReadLimits(max_files=2))
    report = reader.update()
    assert [p.parent.name for p in reader.files] == ["run0", "run1"]
    assert reader.tags() == ["tag0", "tag1"]
    assert any("MAX_EVENT_FILES" in bound for bound in report.bounds)


def test_depth_bound(tmp_path: Path) -> None:
    _events(tmp_path / "a" / EVENTS, [("shallow", 0, 1.0)])
    _events(tmp_path / "a" / "b" / "c" / EVENTS, [("deep", 0, 1.0)])
    reader = EventReader(tmp_path, limits=ReadLimits(max_depth=2))
    report = reader.update()
    assert reader.tags() == ["shallow"]
    assert any("MAX_DEPTH" in bound for bound in report.bounds)
    assert EventReader(tmp_path, limits=ReadLimits(max_depth=3)).update().bounds == []


def test_entry_bound_stops_a_walk_of_many_files(tmp_path: Path) -> None:
    for index in range(50):
        (tmp_path / f"junk{index}").touch()
    found = find_event_files(tmp_path)
    assert found.bounds == []
    limited = find_event_files(tmp_path, ReadLimits(max_entries=10).walk())
    assert any("MAX_ENTRIES" in bound for bound in limited.bounds)


def test_byte_bound_reads_the_rest_on_later_updates(tmp_path: Path) -> None:
    points = [("loss", step, float(step)) for step in range(100)]
    path = _events(tmp_path / EVENTS, points)
    limit = path.stat().st_size // 3
    reader = EventReader(tmp_path, limits=ReadLimits(max_bytes=limit))
    updates = []
    for _ in range(5):
        report = reader.update()
        assert report.bytes_read <= limit
        updates.append(report)
        if not report.bounds:
            break
    assert any("MAX_READ_BYTES" in bound for bound in updates[0].bounds)
    assert len(updates) in (3, 4)
    assert _last(reader, "loss") == 99.0
    assert reader.curve("loss").count == 100  # type: ignore[union-attr]


def test_byte_budget_is_shared_so_one_backlog_does_not_starve_another_file(tmp_path: Path) -> None:
    big = _events(tmp_path / "a" / EVENTS, [("big", step, 1.0) for step in range(2000)])
    _events(tmp_path / "b" / EVENTS, [("small", 0, 7.0)])
    reader = EventReader(tmp_path, limits=ReadLimits(max_bytes=big.stat().st_size // 4))
    reader.update()
    assert _last(reader, "small") == 7.0


def test_over_long_records_are_skipped_unread(tmp_path: Path) -> None:
    path = _events(tmp_path / EVENTS, [("a", 0, 1.0)])
    _append(path, _record(b"\x00" * 5000) + _scalar("a", 1, 2.0))
    reader = EventReader(tmp_path, limits=ReadLimits(max_record_bytes=1000))
    report = reader.update()
    assert _last(reader, "a") == 2.0
    assert report.bytes_read < 5000  # charged a seek, not its length
    assert any("skipped" in warning for warning in report.warnings)


def test_points_per_tag_are_bounded_and_reductions_stay_exact(tmp_path: Path) -> None:
    # float32 values, as simple_value stores them, so the comparison below is exact
    values = [struct.unpack("<f", struct.pack("<f", math.sin(step / 50.0) * step))[0] for step in range(5000)]
    _events(tmp_path / EVENTS, [("acc", step, value) for step, value in enumerate(values)])
    reader = EventReader(tmp_path, limits=ReadLimits(max_points=64))
    reader.update()
    curve = reader.curve("acc")
    assert curve is not None
    assert curve.count == 5000
    assert len(curve.points()) <= 64 + 3
    assert (curve.reduce("max"), curve.reduce("min"), curve.reduce("last")) == (max(values), min(values), values[-1])
    steps = [p.step for p in curve.points()]
    assert steps == sorted(steps) and steps[0] == 0 and steps[-1] == 4999


def test_tag_bound(tmp_path: Path) -> None:
    _events(tmp_path / EVENTS, [(f"tag{i:03d}", 0, 1.0) for i in range(30)])
    reader = EventReader(tmp_path, limits=ReadLimits(max_tags=10))
    reader.update()
    assert len(reader.curves()) == 10
    assert len(reader.tags()) == 10


def test_incremental_reads_only_new_bytes_and_waits_for_a_half_written_record(tmp_path: Path) -> None:
    path = _events(tmp_path / EVENTS, [("loss", 0, 3.0)])
    reader = EventReader(tmp_path)
    assert reader.update().records == 2
    assert _last(reader, "loss") == 3.0
    assert reader.update().bytes_read == 0

    record = _scalar("loss", 1, 2.0)
    _append(path, record[:-3])  # the writer is in the middle of this record
    report = reader.update()
    assert (report.records, report.bytes_read, report.warnings) == (0, 0, [])
    assert _last(reader, "loss") == 3.0

    _append(path, record[-3:] + _scalar("loss", 2, 1.0))
    report = reader.update()
    assert report.records == 2
    assert report.bytes_read == 2 * len(record)
    assert _last(reader, "loss") == 1.0
    assert reader.curve("loss").count == 3  # type: ignore[union-attr]


def test_incremental_with_torch_writer_while_it_writes(tmp_path: Path) -> None:
    writer = SummaryWriter(log_dir=str(tmp_path), flush_secs=3600)
    reader = EventReader(tmp_path, tags=["val/acc"])
    try:
        for step in range(5):
            writer.add_scalar("val/acc", step / 10.0, global_step=step)
            writer.flush()
            reader.update()
            assert _last(reader, "val/acc") == pytest.approx(step / 10.0)
    finally:
        writer.close()
    assert reader.curve("val/acc").count == 5  # type: ignore[union-attr]


def test_a_corrupt_record_ends_its_file_but_not_the_others(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bad = _events(tmp_path / "a" / EVENTS, [("x", 0, 1.0)])
    record = bytearray(_scalar("x", 1, 5.0))
    record[-1] ^= 0xFF  # data checksum wrong
    _append(bad, bytes(record) + _scalar("x", 2, 9.0))
    _events(tmp_path / "b" / EVENTS, [("y", 0, 2.0)])
    reader = EventReader(tmp_path)
    report = reader.update()
    assert _last(reader, "x") == 1.0  # what came before the corruption is kept; nothing after it is trusted
    assert _last(reader, "y") == 2.0
    assert any("bad data checksum" in warning for warning in report.warnings)
    assert "bad data checksum" in caplog.text
    assert reader.update().warnings == []  # said once, not at every step
    # A torn header (garbage instead of a record) is a corruption too, found without reading on.
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / EVENTS).write_bytes(b"\x00\x01garbage-garbage-garbage")
    assert any("bad length checksum" in warning for warning in EventReader(tmp_path).update().warnings)


def test_only_kept_records_need_their_data_checksum(tmp_path: Path) -> None:
    path = _events(tmp_path / EVENTS, [("wanted", 0, 1.0)])
    other = bytearray(_scalar("other", 1, 5.0))
    other[-1] ^= 0xFF  # a value nobody asked for, damaged: its framing is intact, so reading goes on
    _append(path, bytes(other) + _scalar("wanted", 2, 3.0))
    reader = EventReader(tmp_path, tags=["wanted"])
    report = reader.update()
    assert (_last(reader, "wanted"), report.warnings) == (3.0, [])
    assert reader.tags() == ["other", "wanted"]
    everything = EventReader(tmp_path)
    assert any("bad data checksum" in warning for warning in everything.update().warnings)
    assert _last(everything, "wanted") == 1.0


def test_a_replaced_or_truncated_file_is_read_again_from_its_start(tmp_path: Path) -> None:
    path = _events(tmp_path / EVENTS, [("acc", 0, 0.75), ("acc", 1, 0.875)])
    reader = EventReader(tmp_path)
    reader.update()
    assert reader.curve("acc").reduce("max") == 0.875  # type: ignore[union-attr]
    # A retried run wipes the directory and writes a file of the same name: the old best must not survive.
    shutil.rmtree(tmp_path)
    _events(path, [("acc", 0, 0.125)])
    reader.update()
    assert reader.curve("acc").reduce("max") == 0.125  # type: ignore[union-attr]
    # Truncated and rewritten in place by another writer (same inode, same size): its first event differs.
    with path.open("r+b") as handle:
        handle.truncate(0)
        handle.write(_record(event_pb2.Event(wall_time=2.0, file_version="brain.Event:2").SerializeToString()))
        handle.write(_scalar("acc", 0, 0.25))
    reader.update()
    assert reader.curve("acc").reduce("max") == 0.25  # type: ignore[union-attr]
    # Truncated to less than was read: read again from the start.
    path.write_bytes(_record(event_pb2.Event(wall_time=3.0, file_version="brain.Event:2").SerializeToString()))
    reader.update()
    assert reader.curve("acc") is None
    _append(path, _scalar("acc", 5, 0.5))
    reader.update()
    assert reader.curve("acc").reduce("max") == 0.5  # type: ignore[union-attr]
    path.unlink()
    reader.update()
    assert reader.curve("acc") is None and reader.files == []


def test_scalar_tensors_of_each_dtype_and_hostile_shapes() -> None:
    def tensor(dtype: int, shape: list[int], **values: object) -> tensor_pb2.TensorProto:
        dims = [tensor_shape_pb2.TensorShapeProto.Dim(size=s) for s in shape]
        return tensor_pb2.TensorProto(dtype=dtype, tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=dims), **values)

    assert scalar_tensor(tensor(1, [], float_val=[0.5])) == 0.5
    assert scalar_tensor(tensor(2, [1], double_val=[0.25])) == 0.25
    assert scalar_tensor(tensor(1, [], tensor_content=struct.pack("<f", 1.5))) == 1.5
    assert scalar_tensor(tensor(19, [], half_val=[0x3C00])) == 1.0
    assert scalar_tensor(tensor(14, [], half_val=[0x3F80])) == 1.0
    assert scalar_tensor(tensor(9, [], int64_val=[7])) == 7.0
    # A shape of 2**40 elements claiming to be a scalar allocates nothing and gives nothing.
    assert scalar_tensor(tensor(1, [2**40], float_val=[1.0])) is None
    assert scalar_tensor(tensor(1, [], tensor_content=b"\x00" * 1000)) is None
    assert scalar_tensor(tensor(7, [], string_val=[b"x"])) is None  # DT_STRING


def test_garbage_protobuf_inside_valid_framing_is_skipped(tmp_path: Path) -> None:
    path = _events(tmp_path / EVENTS, [("a", 0, 1.0)])
    _append(path, _record(b"\xff\xff\xff\xff not a protobuf") + _scalar("a", 1, 2.0))
    summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag="img", image=summary_pb2.Summary.Image())])
    _append(path, _record(event_pb2.Event(step=2, summary=summary).SerializeToString()))
    reader = EventReader(tmp_path)
    reader.update()
    assert _last(reader, "a") == 2.0
    assert reader.tags() == ["a"]


def test_missing_and_unreadable_dirs_give_no_files(tmp_path: Path) -> None:
    missing = EventReader(tmp_path / "absent")
    missing.update()
    assert missing.files == [] and "does not exist" in missing.root_problem
    (tmp_path / "file").write_text("x")
    not_dir = EventReader(tmp_path / "file")
    not_dir.update()
    assert not_dir.files == []


def test_curve_merge_and_nan() -> None:
    first, second = Curve(max_points=4), Curve(max_points=4)
    for step, value in enumerate([1.0, math.nan, 3.0]):
        first.add(ScalarPoint(step, float(step), value))
    second.add(ScalarPoint(10, 0.0, -1.0))
    merged = Curve.merged([first, second], max_points=4)
    assert (merged.count, merged.reduce("max"), merged.reduce("min"), merged.reduce("last")) == (4, 3.0, -1.0, -1.0)
    only_nan = Curve()
    only_nan.add(ScalarPoint(0, 0.0, math.nan))
    assert math.isnan(only_nan.reduce("max")) and math.isnan(only_nan.reduce("last"))
    with pytest.raises(ValueError, match="unknown reduction"):
        first.reduce("mean")


def test_errno_of_a_symlinked_file_is_eloop(tmp_path: Path) -> None:
    """O_NOFOLLOW is what refuses a link (the walk relies on it, not on a check before the open)."""
    (tmp_path / "target").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    with pytest.raises(OSError) as raised:
        os.open(tmp_path / "link", os.O_RDONLY | os.O_NOFOLLOW)
    assert raised.value.errno == errno.ELOOP
    assert open_regular(tmp_path, ["link"]) is None
