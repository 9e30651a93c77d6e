"""What every learner page needs from the database besides its order: the brand of the order's
platform source and the published template overrides. Both change only when a marketer saves,
so each process keeps them for `PORTAL_BRANDING_CACHE_SECONDS` (default 5) instead of asking
the database on every page. A save or publish clears the cache of the process that made it at
once; other processes and hosts see it within those seconds. 0 turns the cache off.

Only answers the database gave are kept: a failed lookup is asked again on the next page.

The rendered learner pages are kept here too (`RenderedPages`, used by
`portal.branding.render.render_learner`). Both are cachetools caches behind a lock.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Hashable

from cachetools import LRUCache, TTLCache
from flask import Flask, current_app, has_app_context

EXTENSION = "portal.branding_cache"
KEPT = 256  # brands by platform source, and the overrides: a handful in practice


class TimedCache:
    """Loaded values, each kept for `seconds` (a cachetools TTLCache behind a lock). Two threads
    that miss at once may both load; the later answer wins, and both are correct. A load that
    raises keeps nothing."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        # The timer is looked up on each call, so a test can move the clock (time.monotonic).
        self._entries = (
            TTLCache(KEPT, ttl=seconds, timer=lambda: time.monotonic()) if seconds > 0 else None
        )
        self._lock = threading.Lock()

    def get(self, key: Hashable, load: Callable[[], object]):
        if self._entries is None:
            return load()
        with self._lock:
            value = self._entries.get(key, _MISSING)
        if value is not _MISSING:
            return value
        value = load()
        with self._lock:
            self._entries[key] = value
        return value

    def clear(self) -> None:
        if self._entries is not None:
            with self._lock:
                self._entries.clear()


_MISSING = object()


# Every app's cache in this process (one in production; one per app in the tests), so a write
# made with or without an app context reaches them all.
_caches: weakref.WeakSet[TimedCache] = weakref.WeakSet()


def init_app(app: Flask) -> None:
    app.extensions[EXTENSION] = made = TimedCache(app.config["PORTAL"].branding_cache_seconds)
    _caches.add(made)
    init_pages(app)


_OFF = TimedCache(0)


def cache() -> TimedCache:
    """This app's cache; outside an app (a job on a thread of its own), no caching."""
    if not has_app_context():
        return _OFF
    return current_app.extensions.get(EXTENSION, _OFF)


def forget() -> None:
    """After a write to brands, assignments or overrides: this process reads them afresh."""
    for each in list(_caches):
        each.clear()


# --- rendered learner pages -----------------------------------------------------------------------

PAGES_EXTENSION = "portal.rendered_pages"
PAGES_KEPT = 256


class RenderedPages:
    """The last `size` learner pages rendered in this process (a cachetools LRUCache behind a
    lock), by a digest of everything they were rendered from (template, language, the order's
    columns, the brand, the published overrides' versions, the view's data). A page is the same
    for the same inputs, so there is nothing to expire: a change to any input is a new key, and
    old pages fall off the end. The CSRF token, the one part that differs per learner, is put in
    after the cache (portal.branding.render)."""

    def __init__(self, size: int = PAGES_KEPT):
        self._pages = LRUCache(size)
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> str | None:
        with self._lock:
            return self._pages.get(key)

    def put(self, key: Hashable, page: str) -> None:
        with self._lock:
            self._pages[key] = page

    def clear(self) -> None:
        with self._lock:
            self._pages.clear()

    def __len__(self) -> int:
        return len(self._pages)


def init_pages(app: Flask) -> None:
    """Rendered pages are kept when brands are (PORTAL_BRANDING_CACHE_SECONDS > 0), and not
    in debug mode, where template files change under a running server."""
    if app.config["PORTAL"].branding_cache_seconds > 0 and not app.debug:
        app.extensions[PAGES_EXTENSION] = RenderedPages()


def pages() -> RenderedPages | None:
    if not has_app_context():
        return None
    return current_app.extensions.get(PAGES_EXTENSION)
