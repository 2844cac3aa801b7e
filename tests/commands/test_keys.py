"""DKIM keys, sealed secrets and TLS bundle checks."""

import base64
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import NameOID

from commands.keys import (
    CertError,
    DkimKey,
    SealError,
    check_selector,
    dkim_txt_value,
    dkim_zone_record,
    generate_dkim,
    parse_bundle,
    public_from_private,
    seal,
    sealed_key_id,
    self_signed,
    unseal,
)

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
KEY_A = base64.b64encode(bytes(range(32))).decode()
KEY_B = base64.b64encode(bytes(range(32, 64))).decode()


@pytest.fixture(scope="module")
def rsa_key() -> DkimKey:
    return generate_dkim("rsa")


@pytest.fixture(scope="module")
def ed_key() -> DkimKey:
    return generate_dkim("ed25519")


# --- DKIM selectors ---------------------------------------------------------------------------


@pytest.mark.parametrize("selector", ["default", "s1", "2025-06", "mail_key", "a" * 63])
def test_valid_selector_is_returned_unchanged(selector: str) -> None:
    """Given a DNS-label selector, when checked, then it comes back as is."""
    assert check_selector(selector) == selector


@pytest.mark.parametrize(
    "selector", ["", "-lead", "_lead", "a.b", "sp ace", "a" * 64, "default\n", "sél"]
)
def test_invalid_selector_is_refused_with_the_rule(selector: str) -> None:
    """Given a selector that is not one DNS label, when checked, then the rule is stated."""
    with pytest.raises(ValueError, match=r"invalid DKIM selector.*1-63 letters, digits"):
        check_selector(selector)


# --- DKIM key generation ----------------------------------------------------------------------


def test_rsa_key_is_unencrypted_pkcs8_of_2048_bits(rsa_key: DkimKey) -> None:
    """Given a generated RSA key, then its PEM is PKCS8, clear, and 2048 bits."""
    assert rsa_key.algorithm == "rsa"
    assert rsa_key.private_pem.startswith("-----BEGIN PRIVATE KEY-----\n")
    private = serialization.load_pem_private_key(rsa_key.private_pem.encode(), password=None)
    assert isinstance(private, rsa.RSAPrivateKey)
    assert private.key_size == 2048


def test_rsa_public_b64_is_der_subject_public_key_info(rsa_key: DkimKey) -> None:
    """Given a generated RSA key, then p= holds the DER SubjectPublicKeyInfo of its public half."""
    public = serialization.load_der_public_key(base64.b64decode(rsa_key.public_b64))
    private = serialization.load_pem_private_key(rsa_key.private_pem.encode(), password=None)
    assert public.public_numbers() == private.public_key().public_numbers()  # type: ignore[union-attr]


def test_rsa_public_b64_verifies_signatures_of_the_private_key(rsa_key: DkimKey) -> None:
    """Given a message signed rsa-sha256 with the private key, then the p= key verifies it."""
    private = serialization.load_pem_private_key(rsa_key.private_pem.encode(), password=None)
    assert isinstance(private, rsa.RSAPrivateKey)
    signature = private.sign(b"headers", padding.PKCS1v15(), hashes.SHA256())
    public = serialization.load_der_public_key(base64.b64decode(rsa_key.public_b64))
    assert isinstance(public, rsa.RSAPublicKey)
    public.verify(signature, b"headers", padding.PKCS1v15(), hashes.SHA256())


def test_ed25519_public_b64_is_the_raw_32_byte_key(ed_key: DkimKey) -> None:
    """Given a generated ed25519 key, then p= is the raw 32-byte key (RFC 8463), not SPKI."""
    raw = base64.b64decode(ed_key.public_b64)
    assert len(raw) == 32
    private = serialization.load_pem_private_key(ed_key.private_pem.encode(), password=None)
    assert isinstance(private, ed25519.Ed25519PrivateKey)
    signature = private.sign(b"headers")
    ed25519.Ed25519PublicKey.from_public_bytes(raw).verify(signature, b"headers")


def test_ed25519_private_key_is_unencrypted_pkcs8(ed_key: DkimKey) -> None:
    """Given a generated ed25519 key, then its PEM is clear PKCS8."""
    assert ed_key.algorithm == "ed25519"
    assert ed_key.private_pem.startswith("-----BEGIN PRIVATE KEY-----\n")


def test_each_generation_yields_a_new_key() -> None:
    """Given two generations, then the keys differ."""
    assert generate_dkim("ed25519").public_b64 != generate_dkim("ed25519").public_b64


def test_unknown_algorithm_is_refused() -> None:
    """Given an algorithm that is neither rsa nor ed25519, when generating, then it is refused."""
    with pytest.raises(ValueError, match="unsupported DKIM algorithm 'dsa'"):
        generate_dkim("dsa")  # type: ignore[arg-type]


# --- Re-deriving the public key ---------------------------------------------------------------


def test_public_key_is_rederived_from_rsa_private_pem(rsa_key: DkimKey) -> None:
    """Given a stored RSA private key, when re-derived, then the p= value and algorithm match."""
    assert public_from_private(rsa_key.private_pem) == (rsa_key.public_b64, "rsa")


def test_public_key_is_rederived_from_ed25519_private_pem(ed_key: DkimKey) -> None:
    """Given a stored ed25519 private key, when re-derived, then the raw p= value matches."""
    assert public_from_private(ed_key.private_pem) == (ed_key.public_b64, "ed25519")


def test_pkcs1_rsa_private_pem_is_accepted(rsa_key: DkimKey) -> None:
    """Given a traditional `BEGIN RSA PRIVATE KEY` PEM, when re-derived, then it works too."""
    private = serialization.load_pem_private_key(rsa_key.private_pem.encode(), password=None)
    pkcs1 = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    assert pkcs1.startswith("-----BEGIN RSA PRIVATE KEY-----")
    assert public_from_private(pkcs1) == (rsa_key.public_b64, "rsa")


def test_ec_private_key_is_not_a_dkim_key() -> None:
    """Given an ECDSA key, when re-derived, then it is refused: DKIM has no ECDSA algorithm."""
    _, key_pem = self_signed("mail.example.com", NOW)
    with pytest.raises(ValueError, match="must be an RSA or ed25519 key"):
        public_from_private(key_pem)


def test_garbage_private_pem_is_refused() -> None:
    """Given text that is no PEM key, when re-derived, then the message says so."""
    with pytest.raises(ValueError, match="private_pem is not a PEM private key"):
        public_from_private("not a key")


# --- TXT values and zone records --------------------------------------------------------------


def test_rsa_txt_value_pins_sha256() -> None:
    """Given an RSA key, then the TXT value carries h=sha256 and k=rsa before p=."""
    assert dkim_txt_value("QUJD", "rsa") == "v=DKIM1; h=sha256; k=rsa; p=QUJD"


def test_ed25519_txt_value_names_its_key_type() -> None:
    """Given an ed25519 key, then the TXT value is k=ed25519 without an h= tag."""
    assert dkim_txt_value("QUJD", "ed25519") == "v=DKIM1; k=ed25519; p=QUJD"


@pytest.mark.parametrize("public_b64", ["", 'AB" "x', "AB CD", "AB\nCD", "p=AB"])
def test_non_base64_public_key_is_refused(public_b64: str) -> None:
    """Given a p= value that is not plain base64, then it is refused before reaching a zone."""
    with pytest.raises(ValueError, match="standard base64"):
        dkim_txt_value(public_b64, "rsa")


def test_short_key_zone_record_has_one_p_string() -> None:
    """Given a p= value under 250 characters, then the record holds tags and p= as two strings."""
    assert (
        dkim_zone_record("default", "QUJD", "rsa")
        == 'default._domainkey IN TXT ( "v=DKIM1; h=sha256; k=rsa; " "p=QUJD" )'
    )


def test_ed25519_zone_record_fits_one_string(ed_key: DkimKey) -> None:
    """Given an ed25519 key, then its 44-character p= needs no split."""
    record = dkim_zone_record("ed", ed_key.public_b64, "ed25519")
    assert record == f'ed._domainkey IN TXT ( "v=DKIM1; k=ed25519; " "p={ed_key.public_b64}" )'


def test_rsa_zone_record_splits_p_into_strings_of_at_most_250(rsa_key: DkimKey) -> None:
    """Given a 2048-bit key (392 base64 chars), then p= spans two quoted strings of <= 250."""
    record = dkim_zone_record("default", rsa_key.public_b64, "rsa")
    p_tag = f"p={rsa_key.public_b64}"
    tags = '"v=DKIM1; h=sha256; k=rsa; "'
    assert record == f'default._domainkey IN TXT ( {tags} "{p_tag[:250]}" "{p_tag[250:]}" )'


def test_zone_record_strings_concatenate_to_the_txt_value(rsa_key: DkimKey) -> None:
    """Given a zone record, when a resolver joins its strings, then it reads the TXT value."""
    record = dkim_zone_record("default", rsa_key.public_b64, "rsa")
    inner = record.removeprefix("default._domainkey IN TXT ( ").removesuffix(" )")
    strings = inner[1:-1].split('" "')
    assert all(len(s) <= 250 for s in strings)
    assert "".join(strings) == dkim_txt_value(rsa_key.public_b64, "rsa")


def test_zone_record_checks_the_selector() -> None:
    """Given an invalid selector, when rendering a record, then it is refused."""
    with pytest.raises(ValueError, match="invalid DKIM selector"):
        dkim_zone_record("a.b", "QUJD", "rsa")


# --- Sealing ----------------------------------------------------------------------------------


def test_sealed_secret_roundtrips() -> None:
    """Given a sealed secret, when unsealed with the same key, then the plaintext is back."""
    token = seal(b"secret", KEY_A, "k1")
    assert unseal(token, {"k1": KEY_A}) == b"secret"


def test_sealed_token_has_the_compact_v1_shape() -> None:
    """Given a sealed secret, then the token is v1.<key id>.<16-char nonce>.<ciphertext+tag>."""
    version, key_id, nonce, sealed = seal(b"secret", KEY_A, "k1").split(".")
    assert (version, key_id) == ("v1", "k1")
    assert len(base64.urlsafe_b64decode(nonce + "==")) == 12
    assert len(base64.urlsafe_b64decode(sealed + "==")) == len(b"secret") + 16


def test_sealing_twice_uses_fresh_nonces() -> None:
    """Given the same secret sealed twice, then the tokens differ (random nonce)."""
    assert seal(b"secret", KEY_A, "k1") != seal(b"secret", KEY_A, "k1")


def test_empty_plaintext_roundtrips() -> None:
    """Given an empty secret, when sealed and unsealed, then it stays empty."""
    assert unseal(seal(b"", KEY_A, "k1"), {"k1": KEY_A}) == b""


def test_sealed_key_id_is_read_from_the_token() -> None:
    """Given a token, then its key id is readable without any key."""
    assert sealed_key_id(seal(b"x", KEY_A, "2025-06")) == "2025-06"


def test_old_key_id_stays_readable_after_rotation() -> None:
    """Given a token under k1 and a key ring where k2 is current, then k1 still opens it."""
    old = seal(b"secret", KEY_A, "k1")
    assert unseal(old, {"k2": KEY_B, "k1": KEY_A}) == b"secret"


def test_sealed_token_hides_the_plaintext_and_its_base64() -> None:
    """Given a sealed PEM, then neither the PEM nor any base64 form of it shows in the token."""
    plaintext = generate_dkim("ed25519").private_pem.encode()
    token = seal(plaintext, KEY_A, "k1")
    body = plaintext.split(b"\n")[1].decode()
    assert plaintext.decode() not in token
    assert body not in token
    assert base64.b64encode(plaintext).decode() not in token
    assert base64.urlsafe_b64encode(plaintext).decode().rstrip("=") not in token


def test_tampered_ciphertext_is_refused() -> None:
    """Given a token with one ciphertext character changed, when unsealed, then auth fails."""
    head, sealed = seal(b"secret payload", KEY_A, "k1").rsplit(".", 1)
    middle = len(sealed) // 2
    flipped = "A" if sealed[middle] != "A" else "B"
    tampered = f"{head}.{sealed[:middle]}{flipped}{sealed[middle + 1 :]}"
    with pytest.raises(SealError, match="failed authentication with key 'k1'"):
        unseal(tampered, {"k1": KEY_A})


def test_tampered_nonce_is_refused() -> None:
    """Given a token with a changed nonce, when unsealed, then auth fails."""
    version, key_id, nonce, sealed = seal(b"secret", KEY_A, "k1").split(".")
    nonce = ("B" if nonce[0] == "A" else "A") + nonce[1:]
    with pytest.raises(SealError, match="failed authentication"):
        unseal(f"{version}.{key_id}.{nonce}.{sealed}", {"k1": KEY_A})


def test_relabelled_key_id_is_refused() -> None:
    """Given a token whose key id is rewritten to another id of the same key, then auth fails."""
    _, _, nonce, sealed = seal(b"secret", KEY_A, "k1").split(".")
    with pytest.raises(SealError, match="failed authentication"):
        unseal(f"v1.k2.{nonce}.{sealed}", {"k1": KEY_A, "k2": KEY_A})


def test_wrong_aad_is_refused() -> None:
    """Given a token sealed for one context, when unsealed for another, then auth fails."""
    token = seal(b"secret", KEY_A, "k1", aad=b"dkim:example.com:default")
    assert unseal(token, {"k1": KEY_A}, aad=b"dkim:example.com:default") == b"secret"
    with pytest.raises(SealError, match="failed authentication"):
        unseal(token, {"k1": KEY_A}, aad=b"dkim:example.org:default")


def test_wrong_key_material_is_refused() -> None:
    """Given a key ring where the id maps to different bytes, when unsealed, then auth fails."""
    token = seal(b"secret", KEY_A, "k1")
    with pytest.raises(SealError, match="failed authentication"):
        unseal(token, {"k1": KEY_B})


def test_unknown_key_id_is_refused() -> None:
    """Given a token under a key id the ring lacks, when unsealed, then the id is named."""
    token = seal(b"secret", KEY_A, "retired")
    with pytest.raises(SealError, match="unknown sealing key id 'retired'"):
        unseal(token, {"k1": KEY_A})


@pytest.mark.parametrize(
    "token",
    [
        "",
        "garbage",
        "v1.k1.onlythree",
        "v1.k1.a.b.c",
        "v2.k1.AAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAA",
        "v1.k1.AAAA.AAAAAAAAAAAAAAAAAAAAAA",
        "v1.k1.AAAAAAAAAAAAAAAA.AAAA",
        "v1.k1.AAAAAAAAAAAAAAA+.AAAAAAAAAAAAAAAAAAAAAA",
        "v1.k1.AAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAA=",
    ],
)
def test_malformed_token_is_refused(token: str) -> None:
    """Given a string that is not a well-formed v1 token, when unsealed, then SealError says so."""
    with pytest.raises(SealError, match=r"malformed sealed token|unsupported sealed token version"):
        unseal(token, {"k1": KEY_A})


def test_seal_error_is_a_value_error() -> None:
    """Given a caller catching ValueError, then sealing failures are caught too."""
    with pytest.raises(ValueError):
        unseal("garbage", {})


@pytest.mark.parametrize(
    ("key_b64", "message"),
    [
        (base64.b64encode(b"short").decode(), "must be 32 bytes"),
        ("not base64!", "not valid base64"),
    ],
)
def test_bad_sealing_key_is_refused(key_b64: str, message: str) -> None:
    """Given a key that is not 32 base64-encoded bytes, when sealing, then it is refused."""
    with pytest.raises(SealError, match=message):
        seal(b"secret", key_b64, "k1")


@pytest.mark.parametrize("key_id", ["", "a.b", "x" * 65, "sp ace"])
def test_key_id_that_cannot_sit_in_a_token_is_refused(key_id: str) -> None:
    """Given a key id with a dot, space or bad length, when sealing, then it is refused."""
    with pytest.raises(SealError, match="invalid key id"):
        seal(b"secret", KEY_A, key_id)


# --- TLS: helpers -----------------------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _cert(
    key: ec.EllipticCurvePrivateKey,
    cn: str,
    sans: list[str] | None,
    *,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None = None,
    ca: bool = False,
) -> x509.Certificate:
    """A certificate valid around NOW; self-signed unless `issuer` (name, key) is given."""
    issuer_name, issuer_key = issuer if issuer else (_name(cn), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=90))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in sans]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _bundle_for(cn: str, sans: list[str] | None) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    return _pem(_cert(key, cn, sans)), _key_pem(key)


# --- TLS: self-signed and the happy path ------------------------------------------------------


def test_self_signed_bundle_passes_and_reports_its_expiry() -> None:
    """Given a fresh self-signed bundle, when parsed, then it passes and expires `days` later."""
    cert_pem, key_pem = self_signed("mail.example.com", NOW, days=30)
    info = parse_bundle(cert_pem, key_pem, "mail.example.com", NOW)
    assert info.hostname == "mail.example.com"
    assert info.expires_at == NOW + timedelta(days=30)
    assert info.expires_at.tzinfo is not None
    assert info.not_before == NOW - timedelta(hours=1)
    assert info.subject == info.issuer == "CN=mail.example.com"
    assert info.names == ("mail.example.com",)


def test_self_signed_defaults_to_825_days() -> None:
    """Given no `days`, then the self-signed certificate lasts 825 days."""
    cert_pem, key_pem = self_signed("mail.example.com", NOW)
    assert parse_bundle(cert_pem, key_pem, "mail.example.com", NOW).expires_at == NOW + timedelta(
        days=825
    )


def test_self_signed_is_an_ecdsa_p256_server_certificate() -> None:
    """Given a self-signed certificate, then it is a P-256 leaf for serverAuth only."""
    cert_pem, _ = self_signed("mail.example.com", NOW)
    certificate = x509.load_pem_x509_certificate(cert_pem.encode())
    public = certificate.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert public.curve.name == "secp256r1"
    assert certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_cert_sign
    eku = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]


def test_fingerprint_is_the_sha256_of_the_leaf() -> None:
    """Given a bundle, then the fingerprint is the hex SHA-256 of the leaf's DER."""
    cert_pem, key_pem = self_signed("mail.example.com", NOW)
    info = parse_bundle(cert_pem, key_pem, "mail.example.com", NOW)
    leaf = x509.load_pem_x509_certificate(cert_pem.encode())
    assert info.fingerprint_sha256 == leaf.fingerprint(hashes.SHA256()).hex()
    assert len(info.fingerprint_sha256) == 64


def test_key_is_normalized_to_pkcs8() -> None:
    """Given a key in SEC1 `BEGIN EC PRIVATE KEY` form, then key_pem comes back as PKCS8."""
    key = ec.generate_private_key(ec.SECP256R1())
    sec1 = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    info = parse_bundle(_pem(_cert(key, "mail.example.com", None)), sec1, "mail.example.com", NOW)
    assert info.key_pem == _key_pem(key)


def test_text_around_the_pem_is_dropped_from_chain_pem() -> None:
    """Given a certificate with comments around it, then chain_pem is the bare PEM."""
    cert_pem, key_pem = self_signed("mail.example.com", NOW)
    info = parse_bundle(f"subject=...\r\n{cert_pem}\n\n", key_pem, "mail.example.com", NOW)
    assert info.chain_pem == cert_pem


# --- TLS: chains ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chain() -> tuple[x509.Certificate, x509.Certificate, x509.Certificate, str]:
    """Root CA -> intermediate CA -> leaf for mail.example.com; returns (root, inter, leaf, key)."""
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = _cert(root_key, "Test Root", None, ca=True)
    inter_key = ec.generate_private_key(ec.SECP256R1())
    inter = _cert(inter_key, "Test Intermediate", None, issuer=(root.subject, root_key), ca=True)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = _cert(
        leaf_key, "mail.example.com", ["mail.example.com"], issuer=(inter.subject, inter_key)
    )
    return root, inter, leaf, _key_pem(leaf_key)


def test_chain_with_intermediate_keeps_both_in_order(
    chain: tuple[x509.Certificate, x509.Certificate, x509.Certificate, str],
) -> None:
    """Given leaf + intermediate, when parsed, then chain_pem holds both, leaf first."""
    _, inter, leaf, key_pem = chain
    info = parse_bundle(_pem(leaf) + _pem(inter), key_pem, "mail.example.com", NOW)
    assert info.chain_pem == _pem(leaf) + _pem(inter)
    assert info.issuer == "CN=Test Intermediate"
    assert info.subject == "CN=mail.example.com"


def test_chain_may_end_with_its_root(
    chain: tuple[x509.Certificate, x509.Certificate, x509.Certificate, str],
) -> None:
    """Given leaf + intermediate + root, when parsed, then all three are kept in order."""
    root, inter, leaf, key_pem = chain
    bundle = _pem(leaf) + _pem(inter) + _pem(root)
    assert parse_bundle(bundle, key_pem, "mail.example.com", NOW).chain_pem == bundle


def test_chain_out_of_issuing_order_is_refused(
    chain: tuple[x509.Certificate, x509.Certificate, x509.Certificate, str],
) -> None:
    """Given leaf + root (intermediate missing), when parsed, then the broken link is named."""
    root, _, leaf, key_pem = chain
    with pytest.raises(
        CertError,
        match=r"out of order: certificate 2 \(CN=Test Root\) did not issue certificate 1",
    ):
        parse_bundle(_pem(leaf) + _pem(root), key_pem, "mail.example.com", NOW)


def test_leaf_after_its_intermediate_is_refused_with_a_hint(
    chain: tuple[x509.Certificate, x509.Certificate, x509.Certificate, str],
) -> None:
    """Given intermediate first and leaf second, when parsed, then the caller is told to swap."""
    _, inter, leaf, key_pem = chain
    with pytest.raises(CertError, match="put the server certificate first"):
        parse_bundle(_pem(inter) + _pem(leaf), key_pem, "mail.example.com", NOW)


# --- TLS: refusals ----------------------------------------------------------------------------


def test_mismatched_key_is_refused() -> None:
    """Given a certificate and someone else's key, when parsed, then the mismatch is named."""
    cert_pem, _ = self_signed("mail.example.com", NOW)
    _, other_key = self_signed("mail.example.com", NOW)
    with pytest.raises(CertError, match=r"^the private key does not match the certificate$"):
        parse_bundle(cert_pem, other_key, "mail.example.com", NOW)


def test_uncovered_hostname_is_refused_listing_the_names() -> None:
    """Given a certificate for a and b, when checked for mail.example.com, then both are listed."""
    cert_pem, key_pem = _bundle_for("a", ["a", "b"])
    with pytest.raises(
        CertError, match=r"^certificate does not cover mail\.example\.com \(covers: a, b\)$"
    ):
        parse_bundle(cert_pem, key_pem, "mail.example.com", NOW)


def test_expired_certificate_is_refused_with_its_date() -> None:
    """Given a 30-day certificate issued in 2023, when checked now, then it is expired."""
    issued = datetime(2023, 1, 1, tzinfo=UTC)
    cert_pem, key_pem = self_signed("mail.example.com", issued, days=30)
    with pytest.raises(CertError, match=r"^certificate expired on 2023-01-31T00:00:00Z$"):
        parse_bundle(cert_pem, key_pem, "mail.example.com", NOW)


def test_certificate_expiring_exactly_now_is_expired() -> None:
    """Given now equal to notAfter, when checked, then it counts as expired."""
    cert_pem, key_pem = self_signed("mail.example.com", NOW - timedelta(days=1), days=1)
    with pytest.raises(CertError, match="certificate expired on 2025-06-01T12:00:00Z"):
        parse_bundle(cert_pem, key_pem, "mail.example.com", NOW)


def test_not_yet_valid_certificate_is_refused() -> None:
    """Given a certificate whose validity starts tomorrow, when checked now, then it is refused."""
    cert_pem, key_pem = self_signed("mail.example.com", NOW + timedelta(days=1))
    with pytest.raises(CertError, match=r"not yet valid \(valid from 2025-06-02T11:00:00Z\)"):
        parse_bundle(cert_pem, key_pem, "mail.example.com", NOW)


@pytest.mark.parametrize(
    "cert_pem",
    [
        "",
        "garbage",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n",
    ],
)
def test_garbage_certificate_is_refused(cert_pem: str) -> None:
    """Given text that holds no parsable certificate, when parsed, then the message says so."""
    _, key_pem = self_signed("mail.example.com", NOW)
    with pytest.raises(CertError, match=r"^cert_pem is not a PEM certificate$"):
        parse_bundle(cert_pem, key_pem, "mail.example.com", NOW)


def test_key_pasted_as_certificate_is_refused() -> None:
    """Given the key in both fields, when parsed, then cert_pem is reported as no certificate."""
    _, key_pem = self_signed("mail.example.com", NOW)
    with pytest.raises(CertError, match=r"^cert_pem is not a PEM certificate$"):
        parse_bundle(key_pem, key_pem, "mail.example.com", NOW)


def test_garbage_key_is_refused() -> None:
    """Given text that is no private key, when parsed, then key_pem is named."""
    cert_pem, _ = self_signed("mail.example.com", NOW)
    with pytest.raises(CertError, match=r"^key_pem is not a PEM private key$"):
        parse_bundle(cert_pem, "garbage", "mail.example.com", NOW)


def test_passphrase_protected_key_is_refused() -> None:
    """Given an encrypted key, when parsed, then the caller is asked for the clear key."""
    key = ec.generate_private_key(ec.SECP256R1())
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    ).decode()
    cert_pem = _pem(_cert(key, "mail.example.com", None))
    with pytest.raises(CertError, match="key_pem is encrypted; provide it without a passphrase"):
        parse_bundle(cert_pem, encrypted, "mail.example.com", NOW)


def test_naive_now_is_a_programming_error() -> None:
    """Given a naive `now`, then parse_bundle refuses it rather than guess a zone."""
    cert_pem, key_pem = self_signed("mail.example.com", NOW)
    with pytest.raises(ValueError, match="timezone-aware"):
        parse_bundle(cert_pem, key_pem, "mail.example.com", datetime(2025, 6, 1))


# --- TLS: hostname coverage -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sans", "hostname"),
    [
        (["*.example.com"], "mail.example.com"),
        (["other.org", "mail.example.com"], "mail.example.com"),
        (["MAIL.Example.COM"], "mail.example.com"),
        (["mail.example.com"], "Mail.EXAMPLE.com"),
        (["*.EXAMPLE.com"], "MAIL.example.COM"),
        (["mail.example.com"], "mail.example.com."),
    ],
)
def test_covered_hostname_passes(sans: list[str], hostname: str) -> None:
    """Given a SAN that names or wildcards the host (any case), when checked, then it passes."""
    cert_pem, key_pem = _bundle_for("ignored", sans)
    assert parse_bundle(cert_pem, key_pem, hostname, NOW).hostname == hostname.lower().rstrip(".")


@pytest.mark.parametrize(
    ("sans", "hostname"),
    [
        (["*.example.com"], "a.b.example.com"),
        (["*.example.com"], "example.com"),
        (["*.com"], "example.com"),
        (["m*.example.com"], "mail.example.com"),
        (["*.*.example.com"], "a.b.example.com"),
        (["example.com"], "mail.example.com"),
        (["mail.example.com.evil.org"], "mail.example.com"),
    ],
)
def test_wildcard_covers_exactly_one_leftmost_label(sans: list[str], hostname: str) -> None:
    """Given a wildcard or near-miss SAN, when checked for another depth or name, then refused."""
    cert_pem, key_pem = _bundle_for("ignored", sans)
    with pytest.raises(CertError, match="does not cover"):
        parse_bundle(cert_pem, key_pem, hostname, NOW)


def test_common_name_is_used_when_there_is_no_san() -> None:
    """Given a certificate without SAN, when checked for its CN, then it passes."""
    cert_pem, key_pem = _bundle_for("mail.example.com", None)
    assert parse_bundle(cert_pem, key_pem, "MAIL.example.com", NOW).names == ("mail.example.com",)


def test_common_name_is_ignored_when_a_san_exists() -> None:
    """Given a CN of mail.example.com but a SAN of other.org, when checked, then it is refused."""
    cert_pem, key_pem = _bundle_for("mail.example.com", ["other.org"])
    with pytest.raises(CertError, match=r"\(covers: other\.org\)"):
        parse_bundle(cert_pem, key_pem, "mail.example.com", NOW)


def test_reported_names_are_the_san_dns_names() -> None:
    """Given several SANs, then CertInfo.names lists them in certificate order."""
    cert_pem, key_pem = _bundle_for("x", ["mail.example.com", "*.example.com", "smtp.example.org"])
    info = parse_bundle(cert_pem, key_pem, "imap.example.com", NOW)
    assert info.names == ("mail.example.com", "*.example.com", "smtp.example.org")
