"""Line digests: an unchanged row is recognized by one hash of its line, unparsed.

A nightly extract restates almost every student exactly as the previous one
did. Proving that row by row (parse the CSV, trim nine values, compare them
with the stored student) costs more than the baseline of parsing the file and
inserting it into SQLite (bench/throughput.py). So each student keeps the
digest of the last line that restated it, and a new file's lines are hashed
and looked up before anything is parsed.

The rule that makes this exact: a student's stored digest is the digest of a
line that `rules.restates` accepts against the student's stored state (the
row would be decided UNCHANGED). `plan.build_plan` records a digest only for
such lines and a run writes it together with the state it restates; any
change to the student writes the new line's digest or none. So a line whose
digest is stored for student S restates S, and needs no parsing, validation
or decision. What else `restates` depends on is in the digest's context: the
target order, the district's school codes and grades, and RULES_VERSION
(bump it whenever validation or the §5 rules change, so older digests stop
matching).

The scan reads a file as the full path does (`template.read_rows`), except
that at each record boundary the line is hashed first and, when its digest
is known, taken as that record unparsed: so records are cut in exactly the
same places. The other records (the misses) are parsed. When no hit's
student appears on another row, the misses are decided alone, against just
the students and usernames they name (processing/deciding.py, `Store.load_students`): a
nightly delta loads 3% of a district, not all of it. Anything else (a
student on two rows, more than MISS_LIMIT misses, the district changed
since the scan) takes the full path, with the hits as a hint.

The digest is keyed BLAKE2b under a key derived from the secret key, since a
line holds the student's password: without the key, a digest cannot be
checked against guessed passwords.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TextIO

from attrs import frozen

from processing.decode import open_text
from processing.model import OrderTally, RawRow
from processing.rules import present_id
from processing.template import read_rows

RULES_VERSION = "1"

LineDigest = Callable[[str], bytes]


def digest_context(target: str, school_codes: Iterable[str], grades: Iterable[str]) -> str:
    """What `plan.restates` depends on besides the line and the student: one string."""
    return "\x1f".join(
        [RULES_VERSION, target, "\x1e".join(sorted(school_codes)), "\x1e".join(sorted(grades))]
    )


MISS_LIMIT = 50_000
"""A scan keeps at most this many rows that match no digest (about 30 MB); a file with
more (a first load, or every line after a config change) goes through the full path."""


@frozen
class Scan:
    """What a file's digest scan found.

    `hits` maps the line of each record that restates its student to that
    student's id; `misses` are all the other records, parsed, in file order.
    `complete` is False when the scan stopped at MISS_LIMIT misses.
    """

    hits: dict[int, str]
    misses: list[RawRow]
    complete: bool

    @property
    def rows(self) -> int:
        return len(self.hits) + len(self.misses)

    @property
    def all_unchanged(self) -> bool:
        """Every row restates its student and no student appears twice."""
        return self.complete and not self.misses and self._hit_ids_unique()

    def rows_to_decide(self) -> RowsToDecide | None:
        """The misses, if they can be decided by themselves: no hit's student is on another row.

        Then every hit is unchanged whatever the misses do (only a row of the
        same student could change it), and a Student ID repeated among the
        misses is found among them.
        """
        if not self.complete or not self._hit_ids_unique():
            return None
        rows = RowsToDecide.of(self.misses)
        return rows if rows.student_ids.isdisjoint(self.hits.values()) else None

    def present_ids(self) -> frozenset[str]:
        """Every Student ID on a row of a complete scan (full sync, SPEC §5.6)."""
        misses = (present_id(raw.fields) for raw in self.misses)
        return frozenset(self.hits.values()) | frozenset(filter(None, misses))

    def _hit_ids_unique(self) -> bool:
        return len(set(self.hits.values())) == len(self.hits)


@frozen
class RowsToDecide:
    """A scan's misses to decide by themselves, and the students and usernames they name."""

    rows: list[RawRow]
    student_ids: frozenset[str]
    usernames: frozenset[str]  # lower-cased

    @classmethod
    def of(cls, rows: list[RawRow]) -> RowsToDecide:
        return cls(
            rows,
            frozenset(raw.fields[1].strip() for raw in rows if len(raw.fields) > 1),
            frozenset(raw.fields[5].strip().lower() for raw in rows if len(raw.fields) > 5),
        )


def scan_file(text: TextIO, known: Mapping[bytes, str], digest: LineDigest) -> Scan:
    """Read the file's records, taking each line whose digest is known as a hit, unparsed.

    Raises FileRejected for the header as `template.read_rows` does. Stops
    (incomplete) after MISS_LIMIT misses.
    """
    hits: dict[int, str] = {}

    def hit(number: int, line: str) -> bool:
        student_id = known.get(digest(line))
        if student_id is None:
            return False
        hits[number] = student_id
        return True

    misses: list[RawRow] = []
    for raw in read_rows(text, known=hit):
        misses.append(raw)
        if len(misses) > MISS_LIMIT:
            return Scan(hits, [], complete=False)
    return Scan(hits, misses, complete=True)


@frozen
class ScanResult:
    """A digest scan's findings with the district version and orders they were taken on."""

    encoding: str
    scan: Scan
    orders: dict[str, OrderTally]
    version: int


def scan_pass(
    path: Path, max_bytes: int, known: Mapping[bytes, str], digest: LineDigest
) -> tuple[str, Scan]:
    """Decode the file and scan its records against the stored digests (a worker thread)."""
    text, encoding = open_text(path, max_bytes)
    with text:
        return encoding, scan_file(text, known, digest)
