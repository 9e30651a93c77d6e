"""Email: branded pay links and receipts, sent over SMTP (`PORTAL_SMTP_URL`) from the job queue,
so an SMTP outage delays a message instead of losing it.

`smtp://[user:password@]host[:port]` upgrades with STARTTLS when the server offers it (and
refuses to send a password in the clear); `smtps://` is TLS from the first byte. In sandbox mode
without an SMTP URL, messages are caught in the sandbox store and shown at `/sandbox/mail`.
Messages are rendered from `templates/email/<name>.txt` and `.html` like the learner pages:
in the sandboxed learner environment, with the order's brand (name, logo, colours, support
address, legal links, footer copy), in the order's language, and with a marketer's published
override of the email templates, falling back to the default when an override fails
(`portal.branding.emails.render_learner_email`). The worker needs no request.
"""

from __future__ import annotations

import re
import smtplib
import ssl
import time
from datetime import timedelta
from email.message import EmailMessage
from email.utils import formataddr, make_msgid, parseaddr
from urllib.parse import unquote, urlsplit

from sqlalchemy import select

from portal import i18n, jobs
from portal.alerts import alert
from portal.branding.brands import header_safe
from portal.branding.emails import email_brand, render_learner_email
from portal.config import Settings
from portal.db import db
from portal.http import UpstreamError
from portal.i18n import N_
from portal.models import ApiKey, BrandAssignment, Order, utcnow
from portal.orders import timeline

SUBJECTS = {
    "pay_link": N_("%(brand)s: your order is ready to pay"),
    "receipt": N_("%(brand)s: receipt for your order"),
    "refund_issued": N_("%(brand)s: your refund"),
    "payment_failed": N_("%(brand)s: your payment did not go through"),
    "pay_link_cancelled": N_("%(brand)s: your pay link can no longer be used"),
    "checkout_recovery": N_("%(brand)s: finish your purchase"),
}
# What a notice adds to its message (refund_issued, payment_failed, pay_link_cancelled); every
# key is always there for the strict templates.
NOTICE = {
    "amount_minor": 0,
    "refunded_minor": 0,
    "full": False,
    "expired": False,
    "recovery_url": "",  # checkout_recovery: Stripe's recovery link, and until when it works
    "recovery_until": None,
}


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


def message_context(settings: Settings, order: Order, notice: dict | None = None) -> dict:
    """The values a message template reads besides the globals (`order`, `brand`, `fmt`...)."""
    manual = order.capture_method == "manual"
    return {
        "notice": {**NOTICE, **(notice or {})},
        "items": items(order),
        "reference": (order.platform_data or {}).get("reference") or None,
        "pay_url": settings.public_url.rstrip("/") + f"/orders/{order.reference}",
        "link_days": settings.pay_link_days,
        "manual": manual,
        "charged_minor": (order.amount_captured_minor if manual else order.amount_paid_minor) or 0,
    }


def brand_of(order: Order, settings: Settings, key: ApiKey | None) -> tuple[dict, dict]:
    """The message's brand: the order's, as on its pages. A merchant key created with `--brand`
    names the sender unless a marketer assigned a brand to that very key."""
    brand, colours = email_brand(order, settings)
    if key is not None and key.brand_name and not _assigned_to_key(key.id):
        brand = {**brand, "name": key.brand_name}
    if not header_safe(brand["name"]):
        # A name stored before names were checked: one line, so the headers stay whole.
        brand = {
            **brand,
            "name": " ".join("".join(c if header_safe(c) else " " for c in brand["name"]).split()),
        }
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
    settings: Settings, template: str, order: Order, brand: tuple[dict, dict], notice=None
) -> tuple[str, str, str]:
    """(subject, text, html) of a message about `order`, in the order's language (else
    PORTAL_DEFAULT_LOCALE), with `brand` from `brand_of`."""
    locale = order.locale or settings.default_locale
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
    message["From"] = formataddr((brand, parseaddr(settings.mail_from)[1]))
    message["To"] = to
    if cc:
        message["Cc"] = cc
    message["Subject"] = subject
    message["Message-ID"] = make_msgid(domain="checkout-portal")
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    return message


def permanent_reply(code: int) -> bool:
    """RFC 5321 section 4.2.1: a 5yz reply is a permanent failure (the same request will never
    succeed); 4yz is transient (greylisting's 450/451 at RCPT, a full mailbox's 452, a server
    closing with 421) and so is anything without a proper reply code."""
    return 500 <= code <= 599


def _text(reply) -> str:
    return reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)


def send(settings: Settings, message: EmailMessage) -> dict[str, tuple[int, bytes]]:
    """Hand the message to the SMTP server (or the sandbox's catcher). Returns the recipients
    the server refused while it took the message for the others ({} when all took it)."""
    if not settings.smtp_url:
        if settings.sandbox:
            catch(settings, message)
            return {}
        raise jobs.PermanentJobError("PORTAL_SMTP_URL is not set: no mail can be sent")
    url = urlsplit(settings.smtp_url)
    timeout = settings.http_read_timeout
    context = ssl.create_default_context()
    try:
        if url.scheme == "smtps":
            client = smtplib.SMTP_SSL(
                url.hostname, url.port or 465, timeout=timeout, context=context
            )
        else:
            client = smtplib.SMTP(url.hostname, url.port or 25, timeout=timeout)
        with client:
            # EHLO, falling back to HELO; a refusal of both raises with the server's reply code.
            client.ehlo_or_helo_if_needed()
            secure = url.scheme == "smtps"
            if not secure and client.has_extn("starttls"):
                client.starttls(context=context)
                client.ehlo_or_helo_if_needed()
                secure = True
            if url.username:
                if not secure:
                    raise jobs.PermanentJobError(
                        "PORTAL_SMTP_URL has a password but the server offers no STARTTLS"
                    )
                client.login(unquote(url.username), unquote(url.password or ""))
            return client.send_message(message)
    except smtplib.SMTPRecipientsRefused as exc:
        # Every RCPT refused, so nobody has the message: if any refusal was a 4xx (a greylisting
        # server's first answer), trying the whole message again later is right.
        codes = [code for code, _reply in exc.recipients.values()]
        transient = not all(permanent_reply(code) for code in codes)
        replies = "; ".join(
            f"{address}: {code} {_text(reply)}" for address, (code, reply) in exc.recipients.items()
        )
        raise UpstreamError(f"SMTP refused the recipients: {replies}", transient=transient) from exc
    except smtplib.SMTPResponseException as exc:
        # A reply code at connect, EHLO, AUTH, MAIL or DATA: 5xx never, 4xx later.
        raise UpstreamError(
            f"SMTP {exc.smtp_code}: {_text(exc.smtp_error)}",
            transient=not permanent_reply(exc.smtp_code),
        ) from exc
    except (TimeoutError, smtplib.SMTPException, OSError) as exc:
        raise UpstreamError(f"SMTP server unreachable: {exc}", transient=True) from exc


LINK = re.compile(r"https?://[^\s<>\"']+")


def catch(settings: Settings, message: EmailMessage) -> None:
    """Sandbox: keep the message where `/sandbox/mail` shows it."""
    from portal.sandbox.store import Store

    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    mail_id = message["Message-ID"].strip("<>")
    Store(settings.sandbox_database_url).put(
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
    refused = send(settings, message)
    recipients = {"to": to, "cc": cc}
    with db.transaction() as session:
        timeline.record(order.id, "note", f"email {template} sent", recipients, session=session)
        undeliverable = _refused_recipients(session, settings, job, order, refused)
        if template == "pay_link" and not job.payload.get("retry_of"):
            from portal.api import webhooks_out

            webhooks_out.emit(session, settings, order, "link.sent", extra={"email": recipients})
    for problem in undeliverable:
        alert(services, order, problem)


def _refused_recipients(session, settings, job, order: Order, refused: dict) -> list[str]:
    """The server took the message for some recipients and refused others. Sending the whole
    message again would give the others a second copy, so a recipient refused for now (4xx) gets
    a job of its own, retried with back-off like any other; one refused for good (5xx) is
    returned, for the operator's alert."""
    template = job.payload["template"]
    undeliverable = []
    for address, (code, reply) in refused.items():
        if permanent_reply(code):
            undeliverable.append(
                f"email {template} not delivered to {address}: SMTP {code} {_text(reply)}"
            )
            continue
        jobs.enqueue(
            session,
            "mail",
            f"mail:{template}:{order.id}:{address}",
            order_id=order.id,
            payload={"template": template, "to": address, "cc": None, "retry_of": job.id},
            run_at=utcnow() + timedelta(seconds=jobs.backoff_seconds(settings, 1)),
        )
    return undeliverable


def give_up_mail(services, job, error: str) -> None:
    """A 5xx reply (or too many 4xx): the message will not go. An operator must act."""
    if job.order_id is None:
        return
    with db.reader() as session:
        order = session.get(Order, job.order_id)
    if order is not None:
        alert(services, order, f"email {job.payload.get('template')} not sent: {error}")
