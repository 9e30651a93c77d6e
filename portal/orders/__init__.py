"""The order store: every read, write, compare-and-set, lock and cache of orders and their
timeline. Services (checkout, fulfilment, refunds, disputes, the merchant API, the console) use
these functions and never write SQL against `orders` themselves.

Reads (each answers a new `Order` of the caller's own, made from the row as read):
- `get(reference)`: the order, read now; raises `NotFound`.
- `by_id(order_id)`: a job's or an audit entry's order, or None.
- `refresh(order)`: the same order as it is now.
- `find(platform, platform_ref)`: a platform's purchase, or None.
- `find_for_learner(platform, learner_key)`: the learner's current order for the same purchase.
- `find_for_session(stripe_session)`: the order a Checkout Session belongs to, or None.
- `find_for_payment_intent(payment_intent)`: the order a PaymentIntent paid, or None.
- `where(*conditions, order_by=, limit=)`: the orders a sweeping job looks at.
- `view(reference)`: the read for learner pages that only show an order; may be served from
  this process's kept orders while the row has not changed (`cache`), and carries the row's
  `row_version` for the page cache. Raises `NotFound`.

Writes:
- `create(values)`: a new order and its "order opened" event, committed together.
- `move(order, event, **values)`: the compare-and-set of the state machine declared in
  `states.MOVES`; the allowed start states come from the table. Returns the moved order, or None
  when another request moved it first.
- `update(order, where=..., **values)`: columns other than the state.
- `lock(session, order_id)`: the order, locked for the rest of `session`'s transaction.
- `timeline.record(order_id, kind, message, ...)`: append to the order's timeline (`timeline`
  also builds events for `move(..., before=[...])`).

Writes take `session=` to join the caller's transaction (an ORM session from
`db.transaction()` or a Core connection); without it each commits on its own.
`init_app(app)` sets up the kept orders of `view`.
"""

from portal.orders import states, timeline
from portal.orders.cache import init_app
from portal.orders.store import (
    NotFound,
    UnknownEvent,
    by_id,
    create,
    find,
    find_for_learner,
    find_for_payment_intent,
    find_for_session,
    get,
    lock,
    move,
    refresh,
    update,
    view,
    where,
)

__all__ = [
    "NotFound",
    "UnknownEvent",
    "by_id",
    "create",
    "find",
    "find_for_learner",
    "find_for_payment_intent",
    "find_for_session",
    "get",
    "init_app",
    "lock",
    "move",
    "refresh",
    "states",
    "timeline",
    "update",
    "view",
    "where",
]
