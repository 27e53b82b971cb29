"""Signed requests, the Standard Webhooks way (https://www.standardwebhooks.com). No httpx here.

A signed request carries three headers:

- ``webhook-id``: the message id, the same for every attempt of the same message (for
  an ``http_request`` step: its task id, as in ``Idempotency-Key``);
- ``webhook-timestamp``: when this attempt was signed, in whole Unix seconds;
- ``webhook-signature``: ``v1,<base64 of HMAC-SHA256("{id}.{timestamp}.{body}")>``, the
  body as the exact bytes sent.

The id and the time are inside the signature, so a receiver that refuses old timestamps
and remembers the ids it has seen refuses replays.

The secret (``EVENTS_HTTP_SIGNING_SECRET``) is either ``whsec_`` followed by base64 (the
Standard Webhooks form, what its libraries expect: the key is the decoded bytes) or any
other text (the key is its UTF-8 bytes; for a Standard Webhooks library give it
``"whsec_" + base64(secret)``).
"""

import base64
import binascii
import hashlib
import hmac
import time
import uuid

SECRET_PREFIX = "whsec_"


def signing_key(secret):
    """The HMAC key of a secret: the decoded bytes of ``whsec_<base64>``, else the UTF-8 bytes of the text.

    Raises ValueError for a ``whsec_`` secret whose rest is not base64.
    """
    if isinstance(secret, bytes):
        return secret
    if secret.startswith(SECRET_PREFIX):
        try:
            return base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
        except binascii.Error:
            raise ValueError("a secret that starts with “whsec_” must go on in base64") from None
    return secret.encode()


def new_message_id():
    """A message id for a request that has none of its own."""
    return f"msg_{uuid.uuid4().hex}"


def signature(*, key, message_id, timestamp, body):
    """``v1,<base64>``: HMAC-SHA256 with ``key`` of ``{message_id}.{timestamp}.`` followed by the body bytes."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode("ascii")


def webhook_headers(*, key, message_id, body, timestamp=None):
    """The three Standard Webhooks headers of one attempt (``timestamp`` defaults to now)."""
    if "." in message_id:  # the signed text joins id, time and body with dots
        raise ValueError(f"a message id cannot hold a dot: “{message_id}”")
    timestamp = int(time.time()) if timestamp is None else int(timestamp)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(key=key, message_id=message_id, timestamp=timestamp, body=body),
    }


def body_signature(*, secret, body):
    """``sha256=<hex>``: the older ``X-Signature``, HMAC-SHA256 of the body alone keyed with the secret's UTF-8 bytes.

    Kept for receivers written against it; it signs neither a time nor an id, so it
    cannot refuse a replay: new receivers check ``webhook-signature``.
    """
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
