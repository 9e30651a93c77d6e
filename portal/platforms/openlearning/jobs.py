"""OpenLearning's job: forget used token ids once their tokens have expired."""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import delete

from portal.db import db
from portal.models import UsedToken, utcnow

log = logging.getLogger("portal.openlearning")


def run_purge_tokens(services, job) -> None:
    """A used token id is needed only while its token could still be accepted: after its `exp`
    plus the leeway every check refuses the token anyway, so its row can go (an hour's margin)."""
    leeway = timedelta(seconds=services.settings.openlearning_leeway_seconds)
    cutoff = utcnow() - leeway - timedelta(hours=1)
    with db.transaction() as session:
        removed = session.execute(delete(UsedToken).where(UsedToken.expires_at < cutoff)).rowcount
    if removed:
        log.info("removed %d used enrolment token ids past their expiry", removed)
