"""Every kind of job the worker runs, listed in one place.

The queue (`portal.jobs`) stores jobs by kind name and runs whatever `Kind` the app's services
hold under that name (`services.job_kinds`, built from `all_kinds()` by `build_services`).
A job queued under a name missing here is marked dead ("unknown job kind"), so a kind is added
by writing its handler in the module that owns the work and listing it below.

- `run(services, job)` does the work; it raises `portal.http.UpstreamError` (transient or not)
  or `portal.jobs.PermanentJobError` to fail, anything else counts as a crash and is retried.
- `give_up(services, job, error)` runs once when the job stops for good (it alerts an operator
  or moves the order to its failed state).
- `every_seconds` makes the kind periodic: one job of it is always queued
  (`jobs.ensure_periodic_jobs`) and comes back that long after each run.
"""

from __future__ import annotations

from portal import alerts, disputes, fulfilment, mail, refunds
from portal.api import cancel as api_cancel
from portal.api import webhooks_out
from portal.jobs import Kind
from portal.platforms import registry

CORE_KINDS: dict[str, Kind] = {
    # An order's platform hears of its payment, cancellation or failed payment.
    "fulfil": Kind(fulfilment.run_fulfil, give_up=fulfilment.give_up_fulfil),
    "cancel": Kind(fulfilment.run_cancel, give_up=fulfilment.give_up_quietly),
    "payment_failed": Kind(fulfilment.run_payment_failed, give_up=fulfilment.give_up_quietly),
    # Refunds and disputes reported to the platform.
    "platform_refund": Kind(refunds.run_platform_refund, give_up=refunds.give_up_platform_refund),
    "platform_dispute": Kind(
        disputes.run_platform_dispute, give_up=disputes.give_up_platform_dispute
    ),
    # Messages out: email, the merchants' webhooks, operator alerts.
    "mail": Kind(mail.run_mail, give_up=mail.give_up_mail),
    "webhook_delivery": Kind(webhooks_out.run_delivery, give_up=webhooks_out.give_up_delivery),
    "operator_alert": Kind(alerts.run_operator_alert, give_up=alerts.give_up_alert),
    # Periodic sweeps.
    "expire_sweep": Kind(fulfilment.run_expire_sweep, every_seconds=300),
    "reconcile": Kind(fulfilment.run_reconcile, every_seconds=3600),
    "merchant_expiry": Kind(api_cancel.run_expiry, every_seconds=3600),
}


def platform_kinds() -> dict[str, Kind]:
    """The kinds the platforms bring (their renewals, refunds, clean-ups): each platform's spec
    lists its own (`PlatformSpec.job_kinds`)."""
    return registry.job_kinds()


def all_kinds() -> dict[str, Kind]:
    """The core's kinds and the platforms'; a name given twice is a programming error."""
    kinds = dict(CORE_KINDS)
    for name, kind in platform_kinds().items():
        if name in kinds:
            raise ValueError(f"job kind {name} is defined twice")
        kinds[name] = kind
    return kinds
