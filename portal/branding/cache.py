"""What every learner page needs from the database besides its order: the brand of the order's
platform source and the published template overrides. Both change only when a marketer saves,
so each process keeps them for `PORTAL_BRANDING_CACHE_SECONDS` (default 5) instead of asking
the database on every page. A save or publish clears the cache of the process that made it at
once; other processes and hosts see it within those seconds. 0 turns the cache off.

Only answers the database gave are kept: a failed lookup is asked again on the next page.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable

from flask import Flask, current_app, has_app_context

EXTENSION = "portal.branding_cache"


class TimedCache:
    """A small map of loaded values, each kept for `seconds`. Thread-safe: two threads that miss
    at once may both load; the later answer wins, and both are correct."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._entries: dict[Hashable, tuple[float, object]] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, load: Callable[[], object]):
        if self.seconds <= 0:
            return load()
        now = time.monotonic()
        entry = self._entries.get(key)
        if entry is not None and now - entry[0] < self.seconds:
            return entry[1]
        value = load()
        with self._lock:
            self._entries[key] = (now, value)
        return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


# Every app's cache in this process (one in production; one per app in the tests), so a write
# made with or without an app context reaches them all.
_caches: weakref.WeakSet[TimedCache] = weakref.WeakSet()


def init_app(app: Flask) -> None:
    app.extensions[EXTENSION] = made = TimedCache(app.config["PORTAL"]["BRANDING_CACHE_SECONDS"])
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


class Recent:
    """The last `size` values used in this process, by key: a lookup makes a value the newest,
    and the oldest falls off the end. Thread-safe."""

    def __init__(self, size: int):
        self.size = size
        self._values: OrderedDict[Hashable, object] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable):
        with self._lock:
            value = self._values.get(key)
            if value is not None:
                self._values.move_to_end(key)
            return value

    def put(self, key: Hashable, value) -> None:
        with self._lock:
            self._values[key] = value
            self._values.move_to_end(key)
            while len(self._values) > self.size:
                self._values.popitem(last=False)

    def discard(self, key: Hashable) -> None:
        with self._lock:
            self._values.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._values.clear()

    def __len__(self) -> int:
        return len(self._values)


class RenderedPages(Recent):
    """The last PAGES_KEPT learner pages rendered in this process, by a digest of everything
    they were rendered from (template, language, the order's columns, the brand, the published
    overrides' versions, the view's data). A page is the same for the same inputs, so there is
    nothing to expire: a change to any input is a new key, and old pages fall off the end.
    The CSRF token, the one part that differs per learner, is put in after the cache."""

    def __init__(self, size: int = PAGES_KEPT):
        super().__init__(size)


def init_pages(app: Flask) -> None:
    """Rendered pages are kept when brands are (PORTAL_BRANDING_CACHE_SECONDS > 0), and not
    in debug mode, where template files change under a running server."""
    if app.config["PORTAL"]["BRANDING_CACHE_SECONDS"] > 0 and not app.debug:
        app.extensions[PAGES_EXTENSION] = RenderedPages()


def pages() -> RenderedPages | None:
    if not has_app_context():
        return None
    return current_app.extensions.get(PAGES_EXTENSION)
