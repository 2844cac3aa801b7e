"""The data-encryption keys of a deployment: secrets in events are sealed with the current
key and opened with whichever key their token names, so the key can be rotated (new
DATA_KEY/DATA_KEY_ID, the old pair kept in MAILPANEL_OLD_DATA_KEYS) without re-writing the log."""

from collections.abc import Mapping

from commands.keys import seal, unseal


class Sealer:
    def __init__(self, key_b64: str, key_id: str, old: Mapping[str, str] | None = None) -> None:
        self.key_id = key_id or "k0"
        self.keys = {**(old or {}), self.key_id: key_b64}
        self._current = key_b64

    def seal(self, plaintext: bytes, aad: bytes) -> str:
        return seal(plaintext, self._current, self.key_id, aad)

    def unseal(self, token: str, aad: bytes) -> bytes:
        return unseal(token, self.keys, aad)


def dkim_aad(domain: str) -> bytes:
    """A sealed DKIM key opens only as a key of its own domain."""
    return f"dkim:{domain}".encode()


def tls_aad(hostname: str) -> bytes:
    return f"tls:{hostname}".encode()
