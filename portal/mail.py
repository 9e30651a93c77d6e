"""Email: branded pay links and receipts, sent over SMTP (`PORTAL_SMTP_URL`) from the job queue,
so an SMTP outage delays a message instead of losing it.

`smtp://[user:password@]host[:port]` upgrades with STARTTLS when the server offers it (and
refuses to send a password in the clear); `smtps://` is TLS from the first byte. In sandbox mode
without an SMTP URL, messages are caught in the sandbox store and shown at `/sandbox/mail`.
Messages are rendered from `templates/email/<name>.txt` and `.html` like the learner pages:
in the sandboxed learner environment, with the order's brand (name, logo, colours, support
address, legal links, footer copy), in the order's language, and with a marketer's published
override of the email templates, falling back to the default when an override fails
(`portal.branding.render.render_learner_email`). The worker needs no request.
"""

from __future__ import annotations

import re
import smtplib
import ssl
import time
from email.message import EmailMessage
from email.utils import formataddr, make_msgid, parseaddr
from urllib.parse import unquote, urlsplit

from sqlalchemy import select

from portal import i18n, jobs, timeline
from portal.branding.render import email_brand, render_learner_email
from portal.db import db
from portal.http import UpstreamError
from portal.i18n import N_
from portal.models import ApiKey, BrandAssignment, Order

SUBJECTS = {
    "pay_link": N_("%(brand)s: your order is ready to pay"),
    "receipt": N_("%(brand)s: receipt for your order"),
    "refund_issued": N_("%(brand)s: your refund"),
    "payment_failed": N_("%(brand)s: your payment did not go through"),
    "pay_link_cancelled": N_("%(brand)s: your pay link can no longer be used"),
}
# What a notice adds to its message (refund_issued, payment_failed, pay_link_cancelled); every
# key is always there for the strict templates.
NOTICE = {"amount_minor": 0, "refunded_minor": 0, "full": False, "expired": False}


def queue(
    session,
    template: str,
    order: Order,
    *,
    to: str,
    cc: str | None = None,
    key: str | None = None,
    notice: dict | None = None,
) -> None:
    """Send `template` about `order` once (once per `key`, for a message an order can get more
    than once, such as one per refund), from the job queue, in the caller's transaction."""
    payload = {"template": template, "to": to, "cc": cc}
    if notice is not None:
        payload["notice"] = {**NOTICE, **notice}
    jobs.enqueue(
        session,
        "mail",
        f"mail:{template}:{order.id}" + (f":{key}" if key else ""),
        order_id=order.id,
        payload=payload,
    )


def items(order: Order) -> list[dict]:
    """The lines of the message: the merchant's items, or the order's one product."""
    listed = (order.platform_data or {}).get("items") or []
    if listed:
        return [
            {
                "name": str(item.get("name") or ""),
                "quantity": int(item.get("quantity") or 1),
                "amount_minor": int(item.get("unit_amount") or 0) * int(item.get("quantity") or 1),
            }
            for item in listed
        ]
    return [
        {"name": order.description, "quantity": order.quantity, "amount_minor": order.amount_minor}
    ]


def message_context(settings: dict, order: Order, notice: dict | None = None) -> dict:
    """The values a message template reads besides the globals (`order`, `brand`, `fmt`...)."""
    manual = order.capture_method == "manual"
    return {
        "notice": {**NOTICE, **(notice or {})},
        "items": items(order),
        "reference": (order.platform_data or {}).get("reference") or None,
        "pay_url": settings["PUBLIC_URL"].rstrip("/") + f"/orders/{order.reference}",
        "link_days": settings["PAY_LINK_DAYS"],
        "manual": manual,
        "charged_minor": (order.amount_captured_minor if manual else order.amount_paid_minor) or 0,
    }


def brand_of(order: Order, settings: dict, key: ApiKey | None) -> tuple[dict, dict]:
    """The message's brand: the order's, as on its pages. A merchant key created with `--brand`
    names the sender unless a marketer assigned a brand to that very key."""
    brand, colours = email_brand(order, settings)
    if key is not None and key.brand_name and not _assigned_to_key(key.id):
        brand = {**brand, "name": key.brand_name}
    return brand, colours


def _assigned_to_key(key_id: int) -> bool:
    try:
        with db.reader() as session:
            return (
                session.scalar(
                    select(BrandAssignment.id).where(
                        BrandAssignment.platform == "merchant",
                        BrandAssignment.source_key == str(key_id),
                    )
                )
                is not None
            )
    except Exception:  # noqa: BLE001 - the key's own name is a fine sender then
        return False


def render(
    settings: dict, template: str, order: Order, brand: tuple[dict, dict], notice=None
) -> tuple[str, str, str]:
    """(subject, text, html) of a message about `order`, in the order's language (else
    PORTAL_DEFAULT_LOCALE), with `brand` from `brand_of`."""
    locale = order.locale or settings["DEFAULT_LOCALE"]
    context = message_context(settings, order, notice)
    parts = {
        kind: render_learner_email(
            f"email/{template}.{kind}",
            order=order,
            settings=settings,
            locale=locale,
            brand=brand,
            **context,
        )
        for kind in ("txt", "html")
    }
    language = i18n.language_for(locale)
    subject = i18n.gettext(language, SUBJECTS[template]) % {"brand": brand[0]["name"]}
    return subject, parts["txt"], parts["html"]


def build_message(settings, *, to, cc, subject, text, html, brand) -> EmailMessage:
    message = EmailMessage()
    # The brand that sends the link is the name the customer sees; the address is ours.
    message["From"] = formataddr((brand, parseaddr(settings["MAIL_FROM"])[1]))
    message["To"] = to
    if cc:
        message["Cc"] = cc
    message["Subject"] = subject
    message["Message-ID"] = make_msgid(domain="checkout-portal")
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    return message


def send(settings: dict, message: EmailMessage) -> None:
    """Hand the message to the SMTP server (or the sandbox's catcher)."""
    if not settings["SMTP_URL"]:
        if settings["SANDBOX"]:
            return catch(settings, message)
        raise jobs.PermanentJobError("PORTAL_SMTP_URL is not set: no mail can be sent")
    url = urlsplit(settings["SMTP_URL"])
    timeout = settings["HTTP_READ_TIMEOUT"]
    context = ssl.create_default_context()
    try:
        if url.scheme == "smtps":
            client = smtplib.SMTP_SSL(
                url.hostname, url.port or 465, timeout=timeout, context=context
            )
        else:
            client = smtplib.SMTP(url.hostname, url.port or 25, timeout=timeout)
        with client:
            client.ehlo()
            secure = url.scheme == "smtps"
            if not secure and client.has_extn("starttls"):
                client.starttls(context=context)
                client.ehlo()
                secure = True
            if url.username:
                if not secure:
                    raise jobs.PermanentJobError(
                        "PORTAL_SMTP_URL has a password but the server offers no STARTTLS"
                    )
                client.login(unquote(url.username), unquote(url.password or ""))
            client.send_message(message)
    except smtplib.SMTPResponseException as exc:
        # 5xx: the server will never take it (bad address, refused sender); 4xx: later.
        raise UpstreamError(
            f"SMTP {exc.smtp_code}: {exc.smtp_error!r}", transient=exc.smtp_code < 500
        ) from exc
    except smtplib.SMTPRecipientsRefused as exc:
        raise UpstreamError(f"SMTP refused the recipients: {exc}", transient=False) from exc
    except (TimeoutError, smtplib.SMTPException, OSError) as exc:
        raise UpstreamError(f"SMTP server unreachable: {exc}", transient=True) from exc


LINK = re.compile(r"https?://[^\s<>\"']+")


def catch(settings: dict, message: EmailMessage) -> None:
    """Sandbox: keep the message where `/sandbox/mail` shows it."""
    from portal.sandbox.store import Store

    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    mail_id = message["Message-ID"].strip("<>")
    Store(settings["SANDBOX_DATABASE_URL"]).put(
        "mail",
        mail_id,
        {
            "id": mail_id,
            "from": message["From"],
            "to": message["To"],
            "cc": message["Cc"],
            "subject": message["Subject"],
            "text": text,
            "html": html,
            "links": sorted(set(LINK.findall(text))),
            "created": int(time.time()),
        },
    )


def run_mail(services, job) -> None:
    settings = services.settings
    with db.reader() as session:
        order = session.get(Order, job.order_id)
        key = (
            session.get(ApiKey, order.merchant_key_id) if order and order.merchant_key_id else None
        )
    if order is None:
        return
    brand = brand_of(order, settings, key)
    template = job.payload["template"]
    subject, text, html = render(settings, template, order, brand, job.payload.get("notice"))
    to, cc = job.payload["to"], job.payload.get("cc")
    message = build_message(
        settings, to=to, cc=cc, subject=subject, text=text, html=html, brand=brand[0]["name"]
    )
    send(settings, message)
    recipients = {"to": to, "cc": cc}
    with db.transaction() as session:
        timeline.record(order.id, "note", f"email {template} sent", recipients, session=session)
        if template == "pay_link":
            from portal.api import webhooks_out

            webhooks_out.emit(session, settings, order, "link.sent", extra={"email": recipients})


def give_up_mail(services, job, error: str) -> None:
    if job.order_id is not None:
        timeline.record(
            job.order_id, "alert", f"email {job.payload.get('template')} not sent: {error}"
        )


jobs.register("mail", run_mail, give_up=give_up_mail)
