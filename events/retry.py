"""How a failed step is tried again: one value, parsed, validated, shown and applied from here."""

import random
from dataclasses import dataclass, field

MAX_ATTEMPTS = 100
MAX_BACKOFF_SECONDS = 365 * 24 * 3600  # a year
JITTER = 0.5  # a wait is drawn from [longest × (1 − JITTER), longest]


@dataclass(frozen=True)
class RetryPolicy:
    """A node's retries: how many attempts, how long to wait between them, which errors not to retry.

    The wait before attempt n + 1 is ``backoff_seconds × 2^(n-1)``, at most
    ``backoff_max_seconds``, shortened at random by up to ``jitter`` of itself so
    that steps failing together do not come back together. An error that cannot
    succeed on a retry fails at once: one its node type says so of
    (``NodeError(..., retryable=False)``: an address the HTTP action must not
    reach, a field the form does not have), or one whose message starts with a
    text listed in ``non_retryable``.
    """

    attempts: int = 1
    backoff_seconds: int = 10
    backoff_max_seconds: int = 600
    non_retryable: tuple = field(default=())
    jitter: float = JITTER

    # How it is stored: the Node's columns, and the "retry" dict of a run's snapshot and of the form file.
    NODE_FIELDS = {
        "attempts": "max_attempts",
        "backoff_seconds": "retry_backoff_seconds",
        "backoff_max_seconds": "retry_backoff_max_seconds",
        "non_retryable": "retry_non_retryable",
    }
    DOCUMENT_KEYS = {
        "attempts": "max_attempts",
        "backoff_seconds": "backoff_seconds",
        "backoff_max_seconds": "backoff_max_seconds",
        "non_retryable": "non_retryable",
    }

    @classmethod
    def of_node(cls, node):
        """A Node's policy (from its columns)."""
        return cls(**{attr: _tuple(getattr(node, column)) for attr, column in cls.NODE_FIELDS.items()})

    def node_fields(self):
        """The Node columns that store this policy."""
        return {column: _list(getattr(self, attr)) for attr, column in self.NODE_FIELDS.items()}

    @classmethod
    def of_document(cls, retry):
        """The policy of a snapshot's or a form file's ``retry`` dict (left-out keys take the defaults)."""
        retry = retry or {}
        return cls(**{attr: _tuple(retry[key]) for attr, key in cls.DOCUMENT_KEYS.items() if key in retry})

    @classmethod
    def attempts_of_document(cls, retry):
        """``of_document(retry).attempts``, without building the policy (every task of every submit)."""
        return retry["max_attempts"] if retry and "max_attempts" in retry else cls.attempts

    def as_document(self):
        """The ``retry`` dict of a snapshot and of the form file; ``non_retryable`` only when there are some."""
        document = {key: _list(getattr(self, attr)) for attr, key in self.DOCUMENT_KEYS.items()}
        if not document["non_retryable"]:
            del document["non_retryable"]
        return document

    def problems(self):
        """{document key: what is wrong}, empty when the policy is valid."""
        problems = {}
        if not isinstance(self.attempts, int) or not 1 <= self.attempts <= MAX_ATTEMPTS:
            problems["max_attempts"] = f"must be 1 to {MAX_ATTEMPTS} (1 = no retry)"
        for attr in ("backoff_seconds", "backoff_max_seconds"):
            value = getattr(self, attr)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_BACKOFF_SECONDS:
                problems[attr] = f"must be 0 to {MAX_BACKOFF_SECONDS} seconds (a year)"
        if not problems and self.backoff_max_seconds < self.backoff_seconds:
            problems["backoff_max_seconds"] = f"must be at least backoff_seconds ({self.backoff_seconds})"
        if not all(isinstance(text, str) and text.strip() for text in self.non_retryable):
            problems["non_retryable"] = "must be a list of texts (the beginnings of error messages)"
        return problems

    def delay_bounds(self, attempt):
        """The (shortest, longest) wait in seconds before the attempt after ``attempt``."""
        longest = min(self.backoff_max_seconds, self.backoff_seconds * (2 ** (attempt - 1)))
        return longest * (1 - self.jitter), longest

    def next_delay(self, attempt):
        return random.uniform(*self.delay_bounds(attempt))

    def retries(self, *, attempt, error, retryable=True):
        """Whether a step that failed its ``attempt`` with ``error`` is tried again."""
        if attempt >= self.attempts or not retryable:
            return False
        return not any(error.startswith(text) for text in self.non_retryable)

    def describe(self):
        """“up to 3 attempts, backoff 10 s doubling up to 600 s”, or "" without retries."""
        if self.attempts <= 1:
            return ""
        text = (
            f"up to {self.attempts} attempts, backoff {self.backoff_seconds} s "
            f"doubling up to {self.backoff_max_seconds} s"
        )
        if self.non_retryable:
            text += "; not retried: " + ", ".join(f"“{prefix}…”" for prefix in self.non_retryable)
        return text


def _tuple(value):
    return tuple(value) if isinstance(value, list) else value


def _list(value):
    return list(value) if isinstance(value, tuple) else value
