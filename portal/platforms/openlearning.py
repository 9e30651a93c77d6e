"""OpenLearning, as a "custom payment gateway": the External Enrolment URL and the enrolment API.

OpenLearning's "Join now" button posts the learner's browser to `POST /openlearning/enrol` with a
form field `jwt`. Everything in that token is checked before anything is shown or stored: the
signature against the configured key (a PEM public key, or a key-set URL), the algorithm (RS256,
and EdDSA for the institution-level gateway; never `none` or HMAC, because a public key used as an
HMAC secret is the classic forgery), `exp`/`nbf`/`iat`, the audience, every claim the portal
charges or redirects by, and the one-time `jti`.

After payment the learner is enrolled with the course administrator's API key:
- class tokens: `POST {base}/enrolments/?api_key=KEY`, form body `class={class}&user={sub}`;
- program tokens: `POST {base}/institutions/{aud}/programs/{program}/enrolments/?api_key=KEY`,
  JSON body `{"user": sub}`.
A learner who is already enrolled counts as enrolled.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, urlencode

from cryptography.hazmat.primitives.asymmetric import ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from flask import Blueprint, redirect, request, url_for
from joserfc import jwt
from joserfc.errors import (
    DecodeError,
    ExceededSizeError,
    ExpiredTokenError,
    InvalidClaimError,
    InvalidKeyIdError,
    InvalidPayloadError,
    JoseError,
    MissingClaimError,
)
from joserfc.jwa import EdDSAAlgorithm
from joserfc.jwk import KeySet, OKPKey, RSAKey
from joserfc.jws import JWSRegistry
from sqlalchemy import delete
from sqlalchemy.dialects import postgresql, sqlite

from portal import jobs, jsonlimits, timeline
from portal.checkout import CheckoutError, OrderDraft, find_order, open_order, view_order
from portal.config import ConfigError, Settings
from portal.db import db
from portal.http import HttpClient, UpstreamError, classify
from portal.i18n import N_
from portal.models import Order, OrderState, UsedToken, utcnow
from portal.money import MAX_TIMESTAMP, MoneyError, format_money, normalise_currency, to_minor
from portal.platforms import Outcome, Platform
from portal.urls import UnsafeUrl, check_url

log = logging.getLogger("portal.openlearning")

PLATFORM = "openlearning"
ALGORITHMS = ("RS256", "EdDSA")
MAX_TOKEN_LENGTH = 16 * 1024
MIN_RSA_BITS = 2048
JWKS_MIN_REFRESH_SECONDS = 60.0
JWKS_MAX_AGE_SECONDS = 3600.0
KEY_SETTINGS = (
    "OPENLEARNING_PUBLIC_KEY",
    "OPENLEARNING_PUBLIC_KEY_FILE",
    "OPENLEARNING_JWKS_URL",
)
# OpenLearning ids (24-hex object ids in practice) go into URL paths and form bodies.
IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}")
TOKEN_ID = re.compile(r"[\x21-\x7e]{1,190}")  # printable ASCII; fits orders.platform_ref

ENROLLED = "enrolled"
ALREADY_ENROLLED = "already enrolled"


class _EdDSA(EdDSAAlgorithm):
    # joserfc warns that RFC 9864 deprecates the polymorphic name "EdDSA" in favour of "Ed25519".
    # OpenLearning's institution-level gateway signs with "EdDSA", so it is accepted on purpose.
    security_warning = None


class _Registry(JWSRegistry):
    """Only the asymmetric algorithms OpenLearning signs with exist here: `none`, HS256 and every
    other name are unknown algorithms, whatever the token's header says."""

    algorithms = {"RS256": JWSRegistry.algorithms["RS256"], "EdDSA": _EdDSA()}


# Unknown header parameters are ignored (the key is ours; `jwk`/`jku` in a header are never used).
REGISTRY = _Registry(algorithms=ALGORITHMS, strict_check_header=False)


# --- refusals -----------------------------------------------------------------------------------

# What the learner reads for each refusal (whole sentences, so each is one catalogue entry).
REFUSALS: dict[str, tuple[int, str, str]] = {
    "missing": (
        400,
        N_("This enrolment request is incomplete"),
        N_(
            "We did not receive your enrolment details from OpenLearning. Please go back to the "
            "course page on OpenLearning and choose “Join now” again."
        ),
    ),
    "malformed": (
        400,
        N_("This enrolment request is not valid"),
        N_(
            "The enrolment details from OpenLearning were damaged on the way. Please go back to "
            "the course page on OpenLearning and choose “Join now” again."
        ),
    ),
    "unverified": (
        401,
        N_("We could not verify this enrolment request"),
        N_(
            "It does not carry a valid signature from OpenLearning. Please go back to the course "
            "page on OpenLearning and choose “Join now” again. If this keeps happening, please "
            "contact support."
        ),
    ),
    "expired": (
        401,
        N_("This enrolment request has expired"),
        N_(
            "Enrolment requests from OpenLearning are valid for a few minutes only. Please go back "
            "to the course page on OpenLearning and choose “Join now” again."
        ),
    ),
    "early": (
        401,
        N_("This enrolment request is not valid yet"),
        N_(
            "It is dated in the future. Please wait a minute, then go back to the course page on "
            "OpenLearning and choose “Join now” again."
        ),
    ),
    "audience": (
        401,
        N_("This enrolment request is for another school"),
        N_(
            "It was issued for a different OpenLearning institution. Please go back to the course "
            "page on OpenLearning and choose “Join now” again."
        ),
    ),
    "claims": (
        400,
        N_("This enrolment request is incomplete"),
        N_(
            "Some of the course details in it are missing or malformed. Please go back to the "
            "course page on OpenLearning and choose “Join now” again. If this keeps happening, "
            "please contact support."
        ),
    ),
    "price": (
        400,
        N_("This course price cannot be charged"),
        N_(
            "The price or currency set for this class cannot be charged here. Please go back to "
            "the course page on OpenLearning and choose “Join now” again. If it happens again, "
            "please tell the course provider."
        ),
    ),
    "redirect": (
        400,
        N_("This enrolment request is not valid"),
        N_(
            "It would send you back to an address we do not recognise. Please go back to the "
            "course page on OpenLearning and choose “Join now” again. If this keeps happening, "
            "please contact support."
        ),
    ),
    "used": (
        400,
        N_("This enrolment request was already used"),
        N_(
            "Each “Join now” can be used once. Please go back to the course page on OpenLearning "
            "and choose “Join now” again."
        ),
    ),
}


class TokenRefused(Exception):
    """The token cannot be accepted. `reason` keys REFUSALS; `detail` is for the log only."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.status, self.title, self.message = REFUSALS[reason]
        self.back_url: str | None = None  # the course page, when the token is genuine


class KeySourceUnavailable(Exception):
    """The key set could not be fetched, so no token can be checked right now."""


# --- keys ---------------------------------------------------------------------------------------


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


# --- the token ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EnrolmentToken:
    """The verified claims of one "Join now"."""

    jti: str
    user: str
    institution: str
    title: str
    currency: str
    amount_minor: int
    redirect_url: str
    expires_at: datetime
    course: str | None = None
    class_id: str | None = None
    program: str | None = None

    @property
    def kind(self) -> str:
        return "program" if self.program else "class"

    @property
    def learner_key(self) -> str:
        """The learner and what they join: every "Join now" carries a new token (a new jti), and
        this is what says two tokens are the same purchase. A digest: no personal data."""
        parts = (self.institution, self.user, self.kind, self.course, self.class_id, self.program)
        text = "\x1f".join(part or "" for part in parts)
        return hashlib.sha256(text.encode()).hexdigest()

    def draft(self, locale: str | None) -> OrderDraft:
        return OrderDraft(
            platform=PLATFORM,
            platform_ref=self.jti,
            learner_key=self.learner_key,
            description=self.title,
            currency=self.currency,
            amount_minor=self.amount_minor,
            locale=locale,
            redirect_url=self.redirect_url,
            platform_data={
                "kind": self.kind,
                "user": self.user,
                "institution": self.institution,
                "course": self.course,
                "class": self.class_id,
                "program": self.program,
            },
        )


def _text(claims: dict, name: str) -> str:
    value = claims.get(name)
    if not isinstance(value, str) or not value.strip():
        raise TokenRefused("claims", f"claim {name!r} is missing or not a string")
    return value.strip()


def _identifier(claims: dict, name: str) -> str:
    value = claims.get(name)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not IDENTIFIER.fullmatch(value):
        raise TokenRefused("claims", f"claim {name!r} is missing or malformed")
    return value


def _amount(claims: dict, currency: str) -> int:
    price = claims.get("price")
    if price is None:
        raise TokenRefused("claims", "claim 'price' is missing")
    if isinstance(price, bool) or not isinstance(price, int | float | str):
        raise TokenRefused("price", f"price {price!r} is not a number")
    try:
        # str() of a JSON float is its shortest round-trip text: 49.99 stays "49.99".
        return to_minor(str(price), currency)
    except MoneyError as exc:
        raise TokenRefused("price", str(exc)) from None


class TokenVerifier:
    def __init__(self, keys, audience: str, leeway: int, *, allow_http_redirects: bool = False):
        self.keys = keys
        self.audience = audience
        self.leeway = leeway
        # Only the sandbox sends learners back over plain http (to its own loopback address).
        self.allow_http_redirects = allow_http_redirects

    def verify(self, token: str, redirect_allowed) -> EnrolmentToken:
        """The claims of a genuine, current, well-formed token for our institution.

        `redirect_allowed(url)` says whether `redirect_url` may be followed (the allow-list).
        Raises TokenRefused, or KeySourceUnavailable when the key set cannot be fetched.
        """
        token = (token or "").strip()
        if not token:
            raise TokenRefused("missing", "no jwt form field")
        if len(token) > MAX_TOKEN_LENGTH:
            raise TokenRefused("malformed", f"token of {len(token)} characters")
        for segment in token.split(".")[:2]:  # the header and the claims, before any parsing
            try:
                decoded = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
            except ValueError:
                raise TokenRefused("malformed", "a token segment is not base64url") from None
            if jsonlimits.depth(decoded) > jsonlimits.MAX_DEPTH:
                raise TokenRefused("malformed", "the token's JSON is nested too deep")
        claims = self._signed_claims(token)
        try:
            self._check_registered_claims(claims)
            return self._read_claims(claims, redirect_allowed)
        except TokenRefused as refusal:
            # Signed by OpenLearning: its course page is where the error page links (when
            # allow-listed: the error page checks).
            redirect_url = claims.get("redirect_url")
            refusal.back_url = redirect_url if isinstance(redirect_url, str) else None
            raise

    def _signed_claims(self, token: str) -> dict:
        for attempt in (1, 2):
            try:
                return jwt.decode(token, self.keys.current(), registry=REGISTRY).claims
            except InvalidKeyIdError as exc:
                if attempt == 1 and self.keys.refresh():
                    continue  # the key set was rotated: look again with the new one
                raise TokenRefused("unverified", exc.description) from None
            except (DecodeError, InvalidPayloadError, ExceededSizeError) as exc:
                raise TokenRefused("malformed", str(exc)) from None
            except JoseError as exc:
                raise TokenRefused("unverified", str(exc)) from None
            except (ValueError, TypeError) as exc:
                raise TokenRefused("malformed", f"{type(exc).__name__}: {exc}") from None
        raise AssertionError("unreachable")

    def _check_registered_claims(self, claims: dict) -> None:
        for name in ("exp", "nbf", "iat"):
            # Bounded before anything converts them: exp 1e30 is no date, and a float's
            # fraction is no second (RFC 7519 NumericDate, held to integers here).
            value = claims.get(name)
            if value is None and name != "exp":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TokenRefused("claims", f"claim {name!r} is missing or not a number")
            if not 0 <= value <= MAX_TIMESTAMP or value != int(value):
                raise TokenRefused("claims", f"claim {name!r} is not a time: {str(value)[:24]}")
        registry = jwt.JWTClaimsRegistry(
            leeway=self.leeway,
            exp={"essential": True},
            aud={"essential": True, "value": self.audience},
        )
        try:
            registry.validate(claims)
        except ExpiredTokenError:
            raise TokenRefused("expired", f"exp {claims.get('exp')}") from None
        except MissingClaimError as exc:
            reason = "audience" if exc.claim == "aud" else "claims"
            raise TokenRefused(reason, exc.description) from None
        except InvalidClaimError as exc:
            if exc.claim == "aud":
                raise TokenRefused("audience", f"aud {claims.get('aud')!r}") from None
            value = claims.get(exc.claim)
            dated = isinstance(value, int | float) and not isinstance(value, bool)
            if exc.claim in {"nbf", "iat"} and dated:
                raise TokenRefused("early", f"{exc.claim} {value} is in the future") from None
            raise TokenRefused("claims", exc.description) from None

    def _read_claims(self, claims: dict, redirect_allowed) -> EnrolmentToken:
        jti = claims.get("jti")
        if not isinstance(jti, str) or not TOKEN_ID.fullmatch(jti):
            raise TokenRefused("claims", "claim 'jti' is missing or malformed")
        user = _identifier(claims, "sub")
        title = _text(claims, "title")
        try:
            currency = normalise_currency(_text(claims, "currency"))
        except MoneyError as exc:
            raise TokenRefused("price", str(exc)) from None
        amount_minor = _amount(claims, currency)
        try:
            _text(claims, "redirect_url")  # present and a string; checked as sent, untrimmed
            redirect_url = check_url(
                claims["redirect_url"],
                allow_http="loopback" if self.allow_http_redirects else "never",
            ).url
        except UnsafeUrl as exc:
            raise TokenRefused("redirect", f"redirect_url refused: {exc}") from None
        if not redirect_allowed(redirect_url):
            raise TokenRefused("redirect", f"redirect_url {redirect_url!r} is not allow-listed")
        course = class_id = program = None
        if claims.get("program") is not None:
            if claims.get("class") is not None:
                raise TokenRefused("claims", "both 'class' and 'program' claims")
            program = _identifier(claims, "program")
        else:
            course = _identifier(claims, "course")
            class_id = _identifier(claims, "class")
        return EnrolmentToken(
            jti=jti,
            user=user,
            institution=self.audience,
            title=title,
            currency=currency,
            amount_minor=amount_minor,
            redirect_url=redirect_url,
            expires_at=datetime.fromtimestamp(int(claims["exp"]), UTC),
            course=course,
            class_id=class_id,
            program=program,
        )


def build_verifier(settings: Settings, http: HttpClient) -> TokenVerifier | None:
    """The verifier for the configured key, or None when OpenLearning is not configured.

    A configured but malformed key, or a key without the settings enrolment needs, stops the app
    with a ConfigError naming the variable."""
    configured = [name for name in KEY_SETTINGS if getattr(settings, name.lower())]
    if not configured:
        return None
    if len(configured) > 1:
        names = ", ".join(f"PORTAL_{name}" for name in configured)
        raise ConfigError(f"{names} are alternatives: set only one of them")
    source = configured[0]
    for required in ("OPENLEARNING_AUDIENCE", "OPENLEARNING_API_KEY"):
        if not getattr(settings, required.lower()):
            raise ConfigError(
                f"PORTAL_{required} is required when PORTAL_{source} is set "
                "(OpenLearning enrolment is configured)"
            )
    if source == "OPENLEARNING_JWKS_URL":
        keys = RemoteKeySet(getattr(settings, source.lower()), http)
    elif source == "OPENLEARNING_PUBLIC_KEY_FILE":
        try:
            with open(getattr(settings, source.lower()), "rb") as handle:
                pem = handle.read()
        except OSError as exc:
            raise ConfigError(f"PORTAL_{source} cannot be read: {exc.strerror}") from None
        keys = StaticKey(load_public_key(pem, source))
    else:
        keys = StaticKey(load_public_key(getattr(settings, source.lower()), source))
    return TokenVerifier(
        keys,
        settings.openlearning_audience,
        settings.openlearning_leeway_seconds,
        allow_http_redirects=bool(settings.sandbox),
    )


# --- the enrolment API --------------------------------------------------------------------------


class OpenLearningClient:
    def __init__(self, settings: Settings, recorder=None):
        self.base = settings.openlearning_api_base
        self.api_key = settings.openlearning_api_key or ""
        self.http = HttpClient(
            "openlearning",
            connect_timeout=settings.http_connect_timeout,
            read_timeout=settings.http_read_timeout,
            recorder=recorder,
        )

    def _url(self, path: str) -> str:
        return f"{self.base}{path}?{urlencode({'api_key': self.api_key})}"

    def enrol_in_class(self, class_id: str, user_id: str, *, order_id=None) -> str:
        """ENROLLED or ALREADY_ENROLLED; raises UpstreamError otherwise."""
        response = self.http.request(
            "POST",
            self._url("/enrolments/"),
            data={"class": class_id, "user": user_id},
            headers={"Accept": "application/json"},
            order_id=order_id,
        )
        return _enrolment(response, "OpenLearning class enrolment")

    def enrol_in_program(
        self, institution: str, program: str, user_id: str, *, order_id=None
    ) -> str:
        path = (
            f"/institutions/{quote(institution, safe='')}/programs/{quote(program, safe='')}"
            "/enrolments/"
        )
        response = self.http.request(
            "POST",
            self._url(path),
            json={"user": user_id},
            headers={"Accept": "application/json"},
            order_id=order_id,
        )
        return _enrolment(response, "OpenLearning program enrolment")


def _enrolment(response, what: str) -> str:
    if response.ok:
        return ENROLLED
    status = response.status_code
    if status == 409 or (status in {400, 422} and "already" in response.text.lower()):
        return ALREADY_ENROLLED
    raise classify(response, what)


# --- the platform -------------------------------------------------------------------------------


class OpenLearningPlatform(Platform):
    name = PLATFORM
    label = "OpenLearning"

    def __init__(self, settings: Settings, recorder=None):
        self.client = OpenLearningClient(settings, recorder)
        self.verifier = build_verifier(settings, self.client.http)

    def fulfil(self, order, *, retry: bool = False) -> Outcome:
        # Enrolling twice is harmless ("already enrolled" is success), so a retry needs no check.
        data = order.platform_data or {}
        user = data.get("user")
        if data.get("program") and data.get("institution") and user:
            target = f"program {data['program']}"
            result = self.client.enrol_in_program(
                data["institution"], data["program"], user, order_id=order.id
            )
        elif data.get("class") and user:
            target = f"class {data['class']}"
            result = self.client.enrol_in_class(data["class"], user, order_id=order.id)
        else:
            raise UpstreamError("order has no OpenLearning class or program", transient=False)
        # The order keeps the token's redirect_url: None leaves it as it is.
        return Outcome(
            redirect_url=None,
            note=f"OpenLearning: learner {user} {result} in {target}",
            detail={"enrolment": result, "user": user, "target": target},
        )

    def cancel(self, order) -> Outcome:
        return Outcome(
            redirect_url=order.redirect_url, note="nothing to tell OpenLearning: no enrolment made"
        )

    refund_effects = {  # noqa: RUF012 - read only
        "full": "OpenLearning has no refund API: you will be alerted to remove the learner "
        "from the class or program by hand.",
        "partial": "OpenLearning has no refund API: an alert records it; access normally stays.",
    }

    def refund(
        self,
        order,
        amount_minor: int,
        *,
        refunded_at: datetime | None = None,
        refund: dict | None = None,
    ) -> Outcome:
        """OpenLearning has no refund or unenrol API: the operator is alerted with what they need
        to remove the learner's access by hand (the user, the class or program, the amount)."""
        data = order.platform_data or {}
        user = data.get("user") or "unknown"
        if data.get("program"):
            target = f"program {data['program']}"
        else:
            target = f"class {data.get('class') or 'unknown'}"
        amount = format_money(amount_minor, order.currency, "en")
        full = order.state == OrderState.REFUNDED
        action = "remove their access by hand" if full else "partial refund: access normally stays"
        return Outcome(
            redirect_url=None,
            note=f"OpenLearning has no refund API: operator alerted ({amount})",
            detail={"user": user, "target": target, "amount_minor": amount_minor},
            alert=(
                f"refund of {amount} on OpenLearning: learner {user} in {target} "
                f"({'refunded in full' if full else 'refunded in part'}): {action}; OpenLearning "
                "has no refund API"
            ),
        )


# --- the External Enrolment URL -----------------------------------------------------------------


def _remember_token(token: EnrolmentToken, order) -> None:
    """Record the jti as used by this order (a second, concurrent first post records nothing)."""
    with db.transaction() as session:
        dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
        result = session.execute(
            dialect.insert(UsedToken)
            .values(jti=token.jti, issuer=PLATFORM, order_id=order.id, expires_at=token.expires_at)
            .on_conflict_do_nothing(index_elements=["jti"])
        )
        if result.rowcount == 1:
            timeline.record(
                order.id,
                "note",
                f"OpenLearning enrolment token accepted ({token.kind})",
                {
                    "jti": token.jti,
                    "user": token.user,
                    "class": token.class_id,
                    "program": token.program,
                },
                session=session,
            )


def run_purge_tokens(services, job) -> None:
    """A used token id is needed only while its token could still be accepted: after its `exp`
    plus the leeway every check refuses the token anyway, so its row can go (an hour's margin)."""
    leeway = timedelta(seconds=services.settings.openlearning_leeway_seconds)
    cutoff = utcnow() - leeway - timedelta(hours=1)
    with db.transaction() as session:
        removed = session.execute(delete(UsedToken).where(UsedToken.expires_at < cutoff)).rowcount
    if removed:
        log.info("removed %d used enrolment token ids past their expiry", removed)


jobs.register("purge_used_tokens", run_purge_tokens, every_seconds=3600)


def _order_of_token(jti: str):
    """The order a used token was spent on, when it was spent on an order opened by an earlier
    token of the same learner and purchase."""
    with db.reader() as session:
        used = session.get(UsedToken, jti)
        if used is None or used.order_id is None:
            return None
        return session.get(Order, used.order_id)


def _token_used(jti: str) -> bool:
    with db.reader() as session:
        return session.get(UsedToken, jti) is not None


bp = Blueprint("openlearning", __name__, url_prefix="/openlearning")


@bp.get("/enrol")
def enrol_page():
    from portal.errors import render_error

    body, status = render_error(
        405,
        N_("Please start from your course page"),
        N_(
            "This address receives enrolment requests from OpenLearning’s “Join now” button and "
            "cannot be opened directly. Please go back to the course page on OpenLearning and "
            "choose “Join now” again."
        ),
    )
    return body, status, {"Allow": "POST"}


@bp.post("/enrol")
def enrol():
    """OpenLearning's External Enrolment URL: a cross-site form POST with `jwt`, authenticated by
    the token's signature instead of a CSRF token."""
    from portal.views import learner_locale, services, show_order

    portal = services()
    platform: OpenLearningPlatform = portal.platform(PLATFORM)
    raw_token = request.form.get("jwt", "")
    if not raw_token.strip():
        # Malformed whatever the configuration: a 400, before "not set up" is even considered.
        log.warning("OpenLearning enrolment posted without a token")
        raise CheckoutError(*REFUSALS["missing"])
    if platform.verifier is None:
        raise CheckoutError(
            503,
            N_("Enrolment is not available here yet"),
            N_(
                "Paying for OpenLearning courses is not set up on this site. Please go back to the "
                "course page and try again later, or contact support."
            ),
        )
    try:
        token = platform.verifier.verify(raw_token, portal.allowed_redirect)
    except TokenRefused as refusal:
        log.warning("OpenLearning token refused (%s): %s", refusal.reason, refusal.detail)
        raise CheckoutError(
            refusal.status, refusal.title, refusal.message, back_url=refusal.back_url
        ) from None
    except KeySourceUnavailable as exc:
        log.error("OpenLearning token not checked: %s", exc)
        raise CheckoutError(
            503,
            N_("Enrolment is temporarily unavailable"),
            N_(
                "We could not check your enrolment request with OpenLearning just now. Please go "
                "back to the course page and try again in a few minutes; you have not been "
                "charged."
            ),
        ) from exc

    order = find_order(PLATFORM, token.jti) or _order_of_token(token.jti)
    if order is None and _token_used(token.jti):
        # A simultaneous post of this same token may have opened its order and spent the token
        # since the look-up above (the order commits before the token does): look again.
        order = find_order(PLATFORM, token.jti) or _order_of_token(token.jti)
        if order is None:
            raise CheckoutError(*REFUSALS["used"], back_url=token.redirect_url)
    if order is None:
        order = open_order(token.draft(learner_locale()))
        _remember_token(token, order)
        if order.platform_ref != token.jti:
            timeline.record(
                order.id,
                "note",
                "OpenLearning: another Join now for the same learner and class or program; "
                "this order is shown instead of opening a second one",
                {"jti": token.jti},
            )
    else:
        timeline.record(order.id, "note", "OpenLearning enrolment token posted again")
    # Every answer to the POST is a 303 to a page the browser GETs: Back from Stripe's page then
    # shows that page again, never the browser's "Confirm Form Resubmission". The reference in
    # those addresses is the order's capability, as on every learner page (status, return).
    if order.state == OrderState.FULFILLED:
        return redirect(url_for("openlearning.enrolled", reference=order.reference), code=303)
    if order.is_paid or order.state in {OrderState.PROCESSING, OrderState.CANCELLED}:
        return show_order(order)
    return redirect(url_for("orders.review", reference=order.reference), code=303)


@bp.get("/orders/<reference>/enrolled")
def enrolled(reference):
    """ "You're already enrolled": where a Join now for a course the learner has paid for lands."""
    from portal.branding.render import render_learner
    from portal.views import learner_locale, services, view_reference

    order = view_order(view_reference(reference))
    if order.platform != PLATFORM or order.state != OrderState.FULFILLED:
        return redirect(url_for("orders.review", reference=order.reference), code=303)
    return render_learner(
        "openlearning/already_enrolled.html",
        order=order,
        locale=order.locale or learner_locale(),
        continue_url=services().allowed_redirect(order.redirect_url),
    )
