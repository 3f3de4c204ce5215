"""`eams serve`: wires config, store, processing queue, SFTP and FTP refusal together.

The SSH side is asyncssh with one `DistrictSSHServer` per connection (logins, bans,
connection limits: server/logins.py), the algorithms of server/algorithms.py, and
one `DistrictSFTPServer` per SFTP session (the district's folder).
SIGHUP reloads config.toml (a broken file is refused and the old one stays);
SIGTERM/SIGINT stop accepting, let runs in progress finish, and exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
import weakref
from collections.abc import Awaitable, Callable

import asyncssh

from processing.config import Config, ConfigError
from processing.model import utc_now
from processing.passwords import StudentPasswords
from processing.run_executor import RunExecutor
from processing.run_queue import ProcessingQueue
from processing.runner import Runner, RunOutcome
from processing.sender import Sender
from processing.stale import check_stale
from processing.store import Store, database_path
from server.accept_errors import AcceptErrors
from server.accounts import Accounts, BanList
from server.admission import AdmissionGate
from server.algorithms import host_key_pairs, server_options
from server.ftp_refusal import start_ftp_refusal
from server.hostkeys import ensure_host_keys, fingerprints
from server.housekeeping import prepare_home
from server.logins import DistrictSSHServer, LoginLimits, refused_at_accept
from server.metrics import LiveFacts, Metrics
from server.sftp import DistrictSFTPServer
from server.ssh_listener import session_options
from server.uploads import Uploads, sweep
from server.web.app import WebConsole, peer_address
from server.web.operations import Operations

log = logging.getLogger("eams.server")

IDLE_TIMEOUT = 30 * 60  # an SFTP session that makes no request for this long is closed
HOUSEKEEPING_SECONDS = 3600
STALE_CHECK_SECONDS = 300
SENDER_STOP_SECONDS = 30  # at most this long for an email being handed to the mail server


class EamsServer:
    """The server's parts, built here up front and started in order by `start()`.

    Like a Controller: `__init__` builds every part from the config (the
    database connections are made but not opened; the web console only when
    [web] is set); `start()` opens, recovers and listens; `stop()` undoes it.
    """

    def __init__(
        self, config: Config, *, port: int | None = None, web_port: int | None = None
    ) -> None:
        settings = config.server
        self.config = config
        self.port = settings.port if port is None else port
        self.web_port = web_port  # None: [web] port (tests give 0)
        self.metrics = Metrics()
        self.accounts = Accounts(config)
        self.bans = BanList(settings.login_attempts, settings.ban_minutes)
        self.logins = LoginLimits()
        database = database_path(settings.data)
        # Four connections to one database, so no part waits behind another's
        # transaction: runs (long bulk writes), recording accepted uploads (a
        # CLOSE's answer), the sender (marking an email sent right after the
        # mail server's 250) and the web console's pages.
        self.store = Store(database)
        self.intake = Store(database)
        self.outbox = Store(database)
        self.console_store = Store(database)
        self.runner = Runner(config, self.store, StudentPasswords.from_data_dir(settings.data))
        self.executor = RunExecutor(self.runner)
        self.queue = ProcessingQueue(
            self.runner, self.intake, execute=self.executor, on_finished=self._run_finished
        )
        self.queue.on_accepted = lambda job: self.metrics.upload_accepted(
            job.district_id, job.dry_run
        )
        self.uploads = Uploads(
            self.queue, settings.data, settings.max_upload_bytes, limits=lambda: self.config.server
        )
        self.sender = Sender(
            self.outbox,
            lambda: self.config.smtp,
            lambda: self.config.sender,
            settings.data / "outbox",
        )
        self.sender.on_sent = self.metrics.email_sent
        self.live_metrics = LiveFacts(lambda: self.queue.depth, lambda: len(self.sessions))
        self.metrics.add_live(self.live_metrics)
        self.web = self._web_console()
        self.accept_errors: AcceptErrors | None = None
        self.connections: weakref.WeakSet[asyncssh.SSHServerConnection] = weakref.WeakSet()
        self.sessions: weakref.WeakSet[DistrictSFTPServer] = weakref.WeakSet()
        self._tasks: list[asyncio.Task[None]] = []
        self.ssh: asyncssh.SSHAcceptor | None = None
        self.ftp: asyncio.Server | None = None
        self.stopped = asyncio.Event()
        self.sender_task: asyncio.Task[None] | None = None

    def _web_console(self) -> WebConsole | None:
        """The web console when [web] is set (SPEC §8), reading through its own connection."""
        web = self.config.web
        if web is None or (web.port == 0 and self.web_port is None):
            return None
        operations = Operations(
            database=lambda: database_path(self.config.server.data),
            sftp_accepting=self._sftp_accepting,
            queue_depth=lambda: self.queue.depth,
            metrics=self.metrics,
            live=self.live_metrics,
            store_facts=self.console_store.metric_facts,
            allowed=lambda: self.config.web.metrics_allow if self.config.web else (),
            remote=peer_address,
        )
        console = WebConsole(
            lambda: self.config,
            self.console_store,
            self.runner,
            lambda: self.bans,
            execute=self.queue.run_now,
            port=self.web_port,
            extra_routes=operations.add_routes,
        )
        console.on_login_failed = lambda: self.metrics.login_failed("web")
        return console

    # ---- start / stop ------------------------------------------------------------------

    async def start(self) -> None:
        """Open the database, recover what the last stop left, then listen."""
        settings = self.config.server
        for district_id in self.config.districts:
            prepare_home(settings.homes / district_id)
        keys = await asyncio.to_thread(ensure_host_keys, settings.host_keys)
        # Parsed once: given paths, asyncssh re-reads and re-parses every key file on
        # each login (its per-connection options reload), and a 3072-bit RSA parse
        # made connect+auth twice as slow as OpenSSH (bench/sftp.py).
        host_keys = await asyncio.to_thread(lambda: [asyncssh.read_private_key(k) for k in keys])
        for line in await asyncio.to_thread(fingerprints, settings.host_keys):
            log.info("host key %s", line)
        for store in (self.store, self.intake, self.outbox):
            await store.connect()
        for warning in await self.store.sync_config(self.config):
            log.warning("%s", warning)
        # Before the port opens no upload is live: staging files are a killed run's leftovers.
        await self.uploads.remove_staging_leftovers(
            [settings.homes / d for d in self.config.districts]
        )
        self.sender_task = asyncio.create_task(self.sender.run(), name="sender")
        self._tasks.append(self.sender_task)
        # What the last stop (or crash) left is queued BEFORE the port opens, so a
        # new upload can never overtake a run acknowledged before it (bench/crash.py).
        rewritten = await self.runner.rewrite_missing_results()
        if rewritten:
            log.info("wrote the missing result files of %d run(s)", rewritten)
        adopted, removed = await self.runner.settle_spool()
        if adopted or removed:
            log.info(
                "spool: %d upload(s) adopted as queued runs, %d file(s) removed", adopted, removed
            )
        resumed = await self.queue.resume()
        if resumed:
            log.info("resuming %d queued run(s) left from before the last stop", resumed)
        self.accept_errors = AcceptErrors(asyncio.get_running_loop())
        self.accept_errors.install()
        try:
            self.ssh = await asyncssh.create_server(
                lambda: DistrictSSHServer(self),
                settings.listen,
                self.port,
                tunnel=AdmissionGate(lambda peer: refused_at_accept(self, peer)),
                server_host_keys=host_key_pairs(host_keys),
                **server_options(),
                **session_options(),
                sftp_factory=self._sftp_session,
                reuse_address=True,
            )
        except OSError as exc:
            await self.stop()
            raise BindError(bind_message(settings.listen, self.port, exc)) from exc
        self.port = self.ssh.sockets[0].getsockname()[1]
        if settings.ftp_refusal_port:
            try:
                self.ftp = await start_ftp_refusal(settings.listen, settings.ftp_refusal_port)
            except OSError as exc:
                log.error(
                    "FTP refusal listener not started: %s",
                    bind_message(settings.listen, settings.ftp_refusal_port, exc),
                )
        for seconds, step, what in (
            (HOUSEKEEPING_SECONDS, self._sweep, "removing old files"),
            (60, self._close_idle, "closing idle sessions"),
            (STALE_CHECK_SECONDS, self._stale_alerts, "checking for missing uploads"),
        ):
            self._tasks.append(asyncio.create_task(self._every(seconds, step, what), name=what))
        log.info(
            "eAMS SFTP listening on %s:%d (%d districts)",
            settings.listen,
            self.port,
            len(self.config.districts),
        )
        await self._start_web()

    def _run_finished(self, outcome: RunOutcome) -> None:
        self.sender.wake()
        self.metrics.run_finished(outcome)

    def _sftp_accepting(self) -> bool:
        return self.ssh is not None and bool(self.ssh.sockets) and not self.stopped.is_set()

    async def _start_web(self) -> None:
        """Open the console's connection and listen; a port in use is logged, SFTP goes on."""
        if self.web is None:
            return
        await self.console_store.connect()
        try:
            await self.web.start()
        except OSError as exc:
            web = self.config.web
            where = bind_message(web.listen, web.port, exc) if web else str(exc)
            log.error("web console not started: %s", where)
            self.web = None

    @property
    def ftp_port(self) -> int | None:
        return self.ftp.sockets[0].getsockname()[1] if self.ftp and self.ftp.sockets else None

    async def stop(self) -> None:
        """Stop accepting, end sessions, let runs in progress finish."""
        log.info("stopping: no new connections; waiting for runs in progress")
        if self.web is not None:
            await self.web.stop()
        if self.ssh is not None:
            self.ssh.close()
        if self.ftp is not None:
            self.ftp.close()
        for conn in list(self.connections):
            conn.close()
        if self.sender_task is not None:  # let a delivery in progress be recorded
            self.sender.stop()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.sender_task), SENDER_STOP_SECONDS)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.queue.stop()
        await asyncio.to_thread(self.executor.close)
        if self.ssh is not None:
            await self.ssh.wait_closed()
        if self.ftp is not None:
            await self.ftp.wait_closed()
        if self.accept_errors is not None:
            await self.accept_errors.uninstall()
        self.logins.password_checks.close()
        await self._close_stores()
        log.info("stopped")
        self.stopped.set()

    async def _close_stores(self) -> None:
        for store in (self.store, self.intake, self.outbox, self.console_store):
            await store.close()

    # ---- sessions ----------------------------------------------------------------------

    def _sftp_session(self, chan: asyncssh.SSHServerChannel[bytes]) -> DistrictSFTPServer:
        username = chan.get_extra_info("username")
        district = self.accounts.district_for(username)
        if district is None:  # removed by a reload after the login
            chan.close()
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, "this account no longer exists"
            )
        server = DistrictSFTPServer(
            chan,
            district_id=district.id,
            home=self.config.server.homes / district.id,
            uploads=self.uploads,
        )
        self.sessions.add(server)
        return server

    # ---- reload and housekeeping ----------------------------------------------------------

    async def reload(self) -> bool:
        """SIGHUP: re-read config.toml; keep the old config if the new one has errors."""
        try:
            new = await asyncio.to_thread(Config.from_toml, self.config.path)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("config reload refused: %s", problem)
            log.error("config reload refused: the previous configuration stays in force")
            return False
        for warning in await self.store.sync_config(new):
            log.warning("%s", warning)
        for district_id in new.districts:
            prepare_home(new.server.homes / district_id)
        old, old_web = self.config.server, self.config.web
        self.config = new
        self.runner.config = new
        self.accounts = Accounts(new)
        self.uploads.max_bytes = new.server.max_upload_bytes
        if (new.server.login_attempts, new.server.ban_minutes) != (
            old.login_attempts,
            old.ban_minutes,
        ):
            self.bans = BanList(new.server.login_attempts, new.server.ban_minutes)
        restart_only = [
            key
            for key in ("listen", "port", "host_keys", "data", "ftp_refusal_port")
            if getattr(new.server, key) != getattr(old, key)
        ]
        if restart_only:
            log.warning(
                "config reload: [server] %s take(s) effect at the next restart",
                ", ".join(restart_only),
            )
        if (new.web is None) != (old_web is None) or (
            new.web is not None and old_web is not None and new.web.port != old_web.port
        ):
            log.warning("config reload: [web] listen/port take effect at the next restart")
        log.info("config reloaded: %d districts", len(new.districts))
        await self.store.record_audit(
            who="operator (SIGHUP)",
            action="config reload",
            district_id=None,
            detail=f"{len(new.districts)} districts",
            address="local",
        )
        return True

    async def _every(self, seconds: float, step: Callable[[], Awaitable[None]], what: str) -> None:
        """Run `step` every `seconds`; an error is logged and the next round still comes."""
        while True:
            try:
                await step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s failed; trying again in %.0f s", what, seconds)
            await asyncio.sleep(seconds)

    async def _sweep(self) -> None:
        """Old temp uploads (a day) and results (results_retention_days)."""
        for district_id in self.config.districts:
            home = self.config.server.homes / district_id
            removed = await asyncio.to_thread(
                sweep, home, results_days=self.config.server.results_retention_days
            )
            for path in removed:
                log.info("removed old file %s", path)

    async def _close_idle(self) -> None:
        now = time.monotonic()
        for session in list(self.sessions):
            if now - session.last_activity > IDLE_TIMEOUT:
                log.info("closing idle SFTP session of %s", session.district_id)
                session.channel.close()

    async def _stale_alerts(self) -> None:
        """Alert districts whose uploads stopped (SPEC §6.4)."""
        alerted = await check_stale(self.store, self.config, utc_now())
        for district_id in alerted:
            log.warning("no upload from %s for too long: alert queued", district_id)
        if alerted:
            self.sender.wake()


class BindError(Exception):
    pass


def bind_message(host: str, port: int, exc: OSError) -> str:
    reason = exc.strerror or str(exc)
    if exc.errno == errno.EACCES and port < 1024:
        reason += " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
    elif exc.errno == errno.EADDRINUSE:
        reason += " (another program is listening there)"
    return f"cannot listen on {host}:{port}: {reason}"
