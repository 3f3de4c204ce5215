"""Emails to districts and operators (SPEC §6.4): pure message building.

A run's email is built here and queued in the run's own transaction
(`Store.finish_run`), so it exists exactly when the run does. Delivery is the
outbox sender's job (`processing/sender.py`), never the run's.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from email.header import Header
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid, parseaddr

from processing.config import Config, District
from processing.error_codes import fix_lines
from processing.model import PlannedError, QueuedEmail, RunResult, iso, utc_now

INLINE_ERRORS = 10


def subject_for(state: str, errors: int, district_name: str) -> str:
    """SPEC §6.4's subject for a run that ended in `state` with `errors` rejected rows."""
    if state == "failed":
        return f"MY Access eAMS: update FAILED for {district_name}"
    if state == "held":
        return f"MY Access eAMS: update HELD for {district_name}"
    if errors:
        return f"MY Access eAMS: update completed with {errors} errors for {district_name}"
    return f"MY Access eAMS: update succeeded for {district_name}"


def _counts(result: RunResult) -> list[str]:
    licenses = result.licenses
    missing = (
        [f"  missing (not in the file, deactivated): {result.missing}"]
        if result.sync == "full"
        else []
    )
    return [
        f"  rows in the file:  {result.rows}",
        f"  added:             {result.added}",
        f"  updated:           {result.updated}",
        f"  unchanged:         {result.unchanged}",
        f"  activated:         {result.activated}",
        f"  deactivated:       {result.deactivated}",
        f"  transferred:       {result.transferred}",
        f"  rejected rows:     {result.errors}",
        *missing,
        f"  licenses available on order {licenses.order}: {licenses.available} "
        f"of {licenses.licenses}",
    ]


def _error_lines(errors: Sequence[PlannedError], total: int) -> list[str]:
    lines = []
    for error in errors[:INLINE_ERRORS]:
        where = f"line {error.line}" if error.line is not None else "file"
        lines.append(f"  {where}: {error.code}: {error.message}")
    if total > INLINE_ERRORS:
        lines.append(f"  ... and {total - INLINE_ERRORS} more in the error file")
    return lines


def render_body(
    result: RunResult,
    district: District,
    errors: Sequence[PlannedError],
    public_url: str = "",
) -> str:
    """The email's text; with `[web] public_url`, a link to the run in the console."""
    run_id = result.run_id
    state = result.state
    errors_path = f"/results/{run_id}.errors.csv"
    lines = [
        f"District: {district.name} ({district.id})",
        f"Run: {run_id}",
        f"File received: {iso(result.received_at)}",
        "",
    ]
    if state == "failed":
        problem = result.file_error
        lines += [
            "The students.csv upload was rejected and NOTHING was applied:",
            f"  {problem.code}: {problem.message}" if problem else "",
            "",
            f"The error file is on the SFTP site at {errors_path}",
            "Fix the extract and upload students.csv again.",
        ]
        if problem:
            lines += ["", *fix_lines([problem.code])]
    elif state == "held":
        lines += [
            "The students.csv upload was HELD and nothing was applied:",
            f"  {result.held_reason or ''}",
            "",
            "If the file is right, your MY Access account manager can release it "
            f"(eams approve {run_id}); otherwise fix the extract and upload it again.",
            "",
            "What the file would have done:",
            *_counts(result),
        ]
    else:
        if result.errors:
            lines += [
                f"The update was applied, but {result.errors} rows were rejected.",
                "The other rows were applied:",
            ]
        else:
            lines.append("The update was applied:")
        lines += ["", *_counts(result)]
        if result.errors:
            lines += [
                "",
                "First rejected rows:",
                *_error_lines(errors, len(errors)),
                "",
                f"Every rejected row is in the error file on the SFTP site at {errors_path}",
                "Fix these rows in your SIS; the next extract carries the fix.",
                "",
                *fix_lines(error.code for error in errors),
            ]
    if public_url:
        link = f"{public_url.rstrip('/')}/districts/{district.id}/runs/{run_id}"
        lines += ["", f"See this run in the web console: {link}"]
    lines += ["", "-- ", "MY Access eAMS (this message was sent automatically)"]
    return "\n".join(lines) + "\n"


def build_message(
    sender: str,
    recipients: Sequence[str],
    subject: str,
    body: str,
    *,
    to: Sequence[str],
    cc: Sequence[str] = (),
    now: datetime | None = None,
) -> bytes:
    """The message as sent: 7-bit clean, so any SMTP server takes it unchanged.

    The body is quoted-printable UTF-8 (no 8BITMIME needed). The Subject is
    RFC 2047-encoded by `email.header` instead of the policy's folder, which
    can emit an empty encoded-word (`=?utf-8?q??=`, CPython gh-136052) when a
    district name with accents falls at the fold; strict servers reject that.
    """
    if not to:  # no district address: the operators are the addressees, not copied
        to, cc = (tuple(cc) or tuple(recipients)), ()
    message = EmailMessage(policy=SMTP)
    message["From"] = sender
    message["To"] = ", ".join(to)
    if cc:
        message["Cc"] = ", ".join(cc)
    message["Date"] = format_datetime(now or utc_now())
    domain = parseaddr(sender)[1].rpartition("@")[2]
    message["Message-ID"] = make_msgid(domain=domain or "eams.local")
    message.set_content(body, charset="utf-8", cte="quoted-printable")
    return encode_subject(subject) + message.as_bytes()


def encode_subject(subject: str) -> bytes:
    """`Subject: ...` CRLF, folded at whitespace, encoded-words of at most 75 characters."""
    folded = Header(subject, header_name="Subject", maxlinelen=76).encode(linesep="\r\n")
    return f"Subject: {folded}\r\n".encode("ascii")


def run_emails(
    config: Config,
    district: District,
    result: RunResult,
    errors: Sequence[PlannedError],
) -> list[QueuedEmail]:
    """The email(s) one finished run queues; none for dry runs or with no recipients."""
    if result.dry_run:
        return []
    state = result.state
    copy_operators = state in ("failed", "held")
    to = list(district.notify)
    cc = [a for a in config.operators_notify if a not in to] if copy_operators else []
    recipients = tuple(to + cc)
    if not recipients:
        return []
    subject = subject_for(state, result.errors, district.name)
    public_url = config.web.public_url if config.web is not None else ""
    body = render_body(result, district, errors, public_url)
    message = build_message(config.sender, recipients, subject, body, to=to, cc=cc)
    kind = state if state != "done" else ("partial" if result.errors else "success")
    return [QueuedEmail(kind=kind, recipients=recipients, message=message)]


def stale_email(
    config: Config, district: District, last_upload: datetime | None, now: datetime
) -> QueuedEmail:
    """SPEC §6.4 missing upload: to the district and the operators, once per silence."""
    subject = f"MY Access eAMS: no update received from {district.name}"
    since = (
        f"The last students.csv arrived at {last_upload:%Y-%m-%d %H:%M} UTC."
        if last_upload
        else "No students.csv has been received since the district was set up."
    )
    body = "\n".join(
        [
            f"District: {district.name} ({district.id})",
            "",
            f"MY Access eAMS has received no students.csv from {district.name} for more than "
            f"{district.stale_after_hours:g} hours (checked {now:%Y-%m-%d %H:%M} UTC).",
            since,
            "",
            "A nightly SIS extract that fails silently lets the MY Access roster drift out of "
            "sync. Please check the scheduled export and the SFTP upload job.",
            "",
            "You will not be reminded again until the next upload arrives.",
            "",
            "-- ",
            "MY Access eAMS (this message was sent automatically)",
        ]
    )
    to = list(district.notify)
    cc = [a for a in config.operators_notify if a not in to]
    recipients = tuple(to + cc)
    message = build_message(config.sender, recipients, subject, body + "\n", to=to, cc=cc, now=now)
    return QueuedEmail(kind="stale", recipients=recipients, message=message)
