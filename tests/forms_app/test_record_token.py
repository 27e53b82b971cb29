"""A record's token: the waiting page's address, and what an admin pastes into ``test_tree --record``."""

import re
import secrets

import pytest
from django.urls import NoReverseMatch, reverse, set_script_prefix

from forms_app.models import new_record_token, token_url


def test_a_record_token_never_begins_with_a_dash_so_it_passes_as_a_command_line_argument():
    tokens = [new_record_token() for _ in range(2000)]  # the older tokens began with "-" once in 64

    assert not [token for token in tokens if token.startswith("-")]
    assert all(len(token) == 32 and re.fullmatch(r"[A-Za-z0-9_-]+", token) for token in tokens)
    assert len(set(tokens)) == len(tokens)


def test_a_record_s_addresses_are_those_reverse_gives_under_any_prefix():
    tokens = [secrets.token_urlsafe(24) for _ in range(50)] + ["-_-", "a", "0" * 64]
    try:
        for prefix in ("/", "/forms/", "/a b/"):
            set_script_prefix(prefix)
            for token in tokens:
                for name in ("forms_app:record_wait", "forms_app:record_status"):
                    assert token_url(name, token) == reverse(name, kwargs={"token": token})
    finally:
        set_script_prefix("/")
    assert token_url("forms_app:record_wait", "abc").endswith("/r/abc/")


def test_a_token_that_is_not_url_safe_is_refused_as_reverse_refuses_it():
    for token in ("a/b", "a b", "é", "", "a?b"):
        with pytest.raises(NoReverseMatch):
            token_url("forms_app:record_wait", token)
