"""The reconcile agent: keeps one mail host's files in step with the log.

It has its own durable position and its own local read model (DIR/agent/read.db, built by the
same projector code), so a mail host needs only NATS. Level-triggered: whenever events that
touch the mail stack arrive it waits for the burst to end (debounce), then renders the whole
file set from the read model, and only if something differs validates a candidate, swaps it in,
reloads the affected daemons and creates the maildirs of new mailboxes (removing those of
deleted ones). Each run's outcome is published as an `agent.reconciled` event on its own subject.
"""

import asyncio
import contextlib
import difflib
import logging
import pwd
import shutil
import sqlite3
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from commands import keys
from commands.log import EventLog, Unavailable, WrongSequence
from commands.sealing import Sealer, dkim_aad, tls_aad
from core.events import AgentReconciled, Envelope, Meta, TlsCertRegistered
from core.settings import Settings
from core.subjects import agent_subject, tls_subject
from projections.runner import Projector
from workers.filter import (
    ClamdRunner,
    ContentFilter,
    SpamdRunner,
    load_filter_settings,
    open_quarantine_db,
)
from workers.policy import PolicyServer, PolicyStore, load_policy
from workers.reconcile import maildirs, sieve_sync
from workers.reconcile.apply import apply, diff, sha256
from workers.reconcile.layout import (
    DOVECOT_DIR,
    KEYS_DIR,
    OPENDKIM_DIR,
    POSTFIX_DIR,
    TLS_DIR,
    Layout,
)
from workers.reconcile.render import RenderError, SigningKey, TlsBundle, render
from workers.reconcile.stack import MailStack
from workers.reconcile.state import CertRow, MailState, load_state
from workers.reconcile.validate import Report, validate_candidate

log = logging.getLogger("mailpanel.agent")

# Event kinds that change what the mail stack should look like.
RELEVANT = ("domain.", "mailbox.", "alias.", "config.", "whitelist.", "dkim.", "tls.", "system.")
DEBOUNCE_S = 0.15  # quiet time that ends a burst
MAX_DELAY_S = 1.0  # a never-ending burst still applies this often
CONTROL_SUBJECT = "ctl.reconcile"
AGENT_SERVICES = ("sandbox", "system")  # modes where the agent runs policy and content filter
SIEVE_PLUGIN = Path(
    "/usr/lib/dovecot/modules/lib90_sieve_plugin.so"
)  # core NATS (not the stream): "re-render and apply now"


def layout_for(settings: Settings) -> Layout:
    """The sandbox instance lives under the data dir, on the configured loopback ports. In
    system mode the files go to the system's directories (configurable), the daemons keep their
    distribution paths for queue, state and pid files, and the data dir only stages candidates."""
    base = Layout(
        root=settings.data_dir / "mailstack",
        mail_root_dir=settings.mail_root,
        smtp_port=settings.smtp_port,
        submission_port=settings.submission_port,
        imap_port=settings.imap_port,
        pop3_port=settings.pop3_port,
        milter_port=settings.milter_port,
        policy_port=settings.policy_port if settings.mailstack in AGENT_SERVICES else 0,
        filter_port=settings.filter_port if settings.mailstack in AGENT_SERVICES else 0,
        reinject_port=settings.reinject_port,
        sandbox=True,
    )
    if settings.mail_hostname:
        base = replace(base, hostname=settings.mail_hostname)
    if SIEVE_PLUGIN.exists():
        base = replace(base, sieve=True)
    if settings.mailstack != "system":
        return base
    uid, gid = _vmail_ids()
    return replace(
        base,
        mail_root_dir=Path(settings.vmail_dir),
        instance="dovecot",
        listen="0.0.0.0",
        sandbox=False,
        vmail_uid=uid,
        vmail_gid=gid,
        paths={
            "postfix_dir": Path(settings.postfix_dir),
            "dovecot_dir": Path(settings.dovecot_dir),
            "opendkim_dir": Path(settings.opendkim_dir),
            "tls_dir": Path(settings.tls_dir),
            "sieve_dir": Path("/var/lib/mailpanel/sieve"),
            "queue_dir": Path("/var/spool/postfix"),
            "data_dir": Path("/var/lib/postfix"),
            "log_dir": Path("/var/log/mailpanel"),
            "dovecot_base_dir": Path("/run/dovecot"),
            "dovecot_state_dir": Path("/var/lib/dovecot"),
            "opendkim_run_dir": Path("/run/opendkim"),
        },
    )


def _vmail_ids() -> tuple[int, int]:
    """The host's vmail user when it has one, else 5000:5000 (the conventional ids)."""
    try:
        entry = pwd.getpwnam("vmail")
    except KeyError:
        return 5000, 5000
    return entry.pw_uid, entry.pw_gid


def is_secret(rel: str) -> bool:
    """Files holding a private key: never shown in a diff or a log."""
    return rel.startswith(KEYS_DIR + "/") or (
        rel.startswith(TLS_DIR + "/") and rel.endswith("/privkey.pem")
    )


class Outcome(msgspec.Struct, kw_only=True):
    """What one run did (also what POST /system/reconcile answers with)."""

    ok: bool
    step: str
    applied_seq: int
    log: list[str]
    changed: dict[str, str] = {}
    drift: list[str] = []
    diff: dict[str, str] = {}
    daemons: list[str] = []
    duration_ms: int = 0
    error: str = ""


class Agent:
    def __init__(self, settings: Settings, layout: Layout | None = None) -> None:
        self.settings = settings
        self.mode = settings.mailstack
        self.host = settings.agent_host or "localhost"
        self.layout = layout or layout_for(settings)
        db_path = settings.data_dir / "agent" / "read.db"
        self.projector = Projector(db_path)
        self.db = sqlite3.connect(db_path, check_same_thread=False)
        # sandbox: we run the daemons; system: they run already, we only reload them.
        self.stack = (
            MailStack(self.layout, opendkim=True) if self.mode in ("sandbox", "system") else None
        )
        self.sealer = Sealer(settings.data_key, settings.data_key_id, dict(settings.old_data_keys))
        self.event_log: EventLog | None = None
        self.last: Outcome | None = None  # the last applied run (tests and callers wait on it)
        self._dirty = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._control: Any = None
        self._written: dict[str, str] = {}  # rendered file -> sha256 we last wrote
        self.policy_server: PolicyServer | None = None
        self.content_filter: ContentFilter | None = None
        self.quarantine_db: sqlite3.Connection | None = None
        self._scanners: list[SpamdRunner | ClamdRunner] = []
        self._scanner_start: asyncio.Task[None] | None = None
        self._mailboxes: set[tuple[str, str]] | None = None

    # ---- lifecycle ---------------------------------------------------------------------

    async def start(self, event_log: EventLog) -> None:
        """Catch up, apply once (and start the sandbox daemons), then follow the log."""
        self.event_log = event_log
        target = await event_log.last_seq()
        await self.projector.start(event_log)
        if target:
            await self.projector.wait_for(target, 60)
        await self._ensure_certificate(event_log)
        await self._start_services()
        # Listen only now: the catch-up is covered by the run below, not by a second one.
        self.projector.listeners.append(self._on_applied)
        await self.reconcile()
        if self.stack is not None and self.mode == "sandbox":
            await asyncio.to_thread(self._start_stack)
        self._control = await event_log.nc.subscribe(
            f"{event_log.prefix}{CONTROL_SUBJECT}", cb=self._on_control
        )
        self._task = asyncio.create_task(self._follow(), name="reconcile-agent")

    def _start_stack(self) -> None:
        """A predecessor killed outright (SIGKILL) leaves its daemons running: they are found
        by their pid files (checked to be ours) and stopped before ours start."""
        assert self.stack is not None
        leftovers = [name for name, s in self.stack.status().items() if s.running]
        if leftovers:
            log.warning("stopping daemons a previous run left behind: %s", ", ".join(leftovers))
            self.stack.stop()
        self.stack.start()

    async def _ensure_certificate(self, event_log: EventLog) -> None:
        """TLS out of the box: a self-signed certificate for the mail host name unless one
        covers it already (registered once, whichever agent of that name gets there first)."""
        hostname = self.layout.hostname
        if self._certificate(load_state(self.db)) is not None:
            return
        cert_pem, key_pem = await asyncio.to_thread(keys.self_signed, hostname, datetime.now(UTC))
        info = keys.parse_bundle(cert_pem, key_pem, hostname, datetime.now(UTC))
        event = TlsCertRegistered(
            hostname=info.hostname,
            issuer="self",
            chain_pem=info.chain_pem,
            key_sealed=self.sealer.seal(info.key_pem.encode(), tls_aad(info.hostname)),
            names=info.names,
            fingerprint=info.fingerprint_sha256,
            not_before=info.not_before,
            expires_at=info.expires_at,
        )
        meta = Meta(actor=f"agent:{self.host}", actor_id=f"agent:{self.host}", at=datetime.now(UTC))
        subject = tls_subject(hostname, event_log.prefix)
        try:
            last = await event_log.last_seq_on(subject)
            if last:
                return  # a record exists (maybe not applied here yet): never replace it
            seq, _ = await event_log.append(
                subject, Envelope(meta=meta, event=event), 0, f"self-signed-{hostname}"
            )
            await self.projector.wait_for(seq, 30)
        except (WrongSequence, Unavailable) as exc:
            log.info("self-signed certificate not registered: %s", exc)

    def _certificate(self, state: MailState) -> CertRow | None:
        """The certificate for the mail host name: its own record, else one that covers it."""
        hostname = self.layout.hostname
        exact = [c for c in state.certs if c.hostname == hostname]
        covering = [c for c in state.certs if any(keys.name_covers(n, hostname) for n in c.names)]
        found = exact or covering
        return found[0] if found else None

    def _secrets(
        self, state: MailState, lines: list[str]
    ) -> tuple[list[SigningKey], TlsBundle | None]:
        """Decrypt what the files need: DKIM keys of active domains that sign, and the
        certificate key. A key that will not open is reported and left out, never guessed."""
        domains = {d.name: d for d in state.domains}
        signing = []
        for row in state.dkim:
            domain = domains.get(row.domain)
            if domain is None or not domain.active:
                continue
            if not domain.effective.get("dkim_enabled", True):
                continue
            try:
                pem = self.sealer.unseal(row.sealed, dkim_aad(row.domain)).decode()
            except keys.SealError as exc:
                lines.append(f"DKIM key {row.selector} of {row.domain} not usable: {exc}")
                continue
            signing.append(SigningKey(domain=row.domain, selector=row.selector, private_pem=pem))
        cert = self._certificate(state)
        tls = None
        if cert is not None and cert.chain_pem and cert.key_sealed:
            try:
                key_pem = self.sealer.unseal(cert.key_sealed, tls_aad(cert.hostname)).decode()
                tls = TlsBundle(hostname=cert.hostname, chain_pem=cert.chain_pem, key_pem=key_pem)
            except keys.SealError as exc:
                lines.append(f"TLS key of {cert.hostname} not usable: {exc}")
        elif cert is not None and cert.cert_path:
            tls = TlsBundle(
                hostname=cert.hostname, cert_path=cert.cert_path, key_path=cert.key_path
            )
        return signing, tls

    @property
    def agent_dir(self) -> Path:
        return self.settings.data_dir / "agent"

    async def _start_services(self) -> None:
        """The loopback services Postfix calls: the policy service and the content filter
        (with the spamd and clamd it scans with). They must answer before Postfix starts."""
        if self.layout.policy_port:
            store = PolicyStore(self.agent_dir / "policy.db")
            self.policy_server = PolicyServer(
                load_policy(self.db), store, port=self.layout.policy_port
            )
            await self.policy_server.start()
        if not self.layout.filter_port:
            return
        s = self.settings
        spamd = ("127.0.0.1", s.spamd_port)
        clamd = ("127.0.0.1", s.clamd_port)
        if self.mode == "sandbox":  # our own scanners; a system host runs its own
            scan_dir = self.agent_dir / "scanners"
            self._scanners = [
                SpamdRunner(scan_dir / "spamd", s.spamd_port),
                ClamdRunner(scan_dir / "clamd", s.clamd_port),
            ]
            self._scanner_start = asyncio.create_task(self._start_scanners(), name="scanners")
        self.quarantine_db = open_quarantine_db(self.agent_dir / "quarantine.db")
        self.content_filter = ContentFilter(
            load_filter_settings(self.db),
            quarantine_db=self.quarantine_db,
            quarantine_dir=self.agent_dir / "quarantine",
            reinject_port=self.layout.reinject_port,
            spamd=spamd,
            clamd=clamd,
            port=self.layout.filter_port,
            hostname=self.layout.hostname,
        )
        await self.content_filter.start()

    async def _start_scanners(self) -> None:
        """In the background: spamd needs ~2 s; mail meanwhile passes unscanned (marked)."""
        for runner in self._scanners:
            try:
                started = await asyncio.to_thread(runner.start)
                log.info("%s %s", runner.name, "started" if started else "not installed")
            except Exception as exc:
                log.warning("%s did not start: %s", runner.name, exc)

    def _refresh_services(self) -> None:
        """Hand the services the read model's new settings (a reference swap)."""
        if self.policy_server is not None:
            self.policy_server.policy = load_policy(self.db)
        if self.content_filter is not None:
            self.content_filter.settings = load_filter_settings(self.db)

    async def _stop_services(self) -> None:
        if self._scanner_start is not None:
            with contextlib.suppress(Exception):
                await self._scanner_start
        for server in (self.content_filter, self.policy_server):
            if server is not None:
                with contextlib.suppress(Exception):
                    await server.close()
        for runner in self._scanners:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(runner.stop)
        if self.quarantine_db is not None:
            self.quarantine_db.close()

    async def stop(self) -> None:
        if self._control is not None:
            with contextlib.suppress(Exception):
                await self._control.unsubscribe()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.projector.stop()
        if self.stack is not None and self.mode == "sandbox":
            await asyncio.to_thread(self.stack.stop)
        await self._stop_services()
        self.db.close()

    async def _on_applied(self, tags: set[str]) -> None:
        if any(t.startswith(RELEVANT) for t in tags):
            self._dirty.set()

    async def _on_control(self, msg: Any) -> None:
        self._dirty.set()

    async def _follow(self) -> None:
        """Debounce: a burst of 1,000 events gives one apply, not 1,000."""
        while True:
            await self._dirty.wait()
            started = time.monotonic()
            while time.monotonic() - started < MAX_DELAY_S:
                self._dirty.clear()
                await asyncio.sleep(DEBOUNCE_S)
                if not self._dirty.is_set():
                    break
            self._dirty.clear()
            try:
                await self.reconcile()
            except Exception:  # a run that crashed is reported; the agent goes on
                log.exception("reconcile run failed")

    # ---- one run -----------------------------------------------------------------------

    async def reconcile(self, dry_run: bool = False) -> Outcome:
        async with self._lock:
            started = time.monotonic()
            outcome = await asyncio.to_thread(self._run, dry_run)
            if not dry_run and outcome.ok and self.stack is not None and outcome.daemons:
                outcome.log.extend(await asyncio.to_thread(self._reload, outcome.daemons))
            outcome.duration_ms = int((time.monotonic() - started) * 1000)  # reload included
            if not dry_run:
                self.last = outcome
                await self._publish(outcome)
            return outcome

    def _run(self, dry_run: bool) -> Outcome:
        state = load_state(self.db)
        lines: list[str] = [f"read model at sequence {state.seq}"]
        try:
            signing, tls = self._secrets(state, lines)
            files = render(state, self.layout, signing=signing, tls=tls)
        except RenderError as exc:
            return Outcome(
                ok=False, step="render", applied_seq=state.seq, log=lines, error=str(exc)
            )
        lines.append(f"rendered {len(files)} files")
        drift = self._drift()
        if dry_run:
            return self._dry_run(files, state.seq, lines, drift)
        report = apply(files, self.layout)
        lines.extend(report.log)
        self._refresh_services()
        if report.ok:
            self._written.update({rel: sha256(text) for rel, text in files.items()})
            lines.extend(self._sync_maildirs(state))
            if self.layout.sieve:
                lines.extend(
                    sieve_sync.sync(
                        self.layout.sieve_dir,
                        self.layout.mail_root,
                        state.mailboxes,
                        self.layout.vmail_gid,
                    )
                )
        return Outcome(
            ok=report.ok,
            step=report.step,
            applied_seq=state.seq,
            log=lines,
            changed=report.changed,
            drift=drift,
            daemons=report.daemons,
            error="" if report.ok else f"{report.step} failed",
        )

    def _dry_run(
        self, files: dict[str, str], seq: int, lines: list[str], drift: list[str]
    ) -> Outcome:
        changed = diff(files, self.layout)
        diffs: dict[str, str] = {}
        for rel in changed:
            if is_secret(rel):
                diffs[rel] = f"{rel}: a private key changed (content not shown)\n"
                continue
            live = self.layout.live(rel)
            old = live.read_text().splitlines(keepends=True) if live.exists() else []
            diffs[rel] = "".join(
                difflib.unified_diff(
                    old, files[rel].splitlines(keepends=True), f"a/{rel}", f"b/{rel}"
                )
            )
        report = self._validate_candidate(files) if changed else Report(ok=True, step="unchanged")
        lines.extend(report.log)
        return Outcome(
            ok=report.ok,
            step=report.step,
            applied_seq=seq,
            log=lines,
            changed=changed,
            drift=drift,
            diff=diffs,
            error="" if report.ok else f"{report.step} failed",
        )

    def _validate_candidate(self, files: dict[str, str]) -> Report:
        scratch = Path(tempfile.mkdtemp(prefix="mp-dry-", dir=self.layout.root.parent))
        try:
            for prefix in (POSTFIX_DIR, DOVECOT_DIR, OPENDKIM_DIR, TLS_DIR):
                live_dir = self.layout.live(prefix)
                if live_dir.is_dir():
                    shutil.copytree(live_dir, scratch / prefix, dirs_exist_ok=True, symlinks=True)
            for rel, text in files.items():
                target = scratch / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text)
            return validate_candidate(scratch, self.layout)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _drift(self) -> list[str]:
        """Rendered files on disk that differ from what this agent last wrote there."""
        out = []
        for rel, digest in sorted(self._written.items()):
            path = self.layout.live(rel)
            try:
                if sha256(path.read_text()) != digest:
                    out.append(rel)
            except (OSError, UnicodeDecodeError):
                out.append(rel)
        return out

    def _sync_maildirs(self, state: MailState) -> list[str]:
        """New mailboxes get their maildir; mailboxes gone since the last run lose theirs.
        (After a restart nothing is removed until a mailbox disappears while we watch.)"""
        wanted = {(m.domain, m.local) for m in state.mailboxes}
        lines = []
        uid, gid = self.layout.vmail_uid, self.layout.vmail_gid
        for path in maildirs.ensure_maildirs(self.layout.mail_root, sorted(wanted), uid, gid):
            lines.append(f"created maildir {path}")
        if self._mailboxes is not None:
            for domain, local in sorted(self._mailboxes - wanted):
                if maildirs.remove_maildir(self.layout.mail_root, domain, local):
                    lines.append(f"removed maildir of {local}@{domain}")
        self._mailboxes = wanted
        return lines

    def _reload(self, daemons: list[str]) -> list[str]:
        assert self.stack is not None
        try:
            answers = self.stack.reload(daemons)
        except Exception as exc:
            return [f"reload failed: {exc}"]
        return [f"reloaded {name}: {answer}" for name, answer in sorted(answers.items())]

    async def _publish(self, outcome: Outcome) -> None:
        event_log = self.event_log
        if event_log is None or not event_log.connected:
            return
        event = AgentReconciled(
            host=self.host,
            mode=self.mode,
            applied_seq=outcome.applied_seq,
            ok=outcome.ok,
            step=outcome.step,
            changed=outcome.changed,
            drift=tuple(outcome.drift),
            duration_ms=outcome.duration_ms,
            log=tuple(outcome.log[-50:]),
            error=outcome.error,
        )
        meta = Meta(actor=f"agent:{self.host}", actor_id=f"agent:{self.host}", at=datetime.now(UTC))
        subject = agent_subject(self.host, event_log.prefix)
        env = Envelope(meta=meta, event=event)
        for _ in range(3):  # reports on one subject are never contended but by this agent
            try:
                last = await event_log.last_seq_on(subject)
                await event_log.append(subject, env, last, f"agent-{self.host}-{time.time_ns()}")
                return
            except WrongSequence:
                continue
            except Unavailable as exc:
                log.warning("agent report not published: %s", exc)
                return
