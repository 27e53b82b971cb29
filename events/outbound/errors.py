"""What an outbound request can fail with. No httpx here: these are caught where httpx is not loaded."""


class OutboundError(Exception):
    """The request could not be made or its answer could not be read; the message says why, for admins."""


class DestinationRefused(OutboundError):
    """The URL is not one we may call: not http(s), malformed, or a host with a blocked address.

    Trying again cannot help: the same URL is refused the same way.
    """


class ResponseTooLarge(OutboundError):
    """The answer is larger than the cap, counted before and after any content decoding."""
