"""End-to-end encryption of every Temporal payload: a `PayloadCodec` on the one client factory.

With a key configured (`TSKY_ENCRYPTION_KEY`, or `temporal.encryption_key_file`), every payload a tsky
client or worker writes to Temporal (workflow and activity inputs and results, signals, updates, queries,
heartbeat details, memos, the Web UI summary and details) is AES-256-GCM ciphertext: whoever runs the
Temporal service (Temporal Cloud included) sees none of it. Search attributes are not payloads a codec
touches, so they stay readable: that is what `tsky jobs queue` and the Web UI's list filter on.

Keys rotate: several keys may be configured (comma-separated, or one per line in the key file); the first
encrypts, any of them decrypts, found by the key id each payload carries in its metadata.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadCodec

from tsky.spec.settings import Settings, SettingsError

ENCODING = b"binary/encrypted"
KEY_ID_METADATA = "encryption-key-id"
_NONCE_BYTES = 12
_KEY_BYTES = 32


class CodecKeyError(Exception):
    """A payload is encrypted with a key this process does not have (or with none at all)."""


def new_key() -> str:
    """A fresh key, as `TSKY_ENCRYPTION_KEY` expects it: base64 of 32 random bytes."""
    return base64.b64encode(os.urandom(_KEY_BYTES)).decode()


def key_id(key: bytes) -> str:
    """A short public name for a key (it reveals nothing of the key), stored beside each ciphertext."""
    return hashlib.sha256(b"tsky-codec-key-id:" + key).hexdigest()[:16]


class EncryptionCodec(PayloadCodec):
    """Encrypts with the first key; decrypts with any. Without keys it writes plaintext and explains,
    instead of failing obscurely, when it meets a payload someone else encrypted."""

    def __init__(self, keys: Sequence[bytes]):
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._encrypt_id = key_id(keys[0]) if keys else None
        self._ciphers = {key_id(k): AESGCM(k) for k in keys}

    @property
    def encrypts(self) -> bool:
        return self._encrypt_id is not None

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        if self._encrypt_id is None:
            return list(payloads)
        cipher = self._ciphers[self._encrypt_id]
        out = []
        for p in payloads:
            nonce = os.urandom(_NONCE_BYTES)
            sealed = cipher.encrypt(nonce, p.SerializeToString(), None)
            out.append(
                Payload(
                    metadata={"encoding": ENCODING, KEY_ID_METADATA: self._encrypt_id.encode()},
                    data=nonce + sealed,
                )
            )
        return out

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        from cryptography.exceptions import InvalidTag

        out = []
        for p in payloads:
            if p.metadata.get("encoding") != ENCODING:
                out.append(p)  # written without a codec (before encryption was turned on)
                continue
            kid = p.metadata.get(KEY_ID_METADATA, b"").decode()
            cipher = self._ciphers.get(kid)
            if cipher is None:
                raise CodecKeyError(
                    f"This job's data is encrypted (key id {kid}) and tsky here has "
                    + ("no encryption key" if not self._ciphers else "other keys")
                    + ": set TSKY_ENCRYPTION_KEY (or temporal.encryption_key_file) to the key the workers use "
                    "(several keys: comma-separated, the first one encrypts)."
                )
            try:
                plain = cipher.decrypt(p.data[:_NONCE_BYTES], p.data[_NONCE_BYTES:], None)
            except InvalidTag as err:
                raise CodecKeyError(f"A payload encrypted with key id {kid!r} failed authentication.") from err
            decoded = Payload()
            decoded.ParseFromString(plain)
            out.append(decoded)
        return out


def _parse_keys(text: str, where: str) -> list[bytes]:
    keys = []
    for item in text.replace(",", "\n").split():
        try:
            key = base64.b64decode(item, validate=True)
        except binascii.Error:
            key = b""
        if len(key) != _KEY_BYTES:
            raise SettingsError(
                f"{where}: every encryption key must be the base64 of {_KEY_BYTES} random bytes "
                "(`tsky codec keygen` prints one); found one that is not."
            )
        keys.append(key)
    return keys


def configured_keys(settings: Settings) -> list[bytes]:
    """The keys from `TSKY_ENCRYPTION_KEY` (first) and the key file; empty means no encryption."""
    keys = []
    if settings.temporal.encryption_key:
        keys += _parse_keys(settings.temporal.encryption_key, "TSKY_ENCRYPTION_KEY (temporal.encryption_key)")
    if settings.temporal.encryption_key_file:
        path = Path(settings.temporal.encryption_key_file).expanduser()
        try:
            text = path.read_text()
        except OSError as err:
            raise SettingsError(
                f"temporal.encryption_key_file: cannot read {path} ({err.strerror}). "
                "Fix the path or create the file with `tsky codec keygen > FILE`."
            ) from err
        keys += _parse_keys(text, f"temporal.encryption_key_file ({path})")
    return keys


def codec_for(settings: Settings) -> EncryptionCodec:
    return EncryptionCodec(configured_keys(settings))
