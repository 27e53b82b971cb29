"""A record's token: the waiting page's address, and what an admin pastes into ``test_tree --record``."""

import re

from forms_app.models import new_record_token


def test_a_record_token_never_begins_with_a_dash_so_it_passes_as_a_command_line_argument():
    tokens = [new_record_token() for _ in range(2000)]  # the older tokens began with "-" once in 64

    assert not [token for token in tokens if token.startswith("-")]
    assert all(len(token) == 32 and re.fullmatch(r"[A-Za-z0-9_-]+", token) for token in tokens)
    assert len(set(tokens)) == len(tokens)
