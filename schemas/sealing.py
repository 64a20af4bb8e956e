"""Dead letters sealed: their key and value bytes encrypted, so that the DLQ topic and the `dlq`
table hold no personal data in the clear, while `onfinish dlq replay` gives the original bytes back.

A record is dead-lettered as it came, before redaction: a call whose timestamp is out of range
carries its user id, its identifiers and, with content capture, its prompt. Sealing keeps "nothing
is lost" (the bytes are all there, for replay once the cause is fixed) and "no PII past the
processors" (decision 0017).

AES-256-GCM with a synthetic nonce: the nonce is an HMAC of the plaintext under a second key, so the
same bytes seal to the same sealed bytes. Sealing is then deterministic (both engines dead-letter a
record identically; a record dead-lettered twice is one value), and a nonce repeats only for the
same plaintext, which is what GCM needs. Both keys come from one secret through HKDF-SHA256, so
rotating the secret rotates both. A sealed value names the key it was sealed under (4 bytes of a
hash of the key), so a replay with another key says so instead of failing obscurely.

Layout: b"ofs1" | key id (4) | nonce (12) | ciphertext and tag (len + 16). None and b"" are left as
they are: there is nothing to hide in them.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from onfinish.errors import OnfinishError
from onfinish.settings import DeadLetterSettings

SEALED_PREFIX = b"ofs1"
_KEY_ID_BYTES = 4
_NONCE_BYTES = 12
_HEADER_BYTES = len(SEALED_PREFIX) + _KEY_ID_BYTES + _NONCE_BYTES
_INFO = b"onfinish dead letters v1"


class SealError(OnfinishError):
    """A sealed dead letter that this key cannot open: sealed under another key, or altered."""


def is_sealed(data: bytes | None) -> bool:
    return data is not None and data.startswith(SEALED_PREFIX) and len(data) > _HEADER_BYTES


class Seal:
    """Seals and opens dead letters' bytes under one secret (`ONFINISH_DLQ_SEAL_KEY`)."""

    def __init__(self, secret: str) -> None:
        if not secret:
            raise ValueError("a seal needs a non-empty secret")
        keys = HKDF(algorithm=hashes.SHA256(), length=64, salt=None, info=_INFO).derive(secret.encode())
        self._aead = AESGCM(keys[:32])
        self._nonce_key = keys[32:]
        self.key_id = hashlib.sha256(keys[:32]).digest()[:_KEY_ID_BYTES]
        self._associated = SEALED_PREFIX + self.key_id

    @classmethod
    def configured(cls, settings: DeadLetterSettings | None = None) -> Seal:
        """The seal of `ONFINISH_DLQ_SEAL_KEY` (or its _FILE), or of the development default."""
        return cls((settings or DeadLetterSettings()).seal_key.get_secret_value())

    def seal(self, data: bytes | None) -> bytes | None:
        if not data:
            return data
        nonce = hmac.new(self._nonce_key, data, hashlib.sha256).digest()[:_NONCE_BYTES]
        return self._associated + nonce + self._aead.encrypt(nonce, data, self._associated)

    def open(self, data: bytes | None) -> bytes | None:
        """The bytes `seal` was given; bytes that are not sealed (dead letters from before sealing)
        come back as they are."""
        if not is_sealed(data):
            return data
        assert data is not None  # is_sealed says so
        key_id = data[len(SEALED_PREFIX) : len(SEALED_PREFIX) + _KEY_ID_BYTES]
        if key_id != self.key_id:
            raise SealError(
                f"a dead letter sealed under key {key_id.hex()}, not this key ({self.key_id.hex()}): set "
                "ONFINISH_DLQ_SEAL_KEY to the secret the stages that dead-lettered it had"
            )
        nonce = data[len(self._associated) : _HEADER_BYTES]
        try:
            return self._aead.decrypt(nonce, data[_HEADER_BYTES:], self._associated)
        except InvalidTag:
            raise SealError("a sealed dead letter does not open: it was altered or cut short") from None
