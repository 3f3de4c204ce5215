"""Line digests: an unchanged row is recognized by one hash of its line, unparsed.

A nightly extract restates almost every student exactly as the previous one
did. Proving that row by row (parse the CSV, trim nine values, compare them
with the stored student) costs more than the baseline of parsing the file and
inserting it into SQLite (bench/processing.py). So each student keeps the
digest of the last line that restated it, and a new file's lines are hashed
and looked up before anything is parsed.

The rule that makes this exact: a student's stored digest is the digest of a
line that `plan.restates` accepts against the student's stored state (the
row would be decided UNCHANGED). `plan.build_plan` records a digest only for
such lines and a run writes it together with the state it restates; any
change to the student writes the new line's digest or none. So a line whose
digest is stored for student S restates S, and needs no parsing, validation
or decision. What else `restates` depends on is in the digest's context: the
target order, the district's school codes and grades, and RULES_VERSION
(bump it whenever validation or the §5 rules change, so older digests stop
matching). Everything else about the file (duplicates, blank lines, lines
no digest matches) sends the file through the full path, with the matched
lines as a hint.

The digest is keyed BLAKE2b under a key derived from the secret key, since a
line holds the student's password: without the key, a digest cannot be
checked against guessed passwords.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from attrs import frozen

from processing.template import TEXT_LIMIT

RULES_VERSION = "1"

LineDigest = Callable[[str], bytes]


def digest_context(target: str, school_codes: Iterable[str], grades: Iterable[str]) -> str:
    """What `plan.restates` depends on besides the line and the student: one string."""
    return "\x1f".join(
        [RULES_VERSION, target, "\x1e".join(sorted(school_codes)), "\x1e".join(sorted(grades))]
    )


@frozen
class Scan:
    """What hashing every line of a file found, before any parsing.

    `hits` maps a physical line number to the student whose stored digest
    that line has. `unmatched` counts the lines that are neither a hit nor
    plainly blank.
    """

    rows: int
    hits: dict[int, str]
    unmatched: int

    @property
    def all_unchanged(self) -> bool:
        """Every row restates its student and no student appears twice."""
        return not self.unmatched and len(set(self.hits.values())) == len(self.hits)


_NO_COMMAS = str.maketrans("", "", ",")


def scan_lines(
    first_line: int, lines: Iterable[str], known: Mapping[bytes, str], digest: LineDigest
) -> Scan:
    """Hash each line after the header (line `first_line` + 1 onwards) and look it up.

    A line without quotes whose cells are all blank is a row the reader skips
    (Excel's ",,,,,,,,"); anything else that matches no digest is unmatched.
    A line longer than TEXT_LIMIT never has a digest stored (`RawRow.text` is
    None for it), so it is unmatched, unhashed. Lines inside a multi-line
    quoted record are looked at one by one here; only the full path knows
    record boundaries, so such a file is unmatched and goes there.
    """
    hits: dict[int, str] = {}
    unmatched = 0
    number = first_line
    for line in lines:
        number += 1
        if len(line) > TEXT_LIMIT:  # no digest is stored for such a line
            unmatched += 1
            continue
        text = line.rstrip("\r\n")
        student_id = known.get(digest(text))
        if student_id is not None:
            hits[number] = student_id
        elif '"' in text or text.translate(_NO_COMMAS).strip():
            unmatched += 1
    return Scan(rows=len(hits) + unmatched, hits=hits, unmatched=unmatched)
