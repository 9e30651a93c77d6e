"""The platform interface. A platform is one package (`portal/platforms/<name>/`) that knows how to
tell its originating system that an order was paid (fulfil) or abandoned (cancel), and declares
in a `PlatformSpec` everything else the core needs from it (its blueprint, settings, entry points,
brand source, review page, jobs...). The checkout core calls only this.

Adding a platform means writing such a package and naming it in `portal.platforms.registry`;
the core, the jobs and the webhooks do not change (docs/adding-a-platform.md).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from portal.config import Settings


@dataclass
class Outcome:
    """What the platform answered: where to send the learner next, and a note for the timeline."""

    redirect_url: str | None
    note: str = ""
    detail: dict = field(default_factory=dict)
    # Set when the platform cannot take this news itself and an operator must act (an alert).
    alert: str | None = None


@dataclass(frozen=True)
class CheckoutOptions:
    """How a platform wants the Checkout Session for one of its orders; the defaults suit a
    one-off payment. `start_payment` asks the platform for these, so the core stays generic."""

    tax_included: bool = False  # the platform's amount already includes its tax: quote none
    mode: str = "payment"  # "setup": save a card for later and charge nothing now
    customer: str | None = None  # the Stripe Customer to save the card to
    setup_future_usage: str | None = None  # "off_session": keep the card used to pay
    cancel_url: str | None = None  # where Stripe's "Back" goes, instead of the generic page
    capture_method: str | None = None  # "manual": authorise now, capture later (merchant API)
    incremental_authorization: bool = False  # ask for a hold that can be raised later
    # What Stripe Checkout collects for a business buyer (the merchant API's checkout_options).
    billing_address_collection: str | None = None  # "auto" | "required"
    shipping_countries: tuple[str, ...] = ()  # collect a shipping address in these countries
    tax_id_collection: bool = False  # the buyer's VAT or other tax id
    invoice_creation: bool = False  # a Stripe invoice (PDF) for this one-off payment
    allow_promotion_codes: bool = False  # the buyer may enter a Stripe promotion code
    phone_number_collection: bool = False


class Platform(ABC):
    name: str = ""
    label: str = ""
    # What a full and a partial refund do on the platform, for the console's refund form.
    refund_effects: dict[str, str] = {}  # noqa: RUF012 - read only, replaced per class

    @abstractmethod
    def fulfil(self, order, *, retry: bool = False) -> Outcome:
        """Tell the platform the order is paid. Must treat "already done" as success.

        `retry` is set when an earlier attempt may have reached the platform.
        Raises portal.http.UpstreamError (transient or not) when the platform did not confirm.
        """

    @abstractmethod
    def cancel(self, order) -> Outcome:
        """Tell the platform the learner gave up; returns where to send them."""

    def back_leaves(self, order) -> bool:
        """Whether Stripe's "Back" cancels the order and returns the customer to the platform at
        once (the platform decides what to offer), instead of showing the review page again."""
        return False

    def checkout_options(self, order) -> CheckoutOptions:
        """How to make this order's Checkout Session; may raise portal.checkout.CheckoutError."""
        return CheckoutOptions()

    def payment_failed(self, order, reason: str) -> Outcome:
        """A delayed payment failed after checkout; by default there is nothing to tell."""
        return Outcome(redirect_url=None, note="nothing to report")

    def refund(
        self,
        order,
        amount_minor: int,
        *,
        refunded_at: datetime | None = None,
        refund: dict | None = None,
    ) -> Outcome:
        """Money went back to the learner (`amount_minor` now; `order.amount_refunded_minor` in
        all; the order's state says whether it is all refunded now). `refund`: the refund's `id`,
        `reason` and `source` (console, api, stripe, platform, dispute). By default there is
        nothing to tell."""
        return Outcome(redirect_url=None, note="nothing to report")

    def dispute(self, order, dispute: dict) -> Outcome:
        """A dispute on the order's payment opened (`dispute["outcome"]` is None) or closed
        (`"won"` or `"lost"`; a lost dispute also reaches `refund` as a full refund). `dispute`
        has `id, amount_minor, currency, reason, status, outcome`. By default nothing to tell."""
        return Outcome(redirect_url=None, note="nothing to report")


def build_platforms(settings: Settings, recorder) -> dict[str, Platform]:
    from portal.platforms import registry

    return {spec.name: spec.factory(settings, recorder) for spec in registry.installed()}


@dataclass(frozen=True)
class PlatformSpec:
    """What a platform package declares to the core (its `spec.py` has one, `SPEC`). The core's
    lists (blueprints, CSRF exemptions, rate-limited entry points, no-store pages, settings and
    their masking, sandbox defaults, brands, review pages, preview samples, job kinds) are built
    from these; `portal.platforms.registry` lists the installed ones."""

    name: str  # `orders.platform`; also the `PORTAL_<NAME>_RECEIPTS` setting's prefix
    label: str  # shown to operators
    factory: Callable[[dict, object], Platform]  # (settings, recorder) -> the Platform
    # The package's `portal.config.Setting`s (secret=True: masked in logs and on the console),
    # its receipt sender among them (`PORTAL_<NAME>_RECEIPTS`, portal/receipts.py).
    settings: tuple = ()
    blueprint: object = None  # a flask.Blueprint with the platform's entry URL and pages, or None
    url_prefix: str | None = None  # where the blueprint is mounted (None: its rules are absolute)
    # Why the blueprint takes requests without the portal's CSRF token (None: it does not).
    csrf_exempt: str | None = None
    entry_endpoints: tuple[str, ...] = ()  # the learner entry points: rate limited per client
    learner_paths: tuple[str, ...] = ()  # path prefixes of learner pages: never cached (no-store)
    # (settings, environ, instance_path) -> None: fill the sandbox's values (PORTAL_SANDBOX=1).
    sandbox_defaults: Callable[[dict, Mapping, str], None] | None = None
    sandbox_stand_in: str | None = None  # the module of its stand-in under portal/sandbox/
    # The brand source of an order (e.g. an institution id), or None: one source per deployment.
    brand_source: Callable[[object], str | None] | None = None
    brand_source_help: str = ""  # how the console's brand assignment form names such a source
    review_template: str = "review.html"  # the learner template of its review page
    # (order, *, cancelled, status) -> response: its own review page (None: the common one).
    render_review: Callable | None = None
    # How the platform's amount relates to tax: "quoted" (Stripe Tax or the portal's rates
    # on top), "added" or "included" (the platform's own tax, shown from its breakdown).
    tax: str = "quoted"
    preview_samples: Callable[[], list] | None = None  # console previews of its templates
    job_kinds: Mapping[str, object] = field(default_factory=dict)  # {kind: portal.jobs.Kind}
