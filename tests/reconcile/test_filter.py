"""The before-queue content filter with a real spamd and a real clamd (each skips when not
installed: run .ci/mailstack-deps as root). Mail goes in over SMTP (smtplib) as Postfix's
before-filter smtpd would send it; an aiosmtpd sink stands in for Postfix's re-injection smtpd
and records what is delivered. clamd's database holds only the EICAR signature; spamd scores
GTUBE at 1000. Every wait is bounded; nothing asserts on wall-clock time."""

import asyncio
import email.message
import email.utils
import os
import shutil
import smtplib
import sqlite3
import stat
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from workers.filter import (
    EICAR_NAME,
    ClamdRunner,
    ContentFilter,
    FilterSettings,
    ScannerError,
    SpamdRunner,
    SpamResult,
    delete_quarantine,
    get_quarantine,
    list_quarantine,
    open_quarantine_db,
    parse_clamd_reply,
    parse_spamd_reply,
    release_quarantine,
    rewrite_headers,
    settings_from_state,
)
from workers.nats_server import free_port
from workers.reconcile.state import Alias, Domain, Mailbox, MailState
from workers.reconcile.validate import which

pytestmark = pytest.mark.slow

DOMAIN = "example.test"
SENDER = "sender@elsewhere.example"
# Built from two halves so this file itself never carries either test string whole.
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*" + "GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
VIRUS = f"{EICAR_NAME}.UNOFFICIAL"  # ClamAV's name for a signature of an unsigned database
TIMEOUT_S = 30.0


# ---- the daemons (one of each for the module) ----------------------------------------------


@pytest.fixture(scope="module")
def daemon_root() -> Iterator[Path]:
    """spamd reads its config as an unprivileged user: the root must be traversable (pytest's
    tmp dirs are 0700)."""
    root = Path(tempfile.mkdtemp(prefix="mailpanel-filter-", dir="/tmp"))
    os.chmod(root, 0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def spamd(daemon_root: Path) -> Iterator[SpamdRunner]:
    if not which("spamd"):
        pytest.skip("spamd is not installed (run .ci/mailstack-deps as root)")
    runner = SpamdRunner(daemon_root / "spamd", free_port(), max_children=2)
    try:
        assert runner.start()
        yield runner
    finally:
        runner.stop()


@pytest.fixture(scope="module")
def clamd(daemon_root: Path) -> Iterator[ClamdRunner]:
    if not which("clamd"):
        pytest.skip("clamd is not installed (run .ci/mailstack-deps as root)")
    runner = ClamdRunner(daemon_root / "clamd", free_port())
    try:
        assert runner.start()
        yield runner
    finally:
        runner.stop()


# ---- the re-injection sink -----------------------------------------------------------------


@dataclass
class Delivered:
    sender: str
    recipients: list[str]
    content: bytes
    mail_args: str
    rcpt_args: list[str]
    xforward: list[str]

    def headers(self) -> Any:
        return message_from_bytes(self.content)


@dataclass
class Sink:
    """What Postfix's after-filter smtpd would have queued, and how it answers."""

    delivered: list[Delivered] = field(default_factory=list)
    data_reply: str = "250 2.0.0 Ok: queued as SINK1"
    refuse: set[str] = field(default_factory=set)
    port: int = 0


class _SinkSMTP(SMTP):
    """Announces XFORWARD and DSN like Postfix, and records the raw MAIL/RCPT arguments."""

    def __init__(self, sink: Sink, handler: "_SinkHandler") -> None:
        super().__init__(handler, hostname="sink.test", loop=asyncio.get_running_loop())
        self.sink = sink
        self.mail_args = ""
        self.rcpt_args: list[str] = []
        self.xforward: list[str] = []

    async def smtp_XFORWARD(self, arg: str) -> None:
        self.xforward.append(arg)
        await self.push("250 2.0.0 Ok")

    async def smtp_MAIL(self, arg: str | None) -> None:
        self.mail_args, self.rcpt_args = arg or "", []
        await super().smtp_MAIL(_address_only(arg))

    async def smtp_RCPT(self, arg: str | None) -> None:
        self.rcpt_args.append(arg or "")
        await super().smtp_RCPT(_address_only(arg))


def _address_only(arg: str | None) -> str | None:
    return arg if arg is None or ">" not in arg else arg[: arg.index(">") + 1]


class _SinkHandler:
    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        extra = ["250-XFORWARD NAME ADDR PROTO HELO SOURCE PORT IDENT", "250-DSN"]
        return [*responses[:-1], *extra, responses[-1]]

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address in self.sink.refuse:
            return "550 5.1.1 refused by the sink"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(server, _SinkSMTP)
        if self.sink.data_reply.startswith("2"):
            self.sink.delivered.append(
                Delivered(
                    sender=str(envelope.mail_from),
                    recipients=list(envelope.rcpt_tos),
                    content=bytes(envelope.original_content or b""),
                    mail_args=server.mail_args,
                    rcpt_args=list(server.rcpt_args),
                    xforward=list(server.xforward),
                )
            )
        return self.sink.data_reply


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    state = Sink()
    handler = _SinkHandler(state)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _SinkSMTP(state, handler), "127.0.0.1", 0)
    state.port = int(server.sockets[0].getsockname()[1])
    try:
        yield state
    finally:
        server.close()
        await server.wait_closed()


# ---- the filter ----------------------------------------------------------------------------


def box(local: str, box_id: int, **effective: Any) -> Mailbox:
    return Mailbox(
        id=box_id,
        domain=DOMAIN,
        local=local,
        address=f"{local}@{DOMAIN}",
        password_hash="{PLAIN}x",
        effective=effective,
    )


def mail_state(**domain: Any) -> MailState:
    """example.test tags spam at 5.0 and quarantines viruses unless told otherwise; tagger@
    inherits, holder@ quarantines spam, rejecter@ rejects it, lenient@ rejects only from 2000
    (GTUBE scores about 1000)."""
    effective = {"spam_threshold": 5.0, "spam_action": "tag", "clamav_action": "quarantine"}
    return MailState(
        domains=(Domain(id=1, name=DOMAIN, effective=effective | domain),),
        mailboxes=(
            box("tagger", 1, spam_threshold=None, spam_action=None),
            box("holder", 2, spam_action="quarantine"),
            box("rejecter", 3, spam_action="reject"),
            box("lenient", 4, spam_threshold=2000.0, spam_action="reject"),
        ),
        aliases=(Alias(source=f"info@{DOMAIN}", destination=(f"holder@{DOMAIN}",)),),
    )


@dataclass
class Rig:
    filter: ContentFilter
    sink: Sink
    db: sqlite3.Connection

    async def send(self, rcpts: list[str], content: bytes, sender: str = SENDER, **kw: Any) -> Any:
        """Send over SMTP as Postfix's before-filter smtpd would: the refused dict, or the
        SMTPException the filter answered with."""

        def run() -> Any:
            with smtplib.SMTP("127.0.0.1", self.filter.port, timeout=TIMEOUT_S) as smtp:
                smtp.ehlo("mx.mailpanel.test")
                try:
                    return smtp.sendmail(sender, rcpts, content, **kw)
                except smtplib.SMTPException as exc:
                    return exc

        return await asyncio.wait_for(asyncio.to_thread(run), TIMEOUT_S)


def rig_for(
    tmp_path: Path,
    sink: Sink,
    *,
    spamd: tuple[str, int] | None,
    clamd: tuple[str, int] | None,
    settings: FilterSettings | None = None,
) -> tuple[ContentFilter, sqlite3.Connection]:
    db = open_quarantine_db(tmp_path / "quarantine.db")
    flt = ContentFilter(
        settings or settings_from_state(mail_state()),
        quarantine_db=db,
        quarantine_dir=tmp_path / "quarantine",
        reinject_port=sink.port,
        spamd=spamd,
        clamd=clamd,
        hostname="filter.mailpanel.test",
    )
    return flt, db


@pytest.fixture
async def rig(
    tmp_path: Path, sink: Sink, spamd: SpamdRunner, clamd: ClamdRunner
) -> AsyncIterator[Rig]:
    flt, db = rig_for(tmp_path, sink, spamd=spamd.address, clamd=clamd.address)
    await flt.start()
    try:
        yield Rig(filter=flt, sink=sink, db=db)
    finally:
        await flt.close()
        db.close()


@pytest.fixture
async def blind(tmp_path: Path, sink: Sink) -> AsyncIterator[Rig]:
    """A filter whose spamd and clamd addresses have nothing listening."""
    flt, db = rig_for(
        tmp_path, sink, spamd=("127.0.0.1", free_port()), clamd=("127.0.0.1", free_port())
    )
    await flt.start()
    try:
        yield Rig(filter=flt, sink=sink, db=db)
    finally:
        await flt.close()
        db.close()


def compose(
    body: str, *, to: str = f"tagger@{DOMAIN}", **headers: str
) -> email.message.EmailMessage:
    msg = email.message.EmailMessage()
    msg["From"] = f"Sender <{SENDER}>"
    msg["To"] = to
    msg["Subject"] = "Lunch tomorrow"
    msg["Date"] = email.utils.formatdate()
    msg["Message-ID"] = email.utils.make_msgid(domain="elsewhere.example")
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(body)
    return msg


def wire(msg: email.message.EmailMessage) -> bytes:
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


def clean(**kw: Any) -> bytes:
    return wire(compose("Hi, are we still on for lunch tomorrow at noon? Cheers, Sam", **kw))


def gtube(**kw: Any) -> bytes:
    return wire(compose(f"Hello.\n\n{GTUBE}\n", **kw))


def eicar(**kw: Any) -> bytes:
    msg = compose("The file you asked for.", **kw)
    msg.add_attachment(EICAR, maintype="application", subtype="octet-stream", filename="t.com")
    return wire(msg)


# ---- clean mail ----------------------------------------------------------------------------


async def test_a_clean_message_is_delivered_with_its_score(rig: Rig):
    # given a clean message
    # when it goes through the filter
    refused = await rig.send([f"tagger@{DOMAIN}"], clean())
    # then it is delivered once, with a score and no spam flag
    assert refused == {}
    [out] = rig.sink.delivered
    assert out.recipients == [f"tagger@{DOMAIN}"]
    headers = out.headers()
    assert float(headers["X-Spam-Score"]) < 5.0
    assert headers["X-Spam-Status"].startswith("No, score=")
    assert headers["X-Spam-Flag"] is None


async def test_the_re_injection_reply_reaches_the_client(rig: Rig):
    rig.sink.data_reply = "250 2.0.0 Ok: queued as ABC123"

    def run() -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", rig.filter.port, timeout=TIMEOUT_S) as smtp:
            smtp.ehlo("mx.mailpanel.test")
            smtp.mail(SENDER)
            smtp.rcpt(f"tagger@{DOMAIN}")
            return smtp.data(clean())

    assert await asyncio.to_thread(run) == (250, b"2.0.0 Ok: queued as ABC123")


async def test_forged_spam_headers_are_replaced(rig: Rig):
    # given a spam message that claims to be clean already
    forged = gtube(X_Spam_Flag="NO", X_Spam_Status="No, score=-100")
    await rig.send([f"tagger@{DOMAIN}"], forged)
    headers = rig.sink.delivered[0].headers()
    # then only the filter's own verdict is there
    assert headers.get_all("X-Spam-Flag") == ["YES"]
    assert len(headers.get_all("X-Spam-Status")) == 1


async def test_a_null_sender_and_dsn_parameters_pass_through(rig: Rig):
    # given a bounce (MAIL FROM:<>) with DSN parameters on MAIL and RCPT
    refused = await rig.send(
        [f"tagger@{DOMAIN}"],
        clean(),
        sender="",
        mail_options=["RET=HDRS", "ENVID=QQ314159"],
        rcpt_options=["NOTIFY=FAILURE", f"ORCPT=rfc822;tagger@{DOMAIN}"],
    )
    # then it is delivered from <> with the parameters as sent
    assert refused == {}
    [out] = rig.sink.delivered
    assert out.mail_args.startswith("FROM:<>")
    assert "RET=HDRS" in out.mail_args and "ENVID=QQ314159" in out.mail_args
    assert out.rcpt_args == [f"TO:<tagger@{DOMAIN}> NOTIFY=FAILURE ORCPT=rfc822;tagger@{DOMAIN}"]


async def test_the_original_client_is_forwarded_with_xforward(rig: Rig):
    def run() -> None:
        with smtplib.SMTP("127.0.0.1", rig.filter.port, timeout=TIMEOUT_S) as smtp:
            smtp.ehlo("mx.mailpanel.test")
            assert "xforward" in smtp.esmtp_features
            assert smtp.docmd("XFORWARD", "NAME=mx.elsewhere.example ADDR=203.0.113.5")[0] == 250
            assert smtp.docmd("XFORWARD", "PROTO=ESMTP HELO=mx.elsewhere.example")[0] == 250
            smtp.sendmail(SENDER, [f"tagger@{DOMAIN}"], clean())

    await asyncio.to_thread(run)
    [line] = rig.sink.delivered[0].xforward
    assert set(line.split()) == {
        "NAME=mx.elsewhere.example",
        "ADDR=203.0.113.5",
        "PROTO=ESMTP",
        "HELO=mx.elsewhere.example",
    }


# ---- spam ----------------------------------------------------------------------------------


async def test_gtube_is_tagged_for_a_domain_that_tags(rig: Rig):
    refused = await rig.send([f"tagger@{DOMAIN}"], gtube())
    assert refused == {}
    headers = rig.sink.delivered[0].headers()
    assert headers["X-Spam-Flag"] == "YES"
    assert float(headers["X-Spam-Score"]) >= 900
    assert "GTUBE" in headers["X-Spam-Status"]


async def test_gtube_is_quarantined_for_a_mailbox_that_quarantines(rig: Rig):
    # given GTUBE to holder@, whose spam_action is quarantine
    refused = await rig.send([f"holder@{DOMAIN}"], gtube())
    # then the sender sees success, nothing is delivered, and the message is held
    assert refused == {}
    assert rig.sink.delivered == []
    [item] = list_quarantine(rig.db).items
    assert (item.sender, item.recipients, item.reason) == (SENDER, [f"holder@{DOMAIN}"], "spam")
    assert item.score is not None and item.score >= 900
    assert item.subject == "Lunch tomorrow"
    path = Path(item.path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.stat().st_size == item.size
    assert GTUBE.encode() in path.read_bytes()
    assert b"X-Spam-Flag: YES" in path.read_bytes()


async def test_gtube_is_rejected_for_a_mailbox_that_rejects(rig: Rig):
    result = await rig.send([f"rejecter@{DOMAIN}"], gtube())
    assert isinstance(result, smtplib.SMTPDataError)
    assert (result.smtp_code, result.smtp_error) == (550, b"5.7.1 Message rejected as spam")
    assert rig.sink.delivered == []
    assert list_quarantine(rig.db).total == 0


async def test_one_rejecting_recipient_rejects_the_message_for_all(rig: Rig):
    result = await rig.send([f"tagger@{DOMAIN}", f"rejecter@{DOMAIN}"], gtube())
    assert isinstance(result, smtplib.SMTPDataError) and result.smtp_code == 550
    assert rig.sink.delivered == []


async def test_held_and_tagged_recipients_of_one_message_are_split(rig: Rig):
    refused = await rig.send([f"holder@{DOMAIN}", f"tagger@{DOMAIN}"], gtube())
    assert refused == {}
    assert [d.recipients for d in rig.sink.delivered] == [[f"tagger@{DOMAIN}"]]
    assert list_quarantine(rig.db).items[0].recipients == [f"holder@{DOMAIN}"]


async def test_an_alias_to_one_mailbox_gets_that_mailboxs_action(rig: Rig):
    # info@ leads to holder@ only, so holder@'s quarantine applies
    await rig.send([f"info@{DOMAIN}"], gtube(to=f"info@{DOMAIN}"))
    assert rig.sink.delivered == []
    assert list_quarantine(rig.db).items[0].recipients == [f"info@{DOMAIN}"]


async def test_the_mailbox_threshold_decides(rig: Rig):
    # given GTUBE (about 1000) to tagger@ (threshold 5) and lenient@ (threshold 2000, reject)
    refused = await rig.send([f"lenient@{DOMAIN}", f"tagger@{DOMAIN}"], gtube())
    # then it is spam to tagger@ only: lenient@ gets it unflagged, and nothing is rejected
    assert refused == {}
    flags = {d.recipients[0]: d.headers()["X-Spam-Flag"] for d in rig.sink.delivered}
    assert flags == {f"lenient@{DOMAIN}": None, f"tagger@{DOMAIN}": "YES"}


async def test_a_new_settings_snapshot_applies_to_the_next_message(rig: Rig):
    # given the domain's spam action changes from tag to reject
    rig.filter.settings = settings_from_state(mail_state(spam_action="reject"))
    # then GTUBE to a mailbox that inherits it is rejected
    result = await rig.send([f"tagger@{DOMAIN}"], gtube())
    assert isinstance(result, smtplib.SMTPDataError) and result.smtp_code == 550


# ---- viruses -------------------------------------------------------------------------------


async def test_an_eicar_attachment_is_quarantined_by_default(rig: Rig):
    refused = await rig.send([f"tagger@{DOMAIN}"], eicar())
    assert refused == {}
    assert rig.sink.delivered == []
    [item] = list_quarantine(rig.db).items
    assert (item.reason, item.virus) == ("virus", VIRUS)
    assert f"X-Virus: {VIRUS}".encode() in Path(item.path).read_bytes()


async def test_an_eicar_attachment_is_rejected_with_its_name(rig: Rig):
    rig.filter.settings = settings_from_state(mail_state(clamav_action="reject"))
    result = await rig.send([f"tagger@{DOMAIN}"], eicar())
    assert isinstance(result, smtplib.SMTPDataError)
    assert (result.smtp_code, result.smtp_error) == (554, f"5.7.1 Virus found: {VIRUS}".encode())


async def test_an_eicar_attachment_is_tagged_when_the_domain_tags_viruses(rig: Rig):
    rig.filter.settings = settings_from_state(mail_state(clamav_action="tag"))
    await rig.send([f"tagger@{DOMAIN}"], eicar())
    assert rig.sink.delivered[0].headers()["X-Virus"] == VIRUS


# ---- the quarantine ------------------------------------------------------------------------


async def test_release_delivers_to_the_original_recipients_and_forgets_the_message(rig: Rig):
    # given GTUBE held for holder@
    await rig.send([f"holder@{DOMAIN}"], gtube())
    [item] = list_quarantine(rig.db).items
    # when it is released
    reply = await release_quarantine(rig.db, item.id, "127.0.0.1", rig.sink.port)
    # then it is delivered from the original sender, and gone from the quarantine
    assert reply.ok
    [out] = rig.sink.delivered
    assert (out.sender, out.recipients) == (SENDER, [f"holder@{DOMAIN}"])
    assert GTUBE.encode() in out.content
    assert get_quarantine(rig.db, item.id) is None
    assert not Path(item.path).exists()


async def test_a_failed_release_keeps_the_message(rig: Rig):
    await rig.send([f"holder@{DOMAIN}"], gtube())
    [item] = list_quarantine(rig.db).items
    rig.sink.data_reply = "452 4.3.1 Insufficient system storage"
    reply = await release_quarantine(rig.db, item.id, "127.0.0.1", rig.sink.port)
    assert reply.code == 452
    assert get_quarantine(rig.db, item.id) == item


async def test_releasing_an_unknown_message_is_a_key_error(rig: Rig):
    with pytest.raises(KeyError):
        await release_quarantine(rig.db, 999, "127.0.0.1", rig.sink.port)


async def test_delete_removes_the_row_and_the_file(rig: Rig):
    await rig.send([f"holder@{DOMAIN}"], gtube())
    [item] = list_quarantine(rig.db).items
    assert delete_quarantine(rig.db, item.id)
    assert get_quarantine(rig.db, item.id) is None
    assert not Path(item.path).exists()
    assert not delete_quarantine(rig.db, item.id)


async def test_the_list_is_paged_newest_first(rig: Rig):
    for _ in range(3):
        await rig.send([f"holder@{DOMAIN}"], gtube())
    first = list_quarantine(rig.db, limit=2)
    second = list_quarantine(rig.db, limit=2, offset=2)
    assert (first.total, len(first.items), len(second.items)) == (3, 2, 1)
    ids = [i.id for i in first.items + second.items]
    assert ids == sorted(ids, reverse=True)


# ---- failures ------------------------------------------------------------------------------


async def test_with_both_scanners_down_mail_is_delivered_unscanned(blind: Rig):
    refused = await blind.send([f"rejecter@{DOMAIN}"], gtube())
    assert refused == {}
    headers = blind.sink.delivered[0].headers()
    assert headers["X-Spam-Status"] == "unscanned"
    assert headers["X-Virus-Status"] == "unscanned"
    assert headers["X-Spam-Score"] is None


async def test_with_clamd_down_spam_is_still_scored(tmp_path: Path, sink: Sink, spamd: SpamdRunner):
    flt, db = rig_for(tmp_path, sink, spamd=spamd.address, clamd=("127.0.0.1", free_port()))
    async with flt:
        await Rig(flt, sink, db).send([f"tagger@{DOMAIN}"], gtube())
    headers = sink.delivered[0].headers()
    assert (headers["X-Spam-Flag"], headers["X-Virus-Status"]) == ("YES", "unscanned")


async def test_a_remote_spamd_from_the_global_settings_is_used(
    tmp_path: Path, sink: Sink, spamd: SpamdRunner
):
    # given no local spamd, and global spam_remote_host/port pointing at a running spamd
    state = mail_state()
    glob = {"spam_remote_host": spamd.host, "spam_remote_port": spamd.port}
    settings = settings_from_state(
        MailState(domains=state.domains, mailboxes=state.mailboxes, tiers={"global": glob})
    )
    flt, db = rig_for(tmp_path, sink, spamd=None, clamd=None, settings=settings)
    async with flt:
        await Rig(flt, sink, db).send([f"tagger@{DOMAIN}"], gtube())
    # then that spamd scored it
    assert sink.delivered[0].headers()["X-Spam-Flag"] == "YES"


async def test_a_re_injection_refusal_is_relayed_and_nothing_is_held(blind: Rig):
    blind.sink.refuse.add(f"tagger@{DOMAIN}")
    result = await blind.send([f"tagger@{DOMAIN}"], clean())
    assert isinstance(result, smtplib.SMTPDataError)
    assert (result.smtp_code, result.smtp_error) == (550, b"5.1.1 refused by the sink")


async def test_an_unreachable_re_injection_smtpd_is_a_temporary_failure(tmp_path: Path, sink: Sink):
    sink.port = free_port()  # nothing listens there
    flt, db = rig_for(tmp_path, sink, spamd=None, clamd=None)
    async with flt:
        result = await Rig(flt, sink, db).send([f"tagger@{DOMAIN}"], clean())
    assert isinstance(result, smtplib.SMTPDataError) and result.smtp_code == 451


# ---- pure parts ----------------------------------------------------------------------------


def test_settings_follow_a_mailbox_its_plus_address_an_alias_and_the_domain():
    settings = settings_from_state(mail_state())
    assert settings.policy_for(f"Rejecter@{DOMAIN}").spam_action == "reject"
    assert settings.policy_for(f"rejecter+lists@{DOMAIN}").spam_action == "reject"
    assert settings.policy_for(f"info@{DOMAIN}").spam_action == "quarantine"
    assert settings.policy_for(f"nobody@{DOMAIN}").spam_action == "tag"


def test_a_domain_we_do_not_host_gets_the_domain_defaults():
    state = MailState(tiers={"domain_defaults": {"spam_action": "quarantine"}})
    assert settings_from_state(state).policy_for("x@elsewhere.example").spam_action == (
        "quarantine"
    )


def test_rewriting_headers_drops_folded_forgeries_and_keeps_the_body():
    original = (
        b"Subject: hi\r\nX-Spam-Status: No,\r\n\tscore=-5\r\nX-Virus: none\r\n\r\n"
        b"X-Spam-Flag: body text stays\r\n"
    )
    out = rewrite_headers(original, [("X-Spam-Score", "1.0")])
    assert out == b"X-Spam-Score: 1.0\r\nSubject: hi\r\n\r\nX-Spam-Flag: body text stays\r\n"


def test_a_spamd_reply_gives_the_score_and_the_rules():
    reply = (
        b"SPAMD/1.1 0 EX_OK\r\nContent-length: 11\r\nSpam: True ; 1000.0 / 5.0\r\n\r\nGTUBE,OTHER"
    )
    assert parse_spamd_reply(reply) == SpamResult(1000.0, ("GTUBE", "OTHER"))


def test_a_spamd_error_is_a_scanner_error():
    with pytest.raises(ScannerError):
        parse_spamd_reply(b"SPAMD/1.0 76 Bad header line: x\r\n\r\n")


def test_clamd_replies_name_the_virus_or_fail():
    assert parse_clamd_reply(b"stream: OK\0") is None
    assert parse_clamd_reply(b"stream: Eicar-Test-Signature FOUND\0") == "Eicar-Test-Signature"
    with pytest.raises(ScannerError):
        parse_clamd_reply(b"INSTREAM size limit exceeded. ERROR\0")


def test_a_long_header_is_folded_and_unfolds_to_its_value():
    tests = ",".join(f"RULE_NUMBER_{i}" for i in range(20))
    out = rewrite_headers(b"Subject: x\r\n\r\nbody\r\n", [("X-Spam-Status", f"No, tests={tests}")])
    head = out.split(b"\r\n\r\n")[0].decode()
    assert all(len(line) <= 78 for line in head.split("\r\n"))
    status = message_from_bytes(out)["X-Spam-Status"]
    assert "".join(status.split()) == "".join(f"No, tests={tests}".split())


def test_a_scanner_that_is_not_installed_is_skipped(tmp_path: Path):
    class Missing(ClamdRunner):
        binary_name = "mailpanel-no-such-clamd"

    runner = Missing(tmp_path / "clamd", free_port())
    assert runner.start() is False
    assert not runner.running
    runner.stop()
