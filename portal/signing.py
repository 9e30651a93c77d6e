"""Cheaper signing for the two tokens every new learner gets on their first page: the Flask
session cookie and the Flask-WTF form token. Same formats, same keys, same checks.

itsdangerous makes a new signer for every `dumps` and `loads`, and each one derives its key
again from the secret (an HMAC, or a hash); here the derived key is kept per secret, salt and
method. It also tries to zlib-compress every payload; a token or a small session never gets
shorter by it, so payloads under `COMPRESS_FROM` bytes are not tried. What `loads` accepts is
unchanged (compressed or not, any of the keys).
"""

from __future__ import annotations

import functools
import hashlib
import os
import zlib

from itsdangerous import TimestampSigner, URLSafeTimedSerializer
from itsdangerous.encoding import base64_encode, want_bytes

COMPRESS_FROM = 256  # bytes of JSON; below this zlib saves nothing worth its cost

WTF_SALT = "wtf-csrf-token"  # Flask-WTF's, so its validate_csrf reads what this signs


@functools.lru_cache(maxsize=64)
def _derived_key(secret: bytes, salt: bytes, derivation: str, digest_method) -> bytes:
    return TimestampSigner(
        secret, salt=salt, key_derivation=derivation, digest_method=digest_method
    ).derive_key()


class KeptKeySigner(TimestampSigner):
    """itsdangerous' TimestampSigner, deriving each key once per process. Its default digest is
    hashlib.sha1 itself, the same SHA-1 itsdangerous defaults to: handed the OpenSSL
    constructor, hmac computes in OpenSSL, where itsdangerous' lazy wrapper sends it down
    Python's slower path."""

    default_digest_method = staticmethod(hashlib.sha1)

    def derive_key(self, secret_key: str | bytes | None = None) -> bytes:
        secret = self.secret_keys[-1] if secret_key is None else want_bytes(secret_key)
        return _derived_key(secret, self.salt, self.key_derivation, self.digest_method)


class TokenSerializer(URLSafeTimedSerializer):
    """URLSafeTimedSerializer with kept keys and a kept signer per salt (a signer holds only its
    keys and settings), not compressing small payloads."""

    default_signer = KeptKeySigner

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._signers: dict = {}

    def make_signer(self, salt: str | bytes | None = None):
        salt = self.salt if salt is None else salt
        signer = self._signers.get(salt)
        if signer is None:
            signer = self._signers[salt] = super().make_signer(salt)
        return signer

    def dump_payload(self, obj) -> bytes:
        json = want_bytes(self.serializer.dumps(obj, **self.serializer_kwargs))
        if len(json) >= COMPRESS_FROM:
            compressed = zlib.compress(json)
            if len(compressed) < len(json) - 1:  # as itsdangerous decides
                return b"." + base64_encode(compressed)
        return base64_encode(json)


@functools.lru_cache(maxsize=8)
def form_token_serializer(secret_key) -> TokenSerializer:
    """The serializer Flask-WTF builds on every call of generate_csrf, made once per key."""
    return TokenSerializer(secret_key, salt=WTF_SALT)


def new_raw_form_token() -> str:
    """What Flask-WTF keeps in the session and signs into the form (its own recipe)."""
    return hashlib.sha1(os.urandom(64)).hexdigest()  # noqa: S324 - a random token, not a digest
