# ruff: noqa: F811  (the stack fixture is imported from the mail e2e module and used by name)
"""DKIM signing and TLS on the real sandbox stack, driven only through the API.

A message submitted by a mailbox of a domain with an active DKIM key arrives signed, and the
signature verifies (dkimpy, an independent verifier) against the TXT value the API publishes.
After a certificate upload, STARTTLS on the SMTP port and on IMAP presents that certificate;
on first start a self-signed one for the mail host name is there already."""

import asyncio
import hashlib
import imaplib
import smtplib
import ssl
from datetime import UTC, datetime

import dkim
import pytest
from cryptography import x509

from commands.keys import self_signed
from tests.e2e.test_mail_through_api import PASSWORD, Stack, data_root, stack  # noqa: F401
from workers.config import mailstack_available
from workers.reconcile.validate import which

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not mailstack_available(),
        reason="needs root and Postfix + Dovecot (make test installs them as root)",
    ),
]

HOST = "mx.mailpanel.test"  # the sandbox's mail host name


def _no_verify() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def smtp_cert(port: int) -> bytes:
    with smtplib.SMTP("127.0.0.1", port, timeout=15) as smtp:
        smtp.starttls(context=_no_verify())
        der = smtp.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
    assert der is not None
    return der


def imap_cert(port: int) -> bytes:
    imap = imaplib.IMAP4("127.0.0.1", port, timeout=15)
    try:
        imap.starttls(ssl_context=_no_verify())
        der = imap.sock.getpeercert(binary_form=True)  # type: ignore[attr-defined]
    finally:
        imap.logout()
    assert der is not None
    return der


async def presented(stack: Stack, fingerprint: str, timeout: float = 20.0) -> tuple[str, str]:
    """Until both SMTP and IMAP present the certificate with this SHA-256 (or the timeout)."""
    deadline = asyncio.get_running_loop().time() + timeout
    seen = ("", "")
    while asyncio.get_running_loop().time() < deadline:
        smtp = hashlib.sha256(await asyncio.to_thread(smtp_cert, stack.ports["smtp"])).hexdigest()
        imap = hashlib.sha256(await asyncio.to_thread(imap_cert, stack.ports["imap"])).hexdigest()
        seen = (smtp, imap)
        if seen == (fingerprint, fingerprint):
            break
        await asyncio.sleep(0.2)
    return seen


async def test_a_self_signed_certificate_for_the_mail_host_is_there_from_the_start(stack: Stack):
    # Given a fresh sandbox
    await stack.live()
    # Then a self-signed certificate for the mail host is registered and presented
    certs = (await stack.client.get("/api/v1/tls/certs")).json()["data"]
    own = [c for c in certs if c["hostname"] == HOST]
    assert own and own[0]["issuer"] == "self"
    der = await asyncio.to_thread(smtp_cert, stack.ports["smtp"])
    cert = x509.load_der_x509_certificate(der)
    assert own[0]["fingerprint_sha256"] == hashlib.sha256(der).hexdigest()
    assert HOST in cert.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.DNSName)


async def test_an_uploaded_certificate_is_presented_by_smtp_and_imap(stack: Stack):
    # Given a running stack
    await stack.live()
    # When a certificate for the mail host name is uploaded
    cert_pem, key_pem = self_signed(HOST, datetime.now(UTC), days=60)
    r = await stack.client.post(
        "/api/v1/tls/upload",
        files={"hostname": (None, HOST), "cert_pem": (None, cert_pem), "key_pem": (None, key_pem)},
    )
    assert r.status_code == 200, r.text
    # Then STARTTLS on SMTP and on IMAP present it
    leaf = x509.load_pem_x509_certificate(cert_pem.encode())
    from cryptography.hazmat.primitives.serialization import Encoding

    fingerprint = hashlib.sha256(leaf.public_bytes(Encoding.DER)).hexdigest()
    assert await presented(stack, fingerprint) == (fingerprint, fingerprint)
    # And the record says uploaded
    certs = (await stack.client.get("/api/v1/tls/certs")).json()["data"]
    assert [c["issuer"] for c in certs if c["hostname"] == HOST] == ["uploaded"]


@pytest.mark.skipif(not which("opendkim"), reason="OpenDKIM is not installed")
async def test_mail_from_a_domain_with_an_active_key_is_signed_and_verifies(stack: Stack):
    # Given a domain with a mailbox and an active DKIM key
    domain = await stack.post("/api/v1/domains", {"name": "example.test"})
    await stack.post(
        "/api/v1/mailboxes", {"domain_id": domain["id"], "username": "ivy", "password": PASSWORD}
    )
    key = await stack.post("/api/v1/dkim/generate", {"domain": "example.test"})
    await stack.live()
    # When ivy sends a message over submission
    message = (
        "From: ivy@example.test\r\nTo: ivy@example.test\r\nSubject: signed-by-dkim\r\n"
        "Message-ID: <dkim-test@example.test>\r\n\r\nhello, signed world\r\n"
    )
    with smtplib.SMTP("127.0.0.1", stack.ports["submission"], timeout=15) as smtp:
        smtp.login("ivy@example.test", PASSWORD)
        smtp.sendmail("ivy@example.test", ["ivy@example.test"], message)
    assert await stack.delivered("example.test", "ivy", "signed-by-dkim")
    # Then it carries a DKIM-Signature by default._domainkey.example.test that verifies
    # against the TXT value the API published
    new = stack.maildir("example.test", "ivy") / "new"
    raw = next(p.read_bytes() for p in new.iterdir() if b"signed-by-dkim" in p.read_bytes())
    assert b"DKIM-Signature:" in raw
    assert b"d=example.test" in raw and b"s=default" in raw
    txt = key["txt_value"].encode()

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        assert name.rstrip(b".") == b"default._domainkey.example.test"
        return txt

    assert dkim.verify(raw, dnsfunc=dnsfunc)
