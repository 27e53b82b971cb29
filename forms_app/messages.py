"""The waiting page's closing words: the admin's message templates, rendered over a record.

No models here: forms_app.models (Form.waiting_outcome) and forms_app.waiting both use it.
"""

import functools

from django.template import Context, Engine, TemplateSyntaxError

_page_engine = Engine(builtins=["django.template.defaulttags", "django.template.defaultfilters"])


def render_message(template_text, record, *, handled_failures=()):
    """The admin's message, rendered over the record with autoescaping (submitted values are escaped).

    It sees ``record``, ``flags`` and ``handled_failures``: the steps that failed and whose error
    branch took care of it (each with its ``label`` and ``name``; empty when none did). ``record``
    is anything with ``data`` and ``flags`` (a Record, or a test run's scratch copy of one).
    """
    try:
        template = _compiled(template_text)
    except TemplateSyntaxError:
        return template_text
    return template.render(
        Context({"record": record.data, "flags": record.flags, "handled_failures": list(handled_failures)})
    )


@functools.lru_cache(maxsize=256)
def _compiled(template_text):
    """A message template, compiled once per process (every poll of a finished run renders it)."""
    return _page_engine.from_string(template_text)
