"""A form's definition as a request reads it: once, in one statement written once as SQL.

A submit needs the published form, its fields and its tree's live version; a queryset for each
cost more to compile than to run (``events.hotsql``). ``published_form`` gives the same objects:
the form with its fields prefetched (``form.fields.all()`` reads nothing more) and the live version.

The statement runs on every request (an admin's change is seen by the next submit), but what it
read is made into objects once: while a form's rows are the same as last time, this process gives
the objects it built then, and the form class built from them (``submission_class``). Turning the
rows into instances, decoding the tree's snapshot and building the form's class took a quarter of
a submit's instructions. The objects are shared by the requests that follow: nothing changes them
(a submit reads its definition; a run's snapshot is read, never written, by the walk).
"""

from django.db import connection
from django.http import Http404
from django.utils.translation import gettext as _

from events.hotsql import Columns, HeadAndRows, split, table
from events.models import RECORD_UPDATE, TreeVersion

from .builder import build_form_class
from .models import Field, Form

FORM_COLUMNS = Columns(Form, "f")
VERSION_COLUMNS = Columns(TreeVersion, "v")
FIELD_COLUMNS = Columns(Field, "fd")

# The published form of a slug and the latest published version of its submission tree (NULLs before
# one), then its fields: one statement.
FORM_READ = HeadAndRows(
    (FORM_COLUMNS, VERSION_COLUMNS),
    lambda c: (
        f"FROM {table(Form, c)} f"
        f" LEFT OUTER JOIN {table(TreeVersion, c)} v ON v.id = ("
        f"SELECT latest.id FROM {table(TreeVersion, c)} latest"
        " WHERE latest.form_id = f.id AND latest.event = %s ORDER BY latest.number DESC LIMIT 1)"
        " WHERE f.slug = %s AND f.is_published = %s"
    ),
    (FIELD_COLUMNS,),
    lambda c: (
        f"FROM {table(Field, c)} fd INNER JOIN {table(Form, c)} f ON f.id = fd.form_id"
        " WHERE f.slug = %s AND f.is_published = %s"
    ),
)


# slug → (the rows last read for it, what was built from them): one entry per published form.
_built = {}


def published_form(slug):
    """(the published form ``slug`` with its fields prefetched, its live TreeVersion or None); Http404 if none.

    Built again only when the statement's rows differ from those of the last call for ``slug``.
    """
    head, field_rows = FORM_READ.read(connection, [RECORD_UPDATE, slug, True, slug, True])
    if head is None:
        _built.pop(slug, None)
        raise Http404(_("No such form."))
    rows = (connection.alias, connection.vendor, head, tuple(field_rows))
    known = _built.get(slug)
    if known is not None and known[0] == rows:
        return known[1]
    built = _built[slug] = (rows, _definition(head, field_rows))
    return built[1]


def submission_class(form):
    """``build_form_class(form)``, once per form instance (``published_form`` gives the same one while the
    form's rows stay the same)."""
    found = form.__dict__.get("_submission_class")
    if found is None:
        found = form._submission_class = build_form_class(form)
    return found


def _definition(head, field_rows):
    form_row, version_row = split(head, FORM_COLUMNS, VERSION_COLUMNS)
    form = FORM_COLUMNS.load(form_row, connection)
    version = VERSION_COLUMNS.load(version_row, connection)
    if version is not None:
        TreeVersion.form.field.set_cached_value(version, form)
    fields = sorted(
        (FIELD_COLUMNS.load(row, connection) for row in field_rows),
        key=lambda field: (field.position, field.id),  # Field.Meta.ordering
    )
    for field in fields:
        Field.form.field.set_cached_value(field, form)
    # What prefetch_related("fields") leaves: form.fields.all() is a queryset holding these, read nothing more.
    prefetched = form.fields.get_queryset()
    prefetched._result_cache, prefetched._prefetch_done = fields, True
    form._prefetched_objects_cache = {Form.fields.rel.cache_name: prefetched}
    return form, version
