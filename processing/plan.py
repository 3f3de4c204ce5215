"""A run decided in memory: rows in file order through the pure rules.

The store loads a district's whole state in one query (`DistrictState`), this
module walks the file's rows through `validate` and `rules.decide`, updating
that in-memory state as it goes (each row sees the state the rows above left,
SPEC §5), and collects a `Plan`: the changed students, new passwords, row
errors and counts. The store then writes the plan in one transaction. Deciding
500,000 rows this way costs no database round trip per row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

from attrs import define, field, frozen

from processing.digests import LineDigest
from processing.model import (
    PASSWORD_COLUMN,
    TEMPLATE_COLUMNS,
    Counts,
    DistrictState,
    PlannedError,
    RawRow,
    Row,
    RowError,
    Student,
)
from processing.rules import (
    Outcome,
    deactivated_for_absence,
    decide,
    duplicate_error,
    restates,
)
from processing.validate import validate

ECHO_LIMIT = 256  # characters of a rejected row's value kept for errors.csv


def echoed(fields: tuple[str, ...]) -> tuple[str, ...]:
    """A rejected row's values as stored and shown: password hidden, each value capped.

    The cap keeps a hostile 50 MB cell out of the database and errors.csv.
    """
    return tuple(v if len(v) <= ECHO_LIMIT else v[:ECHO_LIMIT] + "…" for v in mask(fields))


def mask(fields: tuple[str, ...]) -> tuple[str, ...]:
    """The row's values with the Password hidden, so it is never stored or shown.

    When the row does not have the template's nine columns (an unquoted comma,
    an unclosed quote that swallowed the lines below), nobody can tell which
    value is the password, so only School Code and Student ID are kept (unless
    they span lines) and every other value becomes `***`.
    """
    width = len(TEMPLATE_COLUMNS)
    trimmed = fields
    while len(trimmed) > width and not trimmed[-1].strip():
        trimmed = trimmed[:-1]
    if len(trimmed) == width:
        # a blank (or only spaces) password is shown blank; any other as ***
        shown = "***" if trimmed[PASSWORD_COLUMN].strip() else ""
        return (*trimmed[:PASSWORD_COLUMN], shown, *trimmed[PASSWORD_COLUMN + 1 :])
    return tuple(
        v if i < 2 and "\n" not in v and "\r" not in v else ("***" if v.strip() else "")
        for i, v in enumerate(trimmed)
    )


@define
class Plan:
    target: str
    active_before: int
    counts: Counts = field(factory=Counts)
    changes: dict[str, Student] = field(factory=dict)  # in first-change order
    added: set[str] = field(factory=set)  # the student ids in `changes` that are new
    new_passwords: dict[str, str] = field(factory=dict)
    errors: list[PlannedError] = field(factory=list)
    missing: list[Student] = field(factory=list)  # full sync: as stored, before deactivation
    # student id -> the line digest to store with it (processing/digests.py): for
    # every changed student (None: clear it) and for unchanged ones whose line
    # restates them under a digest not stored yet
    digests: dict[str, bytes | None] = field(factory=dict)

    @classmethod
    def unchanged(cls, target: str, active_before: int, rows: int) -> Plan:
        """A file every row of which restates its student (the digest scan proved it)."""
        plan = cls(target=target, active_before=active_before)
        plan.add_unchanged(rows)
        return plan

    def add_unchanged(self, rows: int) -> None:
        """Count rows that restate their students, decided without build_plan (the scan's hits)."""
        self.counts.rows += rows
        self.counts.unchanged += rows


@frozen
class FileFindings:
    """What must be known about the whole file before its rows are decided exactly."""

    duplicates: dict[str, list[int]]  # student id -> every line it appears on
    usernames: frozenset[str]  # lower-cased, not this district's: check other districts


class FindingsRecorder:
    """Records duplicates and new usernames while the rows stream into `build_plan`.

    The runner decides a file in one optimistic pass that assumes no
    repeated Student IDs and no username held by another district; this recorder
    collects what proves or disproves that, so the rare file that breaks the
    assumption is decided again, exactly, with `duplicates` and
    `taken_elsewhere` known.
    """

    def __init__(self, owners: dict[str, str]) -> None:
        self.owners = owners  # live: a username this file already gave out is not new
        self.first_line: dict[str, int] = {}
        self.duplicates: dict[str, list[int]] = {}
        self.usernames: set[str] = set()

    def __call__(self, raw_rows: Iterable[RawRow]) -> Iterator[RawRow]:
        first_line, duplicates, usernames = self.first_line, self.duplicates, self.usernames
        owners = self.owners
        for raw in raw_rows:
            fields = raw.fields
            if len(fields) > 1:
                student_id = fields[1].strip()
                if student_id:
                    seen = first_line.setdefault(student_id, raw.line)
                    if seen != raw.line:
                        duplicates.setdefault(student_id, [seen]).append(raw.line)
            if len(fields) > 5:
                key = fields[5].strip().lower()
                if key not in owners:
                    usernames.add(key)
            yield raw

    def findings(self) -> FileFindings:
        return FileFindings(duplicates=self.duplicates, usernames=frozenset(self.usernames))


def file_findings(raw_rows: Iterable[RawRow], owners: dict[str, str] | None = None) -> FileFindings:
    """The recorder's findings for a whole file, without deciding anything."""
    recorder = FindingsRecorder(owners if owners is not None else {})
    for _ in recorder(raw_rows):
        pass
    return recorder.findings()


def build_plan(
    raw_rows: Iterable[RawRow],
    state: DistrictState,
    *,
    target: str,
    school_codes: frozenset[str],
    grades: frozenset[str],
    duplicates: dict[str, list[int]],
    taken_elsewhere: frozenset[str],
    mac: Callable[[str], bytes],
    digest: LineDigest | None = None,
    hits: Mapping[int, str] | None = None,
    missing: Sequence[Student] = (),
) -> Plan:
    """Decide every row in file order, mutating `state` as the rows apply.

    `hits` are the lines whose digest is stored for a student (the digest
    scan of `state`): such a line, when it is a whole record, is unchanged
    without being parsed further. With `digest`, the plan records the digest
    of every line that restates its student after the row (`Plan.digests`).
    `missing` (full sync, SPEC §5.6) are deactivated before the first row, so
    new students in the same file can take the licenses they free.
    """
    plan = Plan(target=target, active_before=state.active_count)
    counts = plan.counts
    students, owners, orders = state.students, state.owners, state.orders
    target_tally = orders[target]
    digests = plan.digests
    hits = hits or {}
    for absent in missing:
        students[absent.student_id] = gone = deactivated_for_absence(absent)
        orders[absent.order_id].used -= 1
        counts.deactivated += 1
        counts.missing += 1
        plan.changes[absent.student_id] = gone
        plan.missing.append(absent)
        digests[absent.student_id] = None  # its line is not in this file
    for raw in raw_rows:
        counts.rows += 1
        fields, text = raw.fields, raw.text
        if text is not None:
            hit = hits.get(raw.line)
            if hit is not None and hit not in duplicates:
                counts.unchanged += 1
                continue
        if len(fields) == 9:
            known = students.get(fields[1].strip())
            if (
                known is not None
                and known.student_id not in duplicates
                and restates(known, fields, target, school_codes, grades, mac)
            ):
                counts.unchanged += 1
                if digest is not None and text is not None:
                    digests[known.student_id] = digest(text)
                continue
        checked = validate(raw, school_codes, grades)
        student_id = raw.fields[1].strip() if len(raw.fields) > 1 else ""
        if student_id in duplicates:
            problems = [*checked] if isinstance(checked, list) else []
            problems.append(duplicate_error(student_id, duplicates[student_id]))
            checked = problems
        if isinstance(checked, list):
            _reject(plan, raw, checked)
            continue
        row: Row = checked
        current = students.get(row.student_id)
        key = row.username.lower()
        owner = owners.get(key)
        taken = owner != row.student_id if owner is not None else key in taken_elsewhere
        row_mac = mac(row.password) if row.password is not None else None
        decision = decide(
            current,
            row,
            row_mac,
            target,
            target_tally.licenses - target_tally.used,
            taken,
        )
        if decision.outcome is Outcome.ERROR:
            assert decision.error is not None
            _reject(plan, raw, [decision.error])
            continue
        if decision.take_from is not None:
            orders[decision.take_from].used += 1
        if decision.give_back is not None:
            orders[decision.give_back].used -= 1
        after = current if decision.outcome is Outcome.UNCHANGED else decision.student
        assert after is not None
        # After an applied row the student holds the row's values, so the line
        # restates it (`restates`) when the student is on the target order (a D
        # row leaves an active student of another order on it) and the row is
        # not an X (run again, an X is STUDENT_EXISTS). Cheaper than calling
        # `restates`; tests/processing/test_properties.py checks they agree.
        line_digest = (
            digest(text)
            if digest is not None
            and text is not None
            and row.status != "X"
            and after.order_id == target
            else None
        )
        if decision.outcome is Outcome.UNCHANGED:
            counts.unchanged += 1
            if line_digest is not None:
                digests[row.student_id] = line_digest
            continue
        new = after
        if decision.outcome is Outcome.ADDED:
            counts.added += 1
            plan.added.add(row.student_id)
        else:
            counts.updated += 1
        counts.activated += decision.activated
        counts.deactivated += decision.deactivated
        counts.transferred += decision.transferred
        if current is not None and current.username.lower() != key:
            del owners[current.username.lower()]
        owners[key] = row.student_id
        students[row.student_id] = new
        plan.changes[row.student_id] = new
        digests[row.student_id] = line_digest
        if decision.password_changed and row.password is not None:
            plan.new_passwords[row.student_id] = row.password
    return plan


def _reject(plan: Plan, raw: RawRow, problems: list[RowError]) -> None:
    plan.counts.errors += 1
    values = echoed(raw.fields)
    for problem in problems:
        plan.errors.append(PlannedError(raw.line, problem.code, problem.message, values))
