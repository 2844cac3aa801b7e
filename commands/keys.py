"""DKIM keys, sealed secrets and TLS certificate bundles.

Pure functions over PEM/base64 text: the only side effects are randomness (key generation, nonces,
serial numbers) and none read a clock; callers pass `now`.
"""

import base64
import binascii
import os
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Literal, get_args

import msgspec
from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# --------------------------------------------------------------------------------------------
# DKIM
# --------------------------------------------------------------------------------------------

DkimAlgorithm = Literal["rsa", "ed25519"]
DKIM_ALGORITHMS: tuple[str, ...] = get_args(DkimAlgorithm)

RSA_BITS = 2048
"""RFC 8301: signers must use at least 1024 bits; 2048 is what every verifier accepts today."""

SELECTOR_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_-]{0,62}\Z")
"""One DNS label, 1-63 characters, starting with a letter or digit (`\\Z`: no trailing newline)."""

TXT_CHUNK = 250
"""Each quoted string of a zone record stays under the 255-byte DNS character-string limit."""

_BASE64_RE = re.compile(r"\A[A-Za-z0-9+/]+={0,2}\Z")


class DkimKey(msgspec.Struct, frozen=True, kw_only=True):
    """A fresh DKIM key pair; `private_pem` is clear text, seal it before it reaches the log."""

    private_pem: str
    public_b64: str
    algorithm: DkimAlgorithm


def check_selector(selector: str) -> str:
    """Return the selector unchanged if it is one DNS label of alphanumerics, `-` and `_`."""
    if not SELECTOR_RE.match(selector):
        raise ValueError(
            f"invalid DKIM selector {selector!r}: use 1-63 letters, digits, '-' or '_', "
            "starting with a letter or digit"
        )
    return selector


def _check_algorithm(algorithm: str) -> DkimAlgorithm:
    if algorithm == "rsa":
        return "rsa"
    if algorithm == "ed25519":
        return "ed25519"
    raise ValueError(f"unsupported DKIM algorithm {algorithm!r}: use one of rsa, ed25519")


def _check_public_b64(public_b64: str) -> str:
    """Only base64 may reach a TXT record: anything else could break out of the quotes."""
    if not _BASE64_RE.match(public_b64):
        raise ValueError("DKIM public key must be standard base64 without whitespace")
    return public_b64


def _dkim_public_b64(private_key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> str:
    """RSA publishes the DER SubjectPublicKeyInfo; ed25519 the raw 32-byte key (RFC 8463)."""
    if isinstance(private_key, rsa.RSAPrivateKey):
        der = private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    else:
        der = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
    return base64.b64encode(der).decode("ascii")


def _pkcs8_pem(private_key: PrivateKeyTypes) -> str:
    return private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


def generate_dkim(algorithm: DkimAlgorithm = "rsa") -> DkimKey:
    """Generate an RSA-2048 or ed25519 DKIM key; the private half is unencrypted PKCS8 PEM."""
    algorithm = _check_algorithm(algorithm)
    private_key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if algorithm == "rsa":
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    else:
        private_key = ed25519.Ed25519PrivateKey.generate()
    return DkimKey(
        private_pem=_pkcs8_pem(private_key),
        public_b64=_dkim_public_b64(private_key),
        algorithm=algorithm,
    )


def public_from_private(private_pem: str) -> tuple[str, DkimAlgorithm]:
    """Re-derive (public_b64, algorithm) from an unencrypted PKCS8 or PKCS1 PEM private key."""
    private_key = _load_private_key(private_pem, "private_pem")
    if isinstance(private_key, rsa.RSAPrivateKey):
        return _dkim_public_b64(private_key), "rsa"
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        return _dkim_public_b64(private_key), "ed25519"
    raise ValueError("DKIM private key must be an RSA or ed25519 key")


def _dkim_tags(algorithm: DkimAlgorithm) -> str:
    """h=sha256 for RSA rules out rsa-sha1 (RFC 8301); ed25519 only exists with sha256."""
    if algorithm == "rsa":
        return "v=DKIM1; h=sha256; k=rsa; "
    return "v=DKIM1; k=ed25519; "


def dkim_txt_value(public_b64: str, algorithm: DkimAlgorithm) -> str:
    """The TXT record's value as one unquoted string, e.g. `v=DKIM1; h=sha256; k=rsa; p=MIIB...`."""
    tags = _dkim_tags(_check_algorithm(algorithm))
    return f"{tags}p={_check_public_b64(public_b64)}"


def dkim_zone_record(selector: str, public_b64: str, algorithm: DkimAlgorithm) -> str:
    """One zone-file line in opendkim-genkey style.

    `p=<key>` is cut into quoted strings of at most TXT_CHUNK characters each (the `p=` counts),
    so no DNS character-string exceeds 255 bytes; resolvers concatenate them without separators.
    """
    tags = _dkim_tags(_check_algorithm(algorithm))
    p_tag = f"p={_check_public_b64(public_b64)}"
    chunks = [tags] + [p_tag[i : i + TXT_CHUNK] for i in range(0, len(p_tag), TXT_CHUNK)]
    quoted = " ".join(f'"{chunk}"' for chunk in chunks)
    return f"{check_selector(selector)}._domainkey IN TXT ( {quoted} )"


# --------------------------------------------------------------------------------------------
# Sealed secrets (AES-256-GCM)
# --------------------------------------------------------------------------------------------

SEAL_VERSION = "v1"
NONCE_BYTES = 12
TAG_BYTES = 16
KEY_ID_RE = re.compile(r"\A[A-Za-z0-9_-]{1,64}\Z")
"""Key ids sit between dots in the token, so they may not contain one."""

_B64URL_RE = re.compile(r"\A[A-Za-z0-9_-]+\Z")


class SealError(ValueError):
    """A token cannot be sealed or opened: bad key, unknown key id, malformed or tampered."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str, what: str) -> bytes:
    if not _B64URL_RE.match(text):
        raise SealError(f"malformed sealed token: {what} is not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise SealError(f"malformed sealed token: {what} is not base64url") from exc


def _aes_key(key_b64: str, key_id: str) -> AESGCM:
    try:
        key = base64.b64decode(key_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SealError(f"sealing key {key_id!r} is not valid base64") from exc
    if len(key) != 32:
        raise SealError(f"sealing key {key_id!r} must be 32 bytes (AES-256), got {len(key)}")
    return AESGCM(key)


def _header(key_id: str) -> str:
    return f"{SEAL_VERSION}.{key_id}"


def _full_aad(key_id: str, aad: bytes) -> bytes:
    """The version and key id are authenticated too, so a token cannot be relabelled."""
    return _header(key_id).encode("ascii") + b"\x00" + aad


def seal(plaintext: bytes, key_b64: str, key_id: str, aad: bytes = b"") -> str:
    """Encrypt to `v1.<key_id>.<nonce>.<ciphertext+tag>` (base64url, unpadded).

    The nonce is 12 random bytes, so one key may seal up to about 2**32 secrets safely. Pass the
    same `aad` (e.g. b"dkim:example.com:default") to unseal; it binds the token to its context.
    """
    if not KEY_ID_RE.match(key_id):
        raise SealError(f"invalid key id {key_id!r}: use 1-64 letters, digits, '-' or '_'")
    aes = _aes_key(key_b64, key_id)
    nonce = os.urandom(NONCE_BYTES)
    sealed = aes.encrypt(nonce, plaintext, _full_aad(key_id, aad))
    return f"{_header(key_id)}.{_b64url(nonce)}.{_b64url(sealed)}"


def _split(token: str) -> tuple[str, str, str]:
    parts = token.split(".")
    if len(parts) != 4:
        raise SealError("malformed sealed token: expected v1.<key_id>.<nonce>.<ciphertext>")
    version, key_id, nonce, sealed = parts
    if version != SEAL_VERSION:
        raise SealError(f"unsupported sealed token version {version!r}")
    if not KEY_ID_RE.match(key_id):
        raise SealError("malformed sealed token: invalid key id")
    return key_id, nonce, sealed


def sealed_key_id(token: str) -> str:
    """The id of the key a token was sealed with, to find tokens still on a retired key."""
    return _split(token)[0]


def unseal(token: str, keys: Mapping[str, str], aad: bytes = b"") -> bytes:
    """Decrypt a token with the key its id names; keep retired keys in `keys` to read old tokens."""
    key_id, nonce_text, sealed_text = _split(token)
    if key_id not in keys:
        raise SealError(f"unknown sealing key id {key_id!r}")
    nonce = _unb64url(nonce_text, "nonce")
    sealed = _unb64url(sealed_text, "ciphertext")
    if len(nonce) != NONCE_BYTES:
        raise SealError(f"malformed sealed token: nonce must be {NONCE_BYTES} bytes")
    if len(sealed) < TAG_BYTES:
        raise SealError("malformed sealed token: ciphertext is shorter than its tag")
    aes = _aes_key(keys[key_id], key_id)
    try:
        return aes.decrypt(nonce, sealed, _full_aad(key_id, aad))
    except InvalidTag as exc:
        raise SealError(
            f"sealed token failed authentication with key {key_id!r} "
            "(tampered, wrong key material or wrong context)"
        ) from exc


# --------------------------------------------------------------------------------------------
# TLS certificates
# --------------------------------------------------------------------------------------------

SELF_SIGNED_DAYS = 825
"""The longest server certificate lifetime Apple platforms accept."""


class CertError(ValueError):
    """A certificate bundle is unusable; the message says why, for a human."""


class CertInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A checked bundle, normalized: `chain_pem` is leaf then intermediates, `key_pem` PKCS8."""

    hostname: str
    expires_at: datetime
    not_before: datetime
    subject: str
    issuer: str
    names: tuple[str, ...]
    fingerprint_sha256: str
    chain_pem: str
    key_pem: str


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_aware(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
    return now


def _load_private_key(pem: str, field: str) -> PrivateKeyTypes:
    """Load an unencrypted PEM key; a passphrase-protected key is refused, not prompted for."""
    try:
        return serialization.load_pem_private_key(pem.encode("utf-8"), password=None)
    except TypeError as exc:
        raise ValueError(f"{field} is encrypted; provide it without a passphrase") from exc
    except UnsupportedAlgorithm as exc:
        raise ValueError(f"{field} uses an unsupported key algorithm") from exc
    except ValueError as exc:
        raise ValueError(f"{field} is not a PEM private key") from exc


def _spki(certificate_or_key: x509.Certificate | PrivateKeyTypes) -> bytes:
    public = certificate_or_key.public_key()
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _normalize_hostname(hostname: str) -> str:
    return hostname.strip().rstrip(".").lower()


def cert_names(certificate: x509.Certificate) -> tuple[str, ...]:
    """SAN DNS names; the subject CN only when the certificate has no SAN extension at all."""
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return tuple(
            str(attribute.value)
            for attribute in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        )
    return tuple(san.value.get_values_for_type(x509.DNSName))


def name_covers(pattern: str, hostname: str) -> bool:
    """Exact match, or `*.rest` matching exactly one non-empty label in front of `rest`.

    The wildcard must be the whole left-most label and `rest` must have at least two labels, so
    `*.com` covers nothing; matching ignores case and a trailing dot.
    """
    pattern = _normalize_hostname(pattern)
    hostname = _normalize_hostname(hostname)
    if not pattern or not hostname:
        return False
    if pattern == hostname:
        return True
    if not pattern.startswith("*."):
        return False
    rest = pattern[2:]
    if "*" in rest or rest.count(".") < 1:
        return False
    label, dot, host_rest = hostname.partition(".")
    return bool(label) and bool(dot) and label != "*" and host_rest == rest


def _check_chain_order(chain: list[x509.Certificate]) -> None:
    """Each certificate must be issued by the next one: servers send the chain as given."""
    for position, (child, parent) in enumerate(pairwise(chain), start=1):
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm) as exc:
            raise CertError(
                f"certificate chain is out of order: certificate {position + 1} "
                f"({parent.subject.rfc4514_string()}) did not issue certificate {position} "
                f"({child.subject.rfc4514_string()})"
            ) from exc


def parse_bundle(cert_pem: str, key_pem: str, hostname: str, now: datetime) -> CertInfo:
    """Check a leaf-first PEM chain and its private key for serving `hostname` at `now`.

    Refused with CertError: unparsable PEM, a key that does not match the leaf, a chain not in
    issuing order, a leaf not yet valid or expired, a leaf that does not cover the hostname.
    Intermediates' own validity periods are not checked.
    """
    now = _check_aware(now)
    try:
        chain = x509.load_pem_x509_certificates(cert_pem.encode("utf-8"))
    except ValueError as exc:
        raise CertError("cert_pem is not a PEM certificate") from exc
    if not chain:
        raise CertError("cert_pem is not a PEM certificate")
    try:
        private_key = _load_private_key(key_pem, "key_pem")
    except ValueError as exc:
        raise CertError(str(exc)) from exc

    leaf = chain[0]
    key_spki = _spki(private_key)
    if _spki(leaf) != key_spki:
        if any(_spki(other) == key_spki for other in chain[1:]):
            raise CertError(
                "the private key matches a later certificate in cert_pem; "
                "put the server certificate first, then its intermediates"
            )
        raise CertError("the private key does not match the certificate")
    _check_chain_order(chain)

    not_before = leaf.not_valid_before_utc
    expires_at = leaf.not_valid_after_utc
    if now < not_before:
        raise CertError(f"certificate is not yet valid (valid from {_iso(not_before)})")
    if expires_at <= now:
        raise CertError(f"certificate expired on {_iso(expires_at)}")

    names = cert_names(leaf)
    host = _normalize_hostname(hostname)
    if not any(name_covers(name, host) for name in names):
        covers = ", ".join(names) if names else "no DNS names"
        raise CertError(f"certificate does not cover {host} (covers: {covers})")

    return CertInfo(
        hostname=host,
        expires_at=expires_at,
        not_before=not_before,
        subject=leaf.subject.rfc4514_string(),
        issuer=leaf.issuer.rfc4514_string(),
        names=names,
        fingerprint_sha256=leaf.fingerprint(hashes.SHA256()).hex(),
        chain_pem="".join(
            certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")
            for certificate in chain
        ),
        key_pem=_pkcs8_pem(private_key),
    )


def self_signed(hostname: str, now: datetime, days: int = SELF_SIGNED_DAYS) -> tuple[str, str]:
    """A (cert_pem, key_pem) ECDSA P-256 server certificate for `hostname`, valid from an hour ago.

    The hour of backdating absorbs clock skew between this host and its clients. Clients check the
    SAN; the CN repeats the hostname when it fits the CN's 64-character limit.
    """
    now = _check_aware(now)
    host = _normalize_hostname(hostname)
    if not host:
        raise ValueError("hostname must not be empty")
    if days < 1:
        raise ValueError("days must be at least 1")
    key = ec.generate_private_key(ec.SECP256R1())
    common_name = host if len(host) <= 64 else "mailpanel self-signed"
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")
    return cert_pem, _pkcs8_pem(key)
