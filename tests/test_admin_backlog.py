"""The console's dashboard shows the mail and job backlog per job kind: what is due now and how
long the oldest of it has been due, what waits for a retry and the oldest one's age, what a worker
holds, and what was given up; periodic jobs waiting for their turn and finished jobs are not
backlog."""

from __future__ import annotations

import re
from datetime import timedelta

from portal.admin import figures
from portal.db import db
from portal.models import Job, JobState, utcnow

pytest_plugins = ["tests.admin_fixtures"]


def add_job(kind: str, key: str, *, created_ago, run_in, state=JobState.QUEUED, **fields):
    now = utcnow()
    with db.transaction() as session:
        session.add(
            Job(
                kind=kind,
                dedupe_key=key,
                payload={},
                state=state,
                attempts=fields.pop("attempts", 0),
                created_at=now - created_ago,
                run_at=now + run_in,
                updated_at=now,
                **fields,
            )
        )


def a_queue():
    now = utcnow()
    minutes = timedelta(minutes=1)
    # mail: one due for 10 minutes (queued 40 minutes ago), two greylisted and waiting to retry
    add_job("mail", "mail:pay_link:1", created_ago=40 * minutes, run_in=-10 * minutes)
    add_job(
        "mail",
        "mail:pay_link:2",
        created_ago=125 * minutes,
        run_in=7 * minutes,
        attempts=4,
        last_error="SMTP refused the recipients: a@example.com: 451 4.7.1 Greylisted",
    )
    add_job("mail", "mail:receipt:3", created_ago=3 * minutes, run_in=2 * minutes, attempts=1)
    # fulfil: one held by a worker right now, one given up, one done long ago (not backlog)
    add_job(
        "fulfil",
        "fulfil:4",
        created_ago=2 * minutes,
        run_in=-2 * minutes,
        attempts=1,
        locked_by="host:1:1",
        locked_until=now + minutes,
    )
    add_job("fulfil", "fulfil:5", created_ago=60 * minutes, run_in=-50 * minutes, state="dead")
    add_job("fulfil", "fulfil:6", created_ago=60 * minutes, run_in=-60 * minutes, state="done")
    # a periodic job waiting for its turn is not backlog; a retry whose lease ran out is due
    add_job("expire_sweep", "periodic:expire_sweep", created_ago=9 * minutes, run_in=4 * minutes)
    add_job(
        "webhook_delivery",
        "webhook:7",
        created_ago=20 * minutes,
        run_in=-5 * minutes,
        attempts=2,
        locked_by="host:2:2",
        locked_until=now - minutes,
    )
    return now


def test_the_backlog_per_kind(app):
    now = a_queue()
    backlog = {row.kind: row for row in figures.job_backlog(now)}
    assert [row.kind for row in figures.job_backlog(now)] == ["mail", "webhook_delivery", "fulfil"]
    mail = backlog["mail"]
    assert (mail.due, mail.retrying, mail.running, mail.dead) == (1, 2, 0, 0)
    assert round(mail.due_for(now).total_seconds() / 60) == 10
    assert round(mail.oldest_retry_age(now).total_seconds() / 60) == 125
    assert round((mail.next_retry - now).total_seconds() / 60) == 2
    fulfil = backlog["fulfil"]
    assert (fulfil.due, fulfil.retrying, fulfil.running, fulfil.dead) == (0, 0, 1, 1)
    assert fulfil.due_for(now) is None
    delivery = backlog["webhook_delivery"]  # its worker's lease ran out: due again
    assert (delivery.due, delivery.running) == (1, 0)
    assert "expire_sweep" not in backlog


def cells(html: str, kind: str) -> list[str]:
    row = re.search(rf'<tr id="backlog-{kind}"[^>]*>(.*?)</tr>', html, re.S).group(1)
    return [
        re.sub(r"<[^>]+>", "", cell).strip()
        for cell in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.S)
    ]


def test_the_dashboard_shows_the_backlog_with_the_oldest_ages(app, console):
    a_queue()
    page = console("operator").get("/admin/dashboard")
    assert page.status_code == 200
    html = page.text
    assert "Mail and job backlog" in html
    mail = cells(html, "mail")
    assert mail[:5] == ["mail", "1", "10 min", "2", "2 h 5 min"]
    assert mail[6:] == ["0", "0"]
    assert re.match(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}", mail[5]), mail[5]  # the next retry's time
    assert cells(html, "fulfil") == ["fulfil", "0", "—", "0", "—", "—", "1", "1"]
    assert 'id="backlog-expire_sweep"' not in html
    assert 'id="backlog-mail" class="has-errors"' in html  # due for over 5 minutes


def test_an_empty_queue_says_so(app, console):
    html = console("operator").get("/admin/dashboard").text
    assert "Nothing queued: every email and job has gone out." in html
    assert 'id="backlog"' not in html
