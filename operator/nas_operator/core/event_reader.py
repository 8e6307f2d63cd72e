"""An incremental, bounded reader of one trial's TensorBoard scalars.

Keep one `EventReader` per trial and call `update()` as often as wanted: each call lists the log dir again (bounded,
no links followed: event_files.py), reads only the bytes appended to each event file since the last call (records are
framed and checksummed in event_records.py; a half-written last record waits for the next call), and folds the
scalars into bounded per-tag curves (scalar_curve.py). A file that was replaced or truncated (a retried run rewriting
its directory) is read again from its start; a file that disappeared takes its curves with it.

Both encodings of a scalar are understood: the legacy `simple_value` that
`torch.utils.tensorboard.SummaryWriter.add_scalar` writes, and the tensor form with the scalars plugin that newer
writers use (the case Katib's collector misses, kubeflow/katib#2466).
"""

from __future__ import annotations

import functools
import logging
import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nas_operator.core.event_files import WalkLimits, find_event_files, open_regular
from nas_operator.core.event_records import MAX_RECORD_BYTES, RecordScan, scan_records
from nas_operator.core.scalar_curve import MAX_POINTS_PER_TAG, Curve, ScalarPoint

log = logging.getLogger(__name__)

MAX_READ_BYTES = 64 * 1024 * 1024
"""Event bytes read per `update()` over all of a trial's files: a scalar event is ~50 bytes, so this is about a
million scalars, far more than a trial logs between two steps of the loop, and a hostile trial's terabyte costs the
operator at most this much work per step."""

MAX_TAGS = 1000
"""Tags tracked per event file (and tag names remembered for error messages): a model logging per-layer scalars stays
far below; a trial inventing a new tag per step cannot grow the operator's memory."""

HEAD_BYTES = 64
"""First bytes of each event file remembered to notice a file rewritten in place: they hold the writer's
file_version event, whose wall time differs between writers."""

MAX_TAG_CHARS = 256
"""Longer tag names are ignored: no TensorBoard user writes them, and each one kept costs memory."""


@dataclass(frozen=True)
class ReadLimits:
    """Every bound of one trial's reading (defaults are the module constants; tests pass small ones)."""

    max_depth: int = WalkLimits.max_depth
    max_entries: int = WalkLimits.max_entries
    max_files: int = WalkLimits.max_files
    max_bytes: int = MAX_READ_BYTES
    max_record_bytes: int = MAX_RECORD_BYTES
    max_points: int = MAX_POINTS_PER_TAG
    max_tags: int = MAX_TAGS

    def walk(self) -> WalkLimits:
        return WalkLimits(self.max_depth, self.max_entries, self.max_files)


DEFAULT_LIMITS = ReadLimits()


@dataclass
class UpdateReport:
    """What one `update()` did: bytes and records consumed, bounds run into, files that could not be read.

    `bytes_read` is what was charged to the budget: the records read, plus SKIP_COST per over-long record skipped.
    """

    bytes_read: int = 0
    records: int = 0
    bounds: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class _FileState:
    identity: tuple[int, int]  # (st_dev, st_ino): a new inode under the same name is a new file
    offset: int = 0
    head: bytes = b""  # the file's first bytes (the writer's file_version event and its time): rewritten in place?
    curves: dict[str, Curve] = field(default_factory=dict)
    failed_at: int | None = None  # offset of a record that failed its checksum
    failed_size: int = 0  # the file's size then: it is tried again only once it has grown
    warned_at: int | None = None  # where a checksum failure was last reported


class EventReader:
    """Scalar curves of the event files under one log dir, read incrementally within `limits`."""

    def __init__(self, log_dir: Path, tags: Iterable[str] | None = None, limits: ReadLimits = DEFAULT_LIMITS) -> None:
        self.log_dir = log_dir
        self.wanted = frozenset(tags) if tags is not None else None
        self.limits = limits
        self.root_problem = ""
        self._files: dict[tuple[str, ...], _FileState] = {}
        self._tag_names: set[str] = set()

    @property
    def files(self) -> list[Path]:
        """The event files currently tracked (found by the last update), in path order."""
        return [self.log_dir.joinpath(*parts) for parts in self._files]

    def update(self) -> UpdateReport:
        """Read what was appended since the last call; never raises for anything found in the directory."""
        report = UpdateReport()
        found = find_event_files(self.log_dir, self.limits.walk())
        self.root_problem = found.root_problem
        report.bounds.extend(found.bounds)
        self._files = {parts: self._files.get(parts) or _FileState(identity=(-1, -1)) for parts in found.files}
        parse = _event_parser()
        budget = self.limits.max_bytes
        pending = list(self._files)
        whole_budget = False
        while pending:
            # Fair shares first, so one file's backlog cannot starve the others; a pass that moved nothing (every
            # next record larger than a share) is tried again once with all that is left for each file.
            share = budget if whole_budget else max(budget // len(pending), 1)
            left: list[tuple[str, ...]] = []
            progress = False
            for parts in pending:
                if budget <= 0:
                    left.append(parts)
                    continue
                scan = self._read_file(parts, min(share, budget), report, parse)
                if scan is None:
                    continue
                budget -= scan.cost
                progress = progress or scan.cost > 0
                if scan.stop == "budget":
                    left.append(parts)
            pending = left
            if not pending or budget <= 0 or (whole_budget and not progress):
                break
            whole_budget = not progress
        if pending:
            report.bounds.append(
                f"the read budget of {self.limits.max_bytes} bytes per update (MAX_READ_BYTES) was used up: "
                "the rest is left for later updates"
            )
        report.bytes_read = self.limits.max_bytes - budget
        for bound in report.bounds:
            log.debug("reading %s: %s", self.log_dir, bound)
        return report

    def _read_file(
        self, parts: tuple[str, ...], budget: int, report: UpdateReport, parse: _Parser
    ) -> RecordScan | None:
        opened = open_regular(self.log_dir, parts)
        if opened is None:
            return None  # a link, a FIFO or gone since the listing: not read, not an error
        fd, info = opened
        name = "/".join(parts)
        try:
            return self._scan_file(fd, info, self._files[parts], parts, budget, report, parse)
        except OSError as exc:  # an I/O error on the trial's volume: this file waits for the next update
            report.warnings.append(f"{name}: {exc.strerror}")
            log.warning("reading %s stopped: %s", self.log_dir.joinpath(*parts), exc)
            return None
        finally:
            os.close(fd)

    def _scan_file(
        self,
        fd: int,
        info: os.stat_result,
        state: _FileState,
        parts: tuple[str, ...],
        budget: int,
        report: UpdateReport,
        parse: _Parser,
    ) -> RecordScan | None:
        if not _same_file(state, fd, info):
            state = self._files[parts] = _FileState(identity=(info.st_dev, info.st_ino))
        if len(state.head) < HEAD_BYTES:
            state.head = os.pread(fd, HEAD_BYTES, 0)
        if state.failed_at is not None:
            if info.st_size <= state.failed_size:
                return None
            state.failed_at = None  # grown since: the tail may have been in flight (a network filesystem)
        scan = RecordScan(offset=state.offset)
        try:
            for record in scan_records(fd, scan, info.st_size, budget, self.limits.max_record_bytes):
                report.records += 1
                scalars = parse(record.data)
                for tag, _ in scalars:
                    self._remember(tag)
                if not scalars or not self._keeps(scalars):
                    continue
                if not record.intact():
                    scan.reject(record)
                    break
                self._fold(state, scalars)
        finally:
            state.offset = scan.offset  # what was folded in stays consumed, whatever stopped the scan
        name = "/".join(parts)
        if scan.stop == "corrupt":
            state.failed_at, state.failed_size = scan.offset, info.st_size
            if state.warned_at != scan.offset:  # once per place, not at every update of a growing file
                state.warned_at = scan.offset
                message = f"{name}: {scan.detail}; the rest of this file is not read"
                report.warnings.append(message)
                log.warning("event file under %s: %s", self.log_dir, message)
        if scan.skipped:
            report.warnings.append(
                f"{name}: {scan.skipped} record(s) over {self.limits.max_record_bytes} bytes skipped"
            )
        return scan

    def _keeps(self, scalars: list[tuple[str, ScalarPoint]]) -> bool:
        """Whether any of these values would be kept (only those records need their data checksum checked)."""
        return self.wanted is None or any(tag in self.wanted for tag, _ in scalars)

    def _fold(self, state: _FileState, scalars: list[tuple[str, ScalarPoint]]) -> None:
        for tag, point in scalars:
            if len(tag) > MAX_TAG_CHARS:
                continue
            if self.wanted is not None and tag not in self.wanted:
                continue
            curve = state.curves.get(tag)
            if curve is None:
                if len(state.curves) >= self.limits.max_tags:
                    continue
                curve = state.curves[tag] = Curve(self.limits.max_points)
            curve.add(point)

    def _remember(self, tag: str) -> None:
        if tag in self._tag_names or len(tag) > MAX_TAG_CHARS:
            return
        if len(self._tag_names) < self.limits.max_tags:
            self._tag_names.add(tag)

    def tags(self) -> list[str]:
        """Scalar tags seen so far (at most `max_tags` names), sorted: for error messages."""
        return sorted(self._tag_names)

    def curve(self, tag: str) -> Curve | None:
        """The tag's curve over every file, or None if no file has a point for it."""
        parts = [state.curves[tag] for state in self._files.values() if tag in state.curves]
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else Curve.merged(parts, self.limits.max_points)

    def curves(self) -> dict[str, Curve]:
        names = {tag for state in self._files.values() for tag in state.curves}
        return {tag: curve for tag in sorted(names) if (curve := self.curve(tag)) is not None}


def _same_file(state: _FileState, fd: int, info: os.stat_result) -> bool:
    """Whether `fd` is still the file `state` read: same inode, not shorter, and the same first bytes (a file
    truncated and rewritten in place by a new writer starts with another file_version event time)."""
    if state.identity != (info.st_dev, info.st_ino) or info.st_size < state.offset:
        return False
    return not state.head or os.pread(fd, len(state.head), 0) == state.head


_Parser = Callable[[bytes], list[tuple[str, ScalarPoint]]]


@functools.cache
def _event_parser() -> _Parser:
    """The Event decoder, imported on first use: the protos cost a noticeable import the loop does not need."""
    from google.protobuf.message import DecodeError
    from tensorboard.compat.proto import event_pb2

    decode = event_pb2.Event.FromString

    def scalars(data: bytes) -> list[tuple[str, ScalarPoint]]:
        """The scalar values of one serialized Event; anything else (or anything malformed) gives nothing."""
        try:
            event = decode(data)
        except (DecodeError, RuntimeError, ValueError):
            return []
        if not event.HasField("summary"):
            return []
        found: list[tuple[str, ScalarPoint]] = []
        for value in event.summary.value:
            kind = value.WhichOneof("value")
            if kind == "simple_value":
                number: float | None = float(value.simple_value)
            elif kind == "tensor" and value.metadata.plugin_data.plugin_name in ("scalars", ""):
                number = scalar_tensor(value.tensor)
            else:
                continue
            if number is not None:
                found.append((value.tag, ScalarPoint(int(event.step), float(event.wall_time), number)))
        return found

    return scalars


# dtype enum of tensorboard/compat/proto/types.proto -> (struct format of tensor_content, TensorProto value field)
_DTYPES: dict[int, tuple[str, str]] = {
    1: ("<f", "float_val"),  # DT_FLOAT
    2: ("<d", "double_val"),  # DT_DOUBLE
    3: ("<i", "int_val"),  # DT_INT32
    9: ("<q", "int64_val"),  # DT_INT64
    19: ("<e", "half_val"),  # DT_HALF (half_val holds the 16 bits in an int)
    14: ("bfloat16", "half_val"),  # DT_BFLOAT16 (the high half of a float32)
}


def scalar_tensor(tensor: Any) -> float | None:
    """The one number of a scalar tensor (rank 0, or every dimension 1), or None for anything else.

    Decoded here rather than with TensorBoard's make_ndarray, which would build whatever shape the tensor claims
    (a hostile [2**40] included) and costs numpy plus 0.25 s of imports.
    """
    if any(dim.size != 1 for dim in tensor.tensor_shape.dim) or tensor.dtype not in _DTYPES:
        return None
    layout, field_name = _DTYPES[tensor.dtype]
    raw: bytes | None = None
    if tensor.tensor_content:
        raw = bytes(tensor.tensor_content)
    else:
        values = getattr(tensor, field_name)
        if len(values) != 1:
            return None
        if field_name != "half_val":
            return float(values[0])
        raw = struct.pack("<H", values[0] & 0xFFFF)
    if layout == "bfloat16":
        return float(struct.unpack("<f", b"\x00\x00" + raw)[0]) if len(raw) == 2 else None
    if len(raw) != struct.calcsize(layout):
        return None
    return float(struct.unpack(layout, raw)[0])
