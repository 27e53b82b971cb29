"""Outbound HTTP: the one way this project calls other systems.

Every request made through ``request()`` (and any client built on
``transport.GuardedTransport``) gets the same treatment, whichever node sends it:

- ``guard``: the destination is resolved and checked before connecting (no loopback,
  private, link-local or metadata addresses unless EVENTS_HTTP_ALLOWED_HOSTS names the
  host), and the connection is pinned to the checked address; every redirect is checked
  the same way;
- ``transport``: ``Accept-Encoding: identity``, answers capped at 1 MiB counted as they
  travel and again as decoded, the whole answer within the read timeout, no proxies;
- ``signing``: with EVENTS_HTTP_SIGNING_SECRET set, Standard Webhooks signatures
  (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``) and ``Idempotency-Key``.

This package does not import httpx: ``request()`` loads it when a request is made, so a
web worker that never calls out never loads it.
"""

from .errors import DestinationRefused, OutboundError, ResponseTooLarge

__all__ = ["DestinationRefused", "OutboundError", "ResponseTooLarge", "request"]


def request(method, url, **options):
    """Send an outbound request and return its ``transport.Answer``; see ``transport.request`` for the options.

    Raises OutboundError (DestinationRefused when the URL may not be called).
    """
    from .transport import request as send  # loads httpx: only when something is sent

    return send(method, url, **options)
