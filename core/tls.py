"""TLS certificate records, one per host name. Parsing and checks of the PEM happen in the
command layer (commands/keys.py); the decider keeps the record rules."""

import msgspec

from core.errors import NotFound
from core.events import Event, TlsCertRegistered, TlsCertRemoved

ISSUERS = ("self", "letsencrypt", "uploaded")


class CertState(msgspec.Struct, frozen=True, kw_only=True):
    hostname: str
    id: int | None = None
    issuer: str = ""
    fingerprint: str = ""


class Register(msgspec.Struct, frozen=True, kw_only=True):
    cert: TlsCertRegistered
    only_if_absent: bool = False  # the first-start self-signed certificate never replaces one


class Remove(msgspec.Struct, frozen=True, kw_only=True):
    id: int


def decide(cmd: Register | Remove, state: CertState) -> list[Event]:
    match cmd:
        case Register(cert=cert, only_if_absent=only_if_absent):
            if cert.issuer not in ISSUERS:
                raise AssertionError(cert.issuer)
            if only_if_absent and state.id is not None:
                return []
            if state.id is not None and state.fingerprint == cert.fingerprint:
                if state.issuer == cert.issuer:
                    return []  # the same certificate again (a renew that renewed nothing)
            return [cert]
        case Remove(id=cert_id):
            if state.id is None or state.id != cert_id:
                raise NotFound("certificate not found", f"no certificate record {cert_id}")
            return [TlsCertRemoved(id=cert_id, hostname=state.hostname)]
    raise AssertionError(cmd)
