"""OpenLearning's enrolment token (the `jwt` that "Join now" posts): verified before anything is
shown or stored. The signature against the configured key (`keys`), the algorithm (RS256, and
EdDSA for the institution-level gateway; never `none` or HMAC, because a public key used as an
HMAC secret is the classic forgery), `exp`/`nbf`/`iat`, the audience, every claim the portal
charges or redirects by, and the one-time `jti` (`routes`).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime

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
from joserfc.jws import JWSRegistry

from portal import jsonlimits
from portal.checkout import OrderDraft
from portal.config import ConfigError, Settings
from portal.http import HttpClient
from portal.i18n import N_
from portal.money import MAX_TIMESTAMP, MoneyError, normalise_currency, to_minor
from portal.platforms.openlearning.keys import RemoteKeySet, StaticKey, load_public_key
from portal.urls import UnsafeUrl, check_url

log = logging.getLogger("portal.openlearning")


PLATFORM = "openlearning"
ALGORITHMS = ("RS256", "EdDSA")
MAX_TOKEN_LENGTH = 16 * 1024
KEY_SETTINGS = (
    "OPENLEARNING_PUBLIC_KEY",
    "OPENLEARNING_PUBLIC_KEY_FILE",
    "OPENLEARNING_JWKS_URL",
)
# OpenLearning ids (24-hex object ids in practice) go into URL paths and form bodies.
IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}")
TOKEN_ID = re.compile(r"[\x21-\x7e]{1,190}")  # printable ASCII; fits orders.platform_ref


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
