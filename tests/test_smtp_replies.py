"""SMTP replies classified per RFC 5321 against real local SMTP servers: a 4xx at any stage
(connect, EHLO/HELO, MAIL, RCPT, DATA), a refused connection and a server that never answers are
transient, so the mail job retries with back-off; a 5xx is permanent, so the job gives up and an
operator is alerted. A greylisting server (450/451 at RCPT on a first attempt) gets the message
on the retry, once."""

from __future__ import annotations

import email
import email.policy
import logging
import socket
import threading
from email.message import EmailMessage

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import select

from portal import mail
from portal.config import Settings, load_settings
from portal.db import db
from portal.http import UpstreamError
from portal.models import Job, JobState, OrderEvent
from tests.api_support import ApiClient, deliveries, make_key, queued, run_queued, session_body
from tests.conftest import free_port


class ScriptedServer:
    """An aiosmtpd handler answering the reply set for a stage ("EHLO", "MAIL", "RCPT",
    "DATA"; `RCPT <address>` for one recipient) and taking the message otherwise. With
    `greylist`, the first RCPT of each (sender, recipient) pair gets that reply and later ones
    are taken, as a greylisting server does."""

    def __init__(self):
        self.replies: dict[str, str] = {}
        self.greylist: str | None = None
        self.seen: set[tuple[str, str]] = set()
        self.messages: list[tuple[list[str], email.message.EmailMessage]] = []

    async def handle_EHLO(self, server, session, envelope, hostname, responses):  # noqa: N802
        if "EHLO" in self.replies:
            return [self.replies["EHLO"]]
        session.host_name = hostname
        return responses

    async def handle_HELO(self, server, session, envelope, hostname):  # noqa: N802
        if "EHLO" in self.replies:
            return self.replies["EHLO"]
        session.host_name = hostname
        return f"250 {server.hostname}"

    async def handle_MAIL(self, server, session, envelope, address, mail_options):  # noqa: N802
        if "MAIL" in self.replies:
            return self.replies["MAIL"]
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
        reply = self.replies.get(f"RCPT {address}") or self.replies.get("RCPT")
        if reply:
            return reply
        if self.greylist and (envelope.mail_from, address) not in self.seen:
            self.seen.add((envelope.mail_from, address))
            return self.greylist
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        if "DATA" in self.replies:
            return self.replies["DATA"]
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append((list(envelope.rcpt_tos), message))
        return "250 OK"


@pytest.fixture
def smtp():
    handler = ScriptedServer()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    handler.url = f"smtp://127.0.0.1:{port}"
    yield handler
    controller.stop()


class RawListener:
    """A TCP listener that greets with a fixed line and closes (a busy server's `421`), or
    accepts and never says a word (`greeting=None`: the client's timeout)."""

    def __init__(self, greeting: bytes | None):
        self.greeting = greeting
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"smtp://127.0.0.1:{self.sock.getsockname()[1]}"
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.sock.accept()
            except OSError:
                return
            if self.greeting is None:
                self.held.append(connection)
                continue
            connection.sendall(self.greeting)
            connection.close()

    def close(self) -> None:
        self.sock.close()
        for connection in self.held:
            connection.close()
        self.thread.join(5)


def a_message(cc: str | None = None) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "Portal <checkout@portal.test>"
    message["To"] = "buyer@example.com"
    if cc:
        message["Cc"] = cc
    message["Subject"] = "Your order"
    message.set_content("Pay here.")
    return message


def send_settings(url: str) -> Settings:
    return load_settings({"SMTP_URL": url, "SANDBOX": False, "HTTP_READ_TIMEOUT": 1.0}, environ={})


TRANSIENT = "transient"
PERMANENT = "permanent"

STAGE_REPLIES = [
    ("EHLO", "421 4.3.2 Service not available, closing channel", TRANSIENT),
    ("EHLO", "554 5.7.1 No SMTP service here", PERMANENT),
    ("MAIL", "421 4.3.2 Closing channel", TRANSIENT),
    ("MAIL", "451 4.3.0 Local error in processing", TRANSIENT),
    ("MAIL", "452 4.3.1 Insufficient system storage", TRANSIENT),
    ("MAIL", "550 5.7.1 Sender rejected", PERMANENT),
    ("MAIL", "553 5.1.8 Sender address syntax", PERMANENT),
    ("RCPT", "421 4.3.2 Closing channel", TRANSIENT),
    ("RCPT", "450 4.2.0 Greylisted, try again later", TRANSIENT),
    ("RCPT", "451 4.7.1 Greylisted, please retry", TRANSIENT),
    ("RCPT", "452 4.2.2 Mailbox full", TRANSIENT),
    ("RCPT", "550 5.1.1 No such user", PERMANENT),
    ("RCPT", "553 5.1.3 Mailbox name not allowed", PERMANENT),
    ("RCPT", "554 5.7.1 Relay access denied", PERMANENT),
    ("DATA", "421 4.3.2 Closing channel", TRANSIENT),
    ("DATA", "451 4.3.0 Queue file write error", TRANSIENT),
    ("DATA", "452 4.3.1 Insufficient storage", TRANSIENT),
    ("DATA", "550 5.7.1 Content rejected", PERMANENT),
    ("DATA", "554 5.6.0 Transaction failed", PERMANENT),
]


@pytest.mark.parametrize(
    ("stage", "reply", "kind"), STAGE_REPLIES, ids=[f"{s}-{r[:3]}" for s, r, _ in STAGE_REPLIES]
)
def test_a_reply_at_each_stage_is_transient_when_4xx_and_permanent_when_5xx(
    smtp, stage, reply, kind
):
    smtp.replies[stage] = reply
    with pytest.raises(UpstreamError) as raised:
        mail.send(send_settings(smtp.url), a_message())
    assert raised.value.transient is (kind == TRANSIENT), str(raised.value)
    assert reply[:3] in str(raised.value)
    assert smtp.messages == []


@pytest.mark.parametrize(
    ("greeting", "kind"),
    [
        (b"421 4.3.2 Too busy, try later\r\n", TRANSIENT),
        (b"554 5.3.2 No service for you\r\n", PERMANENT),
        (None, TRANSIENT),  # accepts the connection and never greets: the read times out
    ],
    ids=["greeting-421", "greeting-554", "silent"],
)
def test_a_reply_or_silence_at_connect(greeting, kind):
    listener = RawListener(greeting)
    try:
        with pytest.raises(UpstreamError) as raised:
            mail.send(send_settings(listener.url), a_message())
    finally:
        listener.close()
    assert raised.value.transient is (kind == TRANSIENT), str(raised.value)


def test_a_refused_connection_is_transient():
    with pytest.raises(UpstreamError) as raised:
        mail.send(send_settings(f"smtp://127.0.0.1:{free_port()}"), a_message())
    assert raised.value.transient


def test_recipients_refused_all_at_once_are_transient_if_any_refusal_was_4xx(smtp):
    smtp.replies["RCPT buyer@example.com"] = "550 5.1.1 No such user"
    smtp.replies["RCPT rep@acme.example"] = "451 4.7.1 Greylisted"
    with pytest.raises(UpstreamError) as raised:
        mail.send(send_settings(smtp.url), a_message(cc="rep@acme.example"))
    assert raised.value.transient  # nobody has it: the retry sees the 550 alone, and alerts
    smtp.replies.pop("RCPT rep@acme.example")
    smtp.replies["RCPT rep@acme.example"] = "553 5.1.3 Bad address"
    with pytest.raises(UpstreamError) as raised:
        mail.send(send_settings(smtp.url), a_message(cc="rep@acme.example"))
    assert not raised.value.transient


# --- through the job queue: retried with back-off, or given up with an alert ---------------------


def link_order(app) -> dict:
    api = ApiClient(app.test_client(), make_key().secret)
    body = session_body(mode="link", sales_rep_email="rep@acme.example")
    return api.post("/checkout-sessions", body).json["order"]


def mail_jobs():
    return queued("mail")


def alerts() -> list[str]:
    with db.reader() as session:
        return list(
            session.scalars(
                select(OrderEvent.message).where(OrderEvent.kind == "alert").order_by(OrderEvent.id)
            )
        )


@pytest.mark.parametrize("reply", ["450 4.2.0 Greylisted", "451 4.7.1 Try again later"])
def test_a_greylisting_server_gets_the_pay_link_on_the_retry_once(make_app, smtp, reply):
    smtp.greylist = reply
    app = make_app(SMTP_URL=smtp.url)
    link_order(app)
    assert run_queued(app, "mail") == 1
    (job,) = mail_jobs()
    assert job.state == JobState.QUEUED  # retried with back-off, not given up
    assert job.attempts == 1
    assert reply[:3] in job.last_error
    assert alerts() == []
    assert deliveries() == []
    assert run_queued(app, "mail") == 1  # the retry (RETRY_BASE_SECONDS=0 in the tests)
    ((recipients, message),) = smtp.messages
    assert sorted(recipients) == ["buyer@example.com", "rep@acme.example"]
    assert message["To"] == "buyer@example.com"
    assert mail_jobs() == []
    assert [d.event_type for d in deliveries()] == ["link.sent"]
    assert alerts() == []


def test_a_5xx_gives_up_at_once_and_alerts_the_operator(make_app, smtp, caplog):
    smtp.replies["RCPT"] = "550 5.1.1 No such user here"
    app = make_app(SMTP_URL=smtp.url)
    order = link_order(app)
    with caplog.at_level(logging.ERROR, logger="portal.alerts"):
        assert run_queued(app, "mail") == 1
    assert mail_jobs() == []
    with db.reader() as session:
        (job,) = session.scalars(select(Job).where(Job.kind == "mail"))
    assert job.state == JobState.DEAD
    assert job.attempts == 1  # no retry of a permanent refusal
    (message,) = alerts()
    assert "pay_link not sent" in message
    assert "buyer@example.com: 550 5.1.1 No such user here" in message  # what the server said
    assert any(
        "ALERT order" in record.getMessage() and order["id"] in record.getMessage()
        for record in caplog.records
    )
    assert smtp.messages == []


def test_4xx_until_the_attempts_run_out_then_an_alert(make_app, smtp):
    smtp.replies["DATA"] = "451 4.3.0 Try later"
    app = make_app(SMTP_URL=smtp.url)  # RETRY_MAX_ATTEMPTS=3 in the tests
    link_order(app)
    for _attempt in range(3):
        assert run_queued(app, "mail") == 1
    assert mail_jobs() == []
    (message,) = alerts()
    assert "451" in message


def test_one_recipient_greylisted_gets_its_own_retry_and_the_other_no_second_copy(make_app, smtp):
    smtp.replies["RCPT rep@acme.example"] = "451 4.7.1 Greylisted"
    app = make_app(SMTP_URL=smtp.url)
    link_order(app)
    assert run_queued(app, "mail") == 1
    ((recipients, _message),) = smtp.messages
    assert recipients == ["buyer@example.com"]
    (follow_up,) = mail_jobs()
    assert follow_up.payload["to"] == "rep@acme.example"
    assert follow_up.payload["cc"] is None
    smtp.replies.pop("RCPT rep@acme.example")  # the greylisting period is over
    assert run_queued(app, "mail") == 1
    assert [recipients for recipients, _ in smtp.messages] == [
        ["buyer@example.com"],
        ["rep@acme.example"],
    ]
    assert mail_jobs() == []
    assert [d.event_type for d in deliveries()] == ["link.sent"]  # one link, not one per copy
    assert alerts() == []


def test_one_recipient_refused_for_good_is_alerted_and_the_other_served(make_app, smtp):
    smtp.replies["RCPT rep@acme.example"] = "550 5.1.1 No such user"
    app = make_app(SMTP_URL=smtp.url)
    link_order(app)
    assert run_queued(app, "mail") == 1
    ((recipients, _message),) = smtp.messages
    assert recipients == ["buyer@example.com"]
    assert mail_jobs() == []
    (message,) = alerts()
    assert "rep@acme.example" in message
    assert "550" in message
