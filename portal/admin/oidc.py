"""Single sign-on with OpenID Connect (Authlib's Flask client), enabled when `PORTAL_OIDC_ISSUER`
(or `PORTAL_OIDC_METADATA_URL`), `PORTAL_OIDC_CLIENT_ID` and `PORTAL_OIDC_CLIENT_SECRET` are set.

The identity provider decides the role: a claim (`PORTAL_OIDC_ROLE_CLAIM`, default `groups`; a
dotted path such as `realm_access.roles` reaches into nested claims) is mapped through
`PORTAL_OIDC_ROLE_MAP` (`portal-admins:admin,support:operator,marketing:marketer`). Someone with
no mapped role is refused, and the role is refreshed at every sign-in, so removing a person from
the group takes the console away from them at their next sign-in.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from portal.admin import audit
from portal.admin.audit import Actor
from portal.admin.auth import SignIn, normalise_email
from portal.config import ConfigError, Settings
from portal.db import db
from portal.models import Role, User, utcnow

CLIENT_NAME = "portal_sso"
# When someone is in several mapped groups, the widest role wins.
ROLE_RANK = {Role.MARKETER: 1, Role.OPERATOR: 2, Role.ADMIN: 3}


def enabled(settings: Settings) -> bool:
    return bool(
        (settings.oidc_issuer or settings.oidc_metadata_url)
        and settings.oidc_client_id
        and settings.oidc_client_secret
    )


def check_settings(settings: Settings) -> None:
    """Half a single sign-on configuration is a mistake: say which variable is missing."""
    names = ("OIDC_ISSUER", "OIDC_METADATA_URL", "OIDC_CLIENT_ID", "OIDC_CLIENT_SECRET")
    if not any(getattr(settings, name.lower()) for name in names):
        return
    if not (settings.oidc_issuer or settings.oidc_metadata_url):
        raise ConfigError("PORTAL_OIDC_ISSUER (or PORTAL_OIDC_METADATA_URL) is required for SSO")
    for name in ("OIDC_CLIENT_ID", "OIDC_CLIENT_SECRET"):
        if not getattr(settings, name.lower()):
            raise ConfigError(f"PORTAL_{name} is required for single sign-on")
    if not settings.oidc_role_map:
        raise ConfigError(
            "PORTAL_OIDC_ROLE_MAP is required for single sign-on "
            "(e.g. portal-admins:admin,support:operator,marketing:marketer)"
        )
    if "openid" not in settings.oidc_scopes.split():
        raise ConfigError("PORTAL_OIDC_SCOPES must include openid")


def metadata_url(settings: Settings) -> str:
    return settings.oidc_metadata_url or (
        settings.oidc_issuer + "/.well-known/openid-configuration"
    )


def init_app(app) -> None:
    settings = app.config["PORTAL"]
    if not enabled(settings):
        return
    from authlib.integrations.flask_client import OAuth

    oauth = OAuth(app)
    oauth.register(
        CLIENT_NAME,
        client_id=settings.oidc_client_id,
        client_secret=settings.oidc_client_secret,
        server_metadata_url=metadata_url(settings),
        client_kwargs={"scope": settings.oidc_scopes, "code_challenge_method": "S256"},
    )


def client(app):
    return app.extensions["authlib.integrations.flask_client"].create_client(CLIENT_NAME)


def _claim(claims: dict, path: str):
    value = claims
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def role_for(claims: dict, claim: str, role_map: dict[str, str]) -> str | None:
    """The role the identity provider's claim maps to, or None."""
    value = _claim(claims, claim)
    values = value if isinstance(value, list) else [value]
    roles = [role_map[v] for v in values if isinstance(v, str) and v in role_map]
    return max(roles, key=lambda r: ROLE_RANK[r]) if roles else None


def sign_in(settings: Settings, actor: Actor, claims: dict) -> SignIn:
    """Find or create the console user for verified ID token claims, with the mapped role."""
    email = normalise_email(claims.get("email") or "")
    subject = f"{claims.get('iss')}|{claims.get('sub')}"
    who = Actor(None, email or subject, actor.ip_address, actor.user_agent)

    def refuse(reason: str, message: str) -> SignIn:
        audit.record(who, "login", "refused", detail={"method": "sso", "reason": reason})
        return SignIn(None, message)

    role = role_for(claims, settings.oidc_role_claim, settings.oidc_role_map)
    if role is None:
        return refuse(
            "no mapped role",
            "Your single sign-on account has no role in this console. Ask an administrator to "
            "add you to one of the console's groups.",
        )
    if not email or "@" not in email:
        return refuse("no email claim", "Your identity provider did not send an email address.")
    with db.reader() as session:
        known = session.scalar(select(User).where(User.oidc_subject == subject))
        if known is None:
            known = session.scalar(select(User).where(User.email == email))
            if known is not None and known.oidc_subject and known.oidc_subject != subject:
                return refuse(
                    "the email belongs to another single sign-on identity",
                    "This account cannot sign in with single sign-on.",
                )
            if known is not None and claims.get("email_verified") is not True:
                # Linking by an unverified email would let anyone who can set that address at
                # the provider take over the local account.
                return refuse(
                    "a local account has this email and the provider has not verified it",
                    "This account cannot sign in with single sign-on.",
                )
    if known is not None and not known.active:
        return refuse("inactive account", "This account is deactivated.")
    try:
        with db.transaction() as session:
            if known is None:
                user = User(email=email, role=role, oidc_subject=subject, active=True)
                session.add(user)
            else:
                user = session.get(User, known.id)
                user.oidc_subject = subject
                user.role = role
            user.last_login_at = utcnow()
            session.flush()
            audit.record(
                Actor(user.id, user.email, actor.ip_address, actor.user_agent),
                "login",
                detail={"method": "sso", "role": role},
                session=session,
            )
    except IntegrityError:
        return refuse("a concurrent sign-in created the user", "Please sign in again.")
    return SignIn(user)
