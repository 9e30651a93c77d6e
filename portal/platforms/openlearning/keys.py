"""OpenLearning's signing keys: a configured PEM public key, or a key set fetched from a URL."""

from __future__ import annotations

import logging
import threading
import time

from cryptography.hazmat.primitives.asymmetric import ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from joserfc.errors import (
    JoseError,
)
from joserfc.jwk import KeySet, OKPKey, RSAKey

from portal.config import ConfigError
from portal.http import HttpClient, UpstreamError, classify

log = logging.getLogger("portal.openlearning")


MIN_RSA_BITS = 2048
JWKS_MIN_REFRESH_SECONDS = 60.0
JWKS_MAX_AGE_SECONDS = 3600.0


class KeySourceUnavailable(Exception):
    """The key set could not be fetched, so no token can be checked right now."""


def load_public_key(pem: str | bytes, variable: str) -> RSAKey | OKPKey:
    """A PEM public key for RS256 (RSA, 2048 bits or more) or EdDSA (Ed25519/Ed448).

    Raises ConfigError naming `variable`. PEM pasted into one line with literal `\\n` works too.
    """
    text = pem.decode() if isinstance(pem, bytes) else pem
    text = text.strip()
    if "\\n" in text and "\n" not in text:
        text = text.replace("\\n", "\n")
    try:
        public = load_pem_public_key(text.encode())
    except (ValueError, TypeError):
        raise ConfigError(
            f"PORTAL_{variable} is malformed: expected a PEM public key "
            "(-----BEGIN PUBLIC KEY----- ... -----END PUBLIC KEY-----)"
        ) from None
    if isinstance(public, rsa.RSAPublicKey):
        if public.key_size < MIN_RSA_BITS:
            raise ConfigError(
                f"PORTAL_{variable} is an RSA key of {public.key_size} bits; "
                f"{MIN_RSA_BITS} or more are required"
            )
        return RSAKey.import_key(public)
    if isinstance(public, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return OKPKey.import_key(public)
    raise ConfigError(
        f"PORTAL_{variable} is a {type(public).__name__}: use an RSA (RS256) or an Ed25519 "
        "(EdDSA) public key"
    )


class StaticKey:
    """One configured public key."""

    def __init__(self, key: RSAKey | OKPKey):
        self.key = key

    def current(self) -> RSAKey | OKPKey:
        return self.key

    def refresh(self) -> bool:
        return False


class RemoteKeySet:
    """A JWKS URL: fetched on first use, refreshed when a token names an unknown `kid` (or the set
    is an hour old), and never fetched more than once a minute, whatever tokens arrive."""

    def __init__(self, url: str, http: HttpClient, *, clock=time.monotonic):
        self.url = url
        self.http = http
        self.clock = clock
        self._keys: KeySet | None = None
        self._fetched_at = 0.0
        self._attempted_at: float | None = None
        self._lock = threading.Lock()

    def current(self) -> KeySet:
        if self._keys is None or self.clock() - self._fetched_at > JWKS_MAX_AGE_SECONDS:
            self.refresh()
        if self._keys is None:
            raise KeySourceUnavailable(f"the OpenLearning key set at {self.url} is unavailable")
        return self._keys

    def refresh(self) -> bool:
        """Fetch the set again unless that was tried less than a minute ago; True if fetched."""
        with self._lock:
            now = self.clock()
            if (
                self._attempted_at is not None
                and now - self._attempted_at < JWKS_MIN_REFRESH_SECONDS
            ):
                return False
            self._attempted_at = now
            try:
                keys = self._fetch()
            except (UpstreamError, JoseError, ValueError) as exc:
                log.warning("OpenLearning key set %s could not be loaded: %s", self.url, exc)
                return False
            self._keys = keys
            self._fetched_at = now
            return True

    def _fetch(self) -> KeySet:
        response = self.http.request("GET", self.url, headers={"Accept": "application/json"})
        if not response.ok:
            raise classify(response, "OpenLearning key set")
        data = response.json()
        if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
            raise ValueError("not a JSON Web Key Set")
        usable = [k for k in data["keys"] if isinstance(k, dict) and k.get("kty") in {"RSA", "OKP"}]
        return KeySet.import_key_set({"keys": usable})
