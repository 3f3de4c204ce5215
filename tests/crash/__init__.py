"""Crash campaign: `kill -9` a real `eams serve` at chosen points, restart it, check.

A correctness harness, not a benchmark: tests/test_crash_campaign.py runs a short
campaign in CI, and `.venv/bin/python bench/crash.py --cycles 20` the long one
(a table per cycle). It lives in tests/ because it is a test; bench/crash.py is
only its command line.

Set-up (everything on 127.0.0.1, in a temp folder): a config with several
districts (one with a small Enterprise order, one with the default deactivation
guard), an [smtp] section pointing at an aiosmtpd server started here, and
`eams serve --config X --port P` as a child process. Before the first start each
district gets an initial load onto its regular order (`eams process --order`),
so later uploads also transfer students.

One cycle:
1. workload: one asyncssh client per district uploads 1-3 files (50 to
   `max_rows` rows; A/D/X/I rows with some row errors, duplicate ids, bad
   headers, repeat uploads, dry runs into check/), each either directly
   (OPEN/WRITE/CLOSE) or WinSCP-style (`.filepart`, CLOSE, REMOVE, RENAME) or as
   `.part` + posix-rename; districts in parallel;
2. `kill -9` of the server at the cycle's kill point; the mail server is stopped
   in some cycles so that emails stay queued;
3. restart (some kill points kill again during the restart). In some cycles the
   districts first delete their result files (SPEC §3 lets them; the restart
   rewrites only those never written), and a district with runs left queued
   uploads the moment the port accepts, before the restart is done (`eager`,
   `delete_results`);
4. once the server is idle (no queued run, every result file written, and with
   the mail server up, no pending email), the checks; a failure names the
   upload or run. A duplicate email whose kill fell between the mail server's
   250 and the outbox commit (sender.py documents that window) is listed, not
   failed. Leftovers that are not failures (spool copies, staging files) are
   printed as notes.

Where each part lives:
  campaign.py     the lifecycle above (Campaign.run -> Summary)
  world.py        districts, config.toml, folders, read-only database access
  rosters.py      the students.csv files the districts upload
  workload.py     planning each cycle's uploads; the districts' SFTP sessions
  ledger.py       what the clients did: every Upload and how far it got
  kill_points.py  the kill points, waiting for one, `kill -9` and its snapshot
  eams_process.py the `eams serve` child: start, kill, stop, wait until idle
  mail_sink.py    the aiosmtpd server counting emails per run
  checks.py       the checks after each restart
  model_check.py  the same files through `eams process` on a fresh database
  report.py       the per-cycle table row and the summary
"""

from tests.crash.campaign import Campaign
from tests.crash.kill_points import KILL_POINTS
from tests.crash.report import CycleRecord, Summary, print_summary

__all__ = ["KILL_POINTS", "Campaign", "CycleRecord", "Summary", "print_summary"]
