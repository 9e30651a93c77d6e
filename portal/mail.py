"""Email: branded pay links and receipts, sent over SMTP (`PORTAL_SMTP_URL`) from the job queue,
so an SMTP outage delays a message instead of losing it.

`smtp://[user:password@]host[:port]` upgrades with STARTTLS when the server offers it (and
refuses to send a password in the clear); `smtps://` is TLS from the first byte. In sandbox mode
without an SMTP URL, messages are caught in the sandbox store and shown at `/sandbox/mail`.
Messages are rendered from `templates/email/<name>.txt` and `.html` with their own Jinja
environment (strict undefined; HTML autoescaped), so the worker needs no request.
"""

from __future__ import annotations

import functools
import re
import smtplib
import ssl
import time
from email.message import EmailMessage
from email.utils import formataddr, make_msgid, parseaddr
from pathlib import Path
from urllib.parse import unquote, urlsplit

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from portal import jobs, timeline
from portal.db import db
from portal.http import UpstreamError
from portal.models import ApiKey, Order
from portal.money import format_money

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
SUBJECTS = {
    "pay_link": "{brand}: your order is ready to pay",
    "receipt": "{brand}: receipt for your order",
}


@functools.cache
def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["money"] = lambda amount, currency: format_money(amount or 0, currency, "en")
    return env


def queue(session, template: str, order: Order, *, to: str, cc: str | None = None) -> None:
    """Send `template` about `order` once, from the job queue, in the caller's transaction."""
    jobs.enqueue(
        session,
        "mail",
        f"mail:{template}:{order.id}",
        order_id=order.id,
        payload={"template": template, "to": to, "cc": cc},
    )


def render(settings: dict, template: str, order: Order, brand: str) -> tuple[str, str, str]:
    """(subject, text, html) of a message about `order`."""
    context = {
        "order": order,
        "brand": brand,
        "items": (order.platform_data or {}).get("items", []),
        "pay_url": settings["PUBLIC_URL"] + f"/orders/{order.reference}",
        "support_email": settings["BRAND_SUPPORT_EMAIL"],
        "link_days": settings["PAY_LINK_DAYS"],
        "manual": order.capture_method == "manual",
    }
    env = environment()
    text = env.get_template(f"email/{template}.txt").render(context)
    html = env.get_template(f"email/{template}.html").render(context)
    return SUBJECTS[template].format(brand=brand), text, html


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
    brand = (key.brand_name if key else None) or settings["BRAND_NAME"]
    template = job.payload["template"]
    subject, text, html = render(settings, template, order, brand)
    to, cc = job.payload["to"], job.payload.get("cc")
    message = build_message(
        settings, to=to, cc=cc, subject=subject, text=text, html=html, brand=brand
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
