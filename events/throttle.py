"""Per-client throttles: how many times one client address may do something within a window.

Two use it: the public form's POSTs (``forms_app.views``) and the API's failed authentications
(``events.api``). Each count lives in Django's default cache under (throttle, client address,
window); windows are fixed and aligned to the clock, so a refused client is told exactly when
it may try again (``Retry-After``). Limits are settings, read at each call; a limit of 0 turns
a throttle off.

With the default cache (local memory) every web process counts on its own, so N processes let a
client through up to N times a limit; ``DJANGO_CACHE=database`` counts once for all processes and
machines (config/settings.py). A shared cache's increment may miss a count under a race: the
limits are a brake on floods, not an exact quota.
"""

import hashlib
import math
import time
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache


def client_address(request):
    """The client's address: the connection's, or the one the nearest trusted proxy saw.

    Behind ``EVENTS_TRUSTED_PROXIES`` reverse proxies that each append the address they saw to
    ``X-Forwarded-For``, the client is the entry that many places from the end: entries further
    left were written by the client itself and prove nothing.
    """
    proxies = settings.EVENTS_TRUSTED_PROXIES
    forwarded = [part.strip() for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if part.strip()]
    if proxies > 0 and forwarded:
        return forwarded[-min(proxies, len(forwarded))]
    return request.META.get("REMOTE_ADDR", "")


@dataclass(frozen=True)
class Throttle:
    """One throttle: ``name`` keys its counts; ``limit_setting`` and ``window_setting`` name its settings."""

    name: str
    limit_setting: str
    window_setting: str

    def hit(self, request):
        """Count one attempt of the client; return the seconds it must wait when this one is over the limit, else 0."""
        limit, window = self._limits()
        if limit <= 0:
            return 0
        key, wait = self._key(request, window)
        return wait if self._increment(key, wait) > limit else 0

    def count(self, request):
        """Count one (failed) attempt of the client, without refusing it."""
        limit, window = self._limits()
        if limit > 0:
            self._increment(*self._key(request, window))

    def wait(self, request):
        """The seconds the client must wait when it has used up the limit in this window, else 0. Counts nothing."""
        limit, window = self._limits()
        if limit <= 0:
            return 0
        key, wait = self._key(request, window)
        return wait if (cache.get(key) or 0) >= limit else 0

    def _limits(self):
        return getattr(settings, self.limit_setting), max(1, getattr(settings, self.window_setting))

    def _key(self, request, window):
        """The cache key of the client's count in the current window, and the whole seconds left in it."""
        now = time.time()
        index = int(now // window)
        # Hashed: a forwarded address is text the client chose, and cache keys have rules (memcached's).
        client = hashlib.sha256(client_address(request).encode(errors="replace")).hexdigest()[:32]
        return f"events:throttle:{self.name}:{window}:{index}:{client}", max(1, math.ceil((index + 1) * window - now))

    @staticmethod
    def _increment(key, seconds_left):
        if cache.add(key, 1, timeout=seconds_left + 1):
            return 1
        try:
            return cache.incr(key)
        except ValueError:  # expired between the two calls: this is the first of a new count
            cache.set(key, 1, timeout=seconds_left + 1)
            return 1
