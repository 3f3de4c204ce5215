"""A run from acceptance to result: the clock, `UploadJob`, `RunRecord`, counts, errors,
and `RunResult`, the result.json object of SPEC §6.2."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
from attrs import define, frozen

from processing.model.rows import ErrorCode


def utc_now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def format_run_id(received_at: datetime, seq: int) -> str:
    """SPEC §6.1: `YYYYMMDD-HHMMSS-N`, the UTC time the upload completed and its number."""
    return f"{received_at.astimezone(UTC):%Y%m%d-%H%M%S}-{seq}"


@frozen
class UploadJob:
    """The one thing that crosses from an edge (SFTP, `eams process`) into processing:
    a completed upload, already durable in the spool."""

    district_id: str
    spool_path: Path
    size: int
    received_at: datetime  # UTC, when the upload completed
    source: str  # "students.csv", "check/students.csv" or "eams process NAME"
    dry_run: bool = False
    order_id: str | None = None  # eams process --order (SPEC §5.5)


@frozen
class PlannedError:
    """One problem of one rejected row (or of the file: `line` None), with the row's
    values as shown in errors.csv (Password masked)."""

    line: int | None
    code: ErrorCode
    message: str
    values: tuple[str, ...]


@define
class Counts:
    """What a run did to its rows (SPEC §6.2); mutable while a plan is built."""

    rows: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    activated: int = 0
    deactivated: int = 0
    transferred: int = 0
    errors: int = 0
    missing: int = 0  # full sync (SPEC §5.6): deactivated for being absent; not rows


@frozen
class FileFacts:
    """The bytes a run processed: result.json's `file`, so a script can check them."""

    name: str
    bytes: int
    sha256: str


@frozen
class Licenses:
    """The target order's licenses after the run."""

    order: str
    licenses: int
    used: int
    available: int


@frozen
class FileError:
    code: str
    message: str


@frozen
class RunResult:
    """result.json (SPEC §6.2), in the spec's field order; `held_reason` is ours (held runs).

    Reports, emails, the CLI and the store all read this one type; `to_json`
    is the contract's shape, `from_json` reads it back (tolerating results
    recorded before `file`, `sync` and `missing` existed).
    """

    run_id: str
    district: str
    state: str  # done | failed | held (a stored run may later read approved/discarded)
    received_at: datetime
    finished_at: datetime
    encoding: str | None
    rows: int
    added: int
    updated: int
    unchanged: int
    activated: int
    deactivated: int
    transferred: int
    errors: int
    file_error: FileError | None
    licenses: Licenses
    sync: str
    missing: int
    dry_run: bool
    file: FileFacts | None
    held_reason: str | None = None

    @property
    def counts(self) -> Counts:
        return Counts(
            self.rows,
            self.added,
            self.updated,
            self.unchanged,
            self.activated,
            self.deactivated,
            self.transferred,
            self.errors,
            self.missing,
        )

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "run_id": self.run_id,
            "district": self.district,
            "state": self.state,
            "received_at": iso(self.received_at),
            "finished_at": iso(self.finished_at),
            "encoding": self.encoding,
            "rows": self.rows,
            "added": self.added,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "activated": self.activated,
            "deactivated": self.deactivated,
            "transferred": self.transferred,
            "errors": self.errors,
            "file_error": _plain(self.file_error),
            "licenses": _plain(self.licenses),
            "sync": self.sync,
            "missing": self.missing,
            "dry_run": self.dry_run,
            "file": _plain(self.file),
        }
        if self.held_reason:
            data["held_reason"] = self.held_reason
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunResult:
        error, file = data.get("file_error"), data.get("file")
        return cls(
            run_id=data["run_id"],
            district=data["district"],
            state=data["state"],
            received_at=parse_iso(data["received_at"]),
            finished_at=parse_iso(data["finished_at"]),
            encoding=data["encoding"],
            rows=data["rows"],
            added=data["added"],
            updated=data["updated"],
            unchanged=data["unchanged"],
            activated=data["activated"],
            deactivated=data["deactivated"],
            transferred=data["transferred"],
            errors=data["errors"],
            file_error=FileError(**error) if error else None,
            licenses=Licenses(**data["licenses"]),
            sync=data.get("sync", "delta"),
            missing=data.get("missing", 0),
            dry_run=data["dry_run"],
            file=FileFacts(**file) if file else None,
            held_reason=data.get("held_reason"),
        )


def _plain(value: FileError | Licenses | FileFacts | None) -> dict[str, Any] | None:
    return None if value is None else attrs.asdict(value)


@frozen
class RunRecord:
    """A run as recorded: queued when its upload is accepted, its result once finished."""

    district_id: str
    run_id: str
    seq: int
    state: str
    dry_run: bool
    order_id: str | None
    source: str
    spool_path: str | None
    received_at: datetime
    result: RunResult | None
    decided_by: str | None = None  # who approved or discarded a held run (SPEC §8)
    decided_at: datetime | None = None
