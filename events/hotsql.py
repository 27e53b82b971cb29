"""Hot statements written once as SQL; the rows they read loaded as the ORM loads them.

On the few paths that run hundreds of times a second (the waiting page's poll, a
submit's form definition) compiling a queryset costs more than running it: a
poll's two querysets took half of its time in Django's SQL compiler. A
``Columns`` is one model's columns under a table alias, from the model's own
metadata: its SQL is built once, and ``load`` turns a row's slice into a model
instance with the conversions the ORM applies (the backend's and the fields'
``from_db_value``), so what the caller gets is what a queryset would give.

Write the statement with ``Columns.sql`` and ``table``, run it with ``rows``,
and prepare parameters with ``db_value``. Anything not on such a path uses the ORM.
"""

import datetime
import functools
import json
import uuid
from contextlib import contextmanager
from functools import cached_property

from django.conf import settings
from django.db import connections, models, transaction
from django.db.models import signals
from django.db.models.base import ModelState
from django.db.models.fields import AutoFieldMixin
from django.db.models.fields.related_descriptors import ForeignKeyDeferredAttribute
from django.db.models.query_utils import DeferredAttribute


def _wrapper(connection):
    """The database wrapper itself: ``django.db.connection`` is a proxy that looks it up on every attribute."""
    return connections[connection.alias]


def table(model, connection):
    """The model's table name, quoted for ``connection``."""
    return connection.ops.quote_name(model._meta.db_table)


def db_value(model, name, value, connection):
    """``value`` as a parameter compared with the model's field ``name`` (a UUID on SQLite is its hex, ...)."""
    connection = _wrapper(connection)
    field = model._meta.get_field(name)
    target = field.target_field if field.is_relation else field
    return target.get_db_prep_value(value, connection, prepared=False)


def rows(connection, sql, params):
    """Every row of one statement, as tuples."""
    connection = _wrapper(connection)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


class Columns:
    """The columns of ``model`` (all concrete ones, or those named) under the table alias ``alias``."""

    def __init__(self, model, alias, names=None):
        self.model = model
        self.alias = alias
        meta = model._meta
        self.fields = meta.concrete_fields if names is None else [meta.get_field(name) for name in names]
        self.attnames = [field.attname for field in self.fields]

    def __len__(self):
        return len(self.fields)

    def sql(self, connection):
        """``alias."column", ...``, for a SELECT list."""
        key = (connection.alias, connection.vendor)
        built = self.__dict__.setdefault("_sql", {})
        if key not in built:
            quote = connection.ops.quote_name
            built[key] = ", ".join(f"{quote(self.alias)}.{quote(field.column)}" for field in self.fields)
        return built[key]

    def values(self, row, connection):
        """The row's values converted as the ORM converts them (datetimes, UUIDs, JSON, ...)."""
        connection = _wrapper(connection)
        converters = self._converters(connection)
        converted = list(row)
        for index, (expression, functions) in converters:
            value = converted[index]
            for function in functions:
                value = function(value, expression, connection)
            converted[index] = value
        return converted

    def load(self, row, connection):
        """A model instance from the row (None when its primary key is NULL: a LEFT JOIN found nothing).

        The columns must include the primary key; fields not among them are deferred, as with ``only()``.
        """
        connection = _wrapper(connection)
        if row[self._pk_index] is None:
            return None
        return self.model.from_db(connection.alias, self.attnames, self.values(row, connection))

    @cached_property
    def _pk_index(self):
        return self.fields.index(self.model._meta.pk)

    def _converters(self, connection):
        # Per backend (the functions are the backend's and the fields' own); computed once.
        key = (connection.alias, connection.vendor)
        cache = self.__dict__.setdefault("_converter_cache", {})
        if key not in cache:
            found = []
            for index, field in enumerate(self.fields):
                expression = field.get_col(self.alias)
                functions = connection.ops.get_db_converters(expression) + expression.get_db_converters(connection)
                if functions:
                    found.append((index, (expression, functions)))
            cache[key] = found
        return cache[key]


def split(row, *parts):
    """The row cut into consecutive slices, one per ``Columns`` in ``parts``."""
    start = 0
    for columns in parts:
        yield row[start : start + len(columns)]
        start += len(columns)


class Statement:
    """SQL built once per database backend by ``build(connection)``: a hot read's text is not rebuilt per call."""

    def __init__(self, build):
        self.build = build
        self._built = {}

    def sql(self, connection):
        connection = _wrapper(connection)
        key = (connection.alias, connection.vendor)
        if key not in self._built:
            self._built[key] = self.build(connection)
        return self._built[key]

    def rows(self, connection, params):
        """Every row of the statement with ``params``, as tuples."""
        connection = _wrapper(connection)
        return rows(connection, self.sql(connection), params)


class HeadAndRows(Statement):
    """A head row and the rows under it (a run and its tasks, a form and its fields) in one statement.

    ``head`` and ``rows`` are tuples of ``Columns``; ``head_from`` and ``rows_from`` build the rest of
    each half (``FROM ... WHERE ...``) for a connection. The halves are joined by ``UNION ALL``, each row
    marked with its half and NULL in the other half's columns: one round trip instead of two.
    ``read`` gives (the head row's values or None, the other rows' values), unconverted, in the order
    of the columns, as ``split`` cuts them.
    """

    def __init__(self, head, head_from, rows, rows_from):
        self.head = head
        self.head_width, self.rows_width = sum(map(len, head)), sum(map(len, rows))
        super().__init__(
            lambda connection: (
                f"SELECT 0, {', '.join(columns.sql(connection) for columns in head)}, {_nulls(self.rows_width)}"
                f" {head_from(connection)}"
                f" UNION ALL SELECT 1, {_nulls(self.head_width)},"
                f" {', '.join(columns.sql(connection) for columns in rows)} {rows_from(connection)}"
            )
        )

    def read(self, connection, params):
        head, rows = None, []
        for row in self.rows(connection, params):
            if row[0] == 0:
                head = row[1 : 1 + self.head_width]
            else:
                rows.append(row[1 + self.head_width :])
        return head, rows


def _nulls(count):
    return ", ".join(["NULL"] * count)


def update_statement(model, connection, changes, *, where, params, increment=(), computed=None):
    """The SQL and parameters of ``update`` (to run as they are, or to embed: a PostgreSQL ``WITH``)."""
    connection = _wrapper(connection)
    quote = connection.ops.quote_name
    meta = model._meta
    assignments, values = [], []
    for name, value in changes.items():
        field = meta.get_field(name)
        assignments.append(f"{quote(field.column)} = %s")
        values.append(field.get_db_prep_save(value, connection))
    for name, (expression, expression_params) in (computed or {}).items():
        assignments.append(f"{quote(meta.get_field(name).column)} = {expression}")
        values.extend(expression_params)
    for name in increment:
        column = quote(meta.get_field(name).column)
        assignments.append(f"{column} = {column} + 1")
    return f"UPDATE {table(model, connection)} SET {', '.join(assignments)} WHERE {where}", [*values, *params]


def update(model, connection, changes, *, where, params, increment=(), computed=None, later_row=None):
    """``UPDATE`` the model's table: each field of ``changes`` set (its value prepared as the ORM saves it),
    each field of ``computed`` set to an SQL expression (``{name: (sql, params)}``), each field of
    ``increment`` plus one, in the rows that ``where`` (SQL on the table's own columns, with ``params``)
    selects. Returns how many rows changed. As ``QuerySet.update``: no signals, no ``save()``.
    ``later_row``: the key of the one row it changes, when nobody needs the count: the update may then
    go with a later statement of the transaction (``later``), and None is returned.
    """
    connection = _wrapper(connection)
    sql, values = update_statement(
        model, connection, changes, where=where, params=params, increment=increment, computed=computed
    )
    if later_row is not None and later(connection, sql, values, (model, later_row)):
        return None
    with connection.cursor() as cursor:
        cursor.execute(sql, values)
        return cursor.rowcount


def insert(objs, connection):
    """``INSERT`` unsaved model instances (all of one model), as ``bulk_create`` does: no signals, no ``save()``.

    Each field's ``pre_save`` runs (an ``auto_now_add`` time is taken once: every row of one insert has
    the same) and its value is prepared as the ORM saves it; a primary key left to the database (an
    auto-increment) is read back into each instance. Rows go in as few statements as the backend's
    parameter limit allows. Returns ``objs``, now saved.
    """
    connection = _wrapper(connection)
    if not objs:
        return objs
    model = type(objs[0])
    pk = model._meta.pk
    read_back = pk.db_returning and getattr(objs[0], pk.attname) is None
    fields, savers, _, _, _ = _insert_plan(model, read_back, connection)
    _stamp(objs, fields, savers)
    _write(model, objs, _row_values(objs, fields, savers), read_back, connection)
    return objs


def insert_rows(rows, connection):
    """``INSERT`` the rows a ``Rows`` gave (``Rows.row``), all of one model, as ``insert`` writes instances."""
    connection = _wrapper(connection)
    if rows:
        _write(rows[0].model, (), [value for row in rows for value in row.values], False, connection)


def _write(model, objs, values, read_back, connection):
    """Send the prepared ``values`` (a row after another, the fields of ``_insert_plan``); ``objs`` (none for
    ``insert_rows``) are the instances they came from, saved once they are in."""
    fields, _, head, row, returning = _insert_plan(model, read_back, connection)
    pk, width = model._meta.pk, len(fields)
    batch = getattr(connection, "_hotsql_batch", None)
    if batch is not None:
        batch.add(objs, pk, fields, read_back, values)
        return
    if connection.vendor == "sqlite" and not read_back and len(values) > width:
        # One row's statement for each row: SQLite runs it as fast as one of many rows, and Django's
        # rewrite of every %s into ? (a regular expression over the text) is done on one row's text,
        # not on all of them (72 µs for ten task rows of 32 columns, 15 for one).
        # In autocommit each row would commit on its own: all or none, as one statement of many rows.
        with transaction.atomic(using=connection.alias, savepoint=False), connection.cursor() as cursor:
            cursor.executemany(head + row, [values[start : start + width] for start in range(0, len(values), width)])
    else:
        count = len(values) // width
        size = max(connection.ops.bulk_batch_size(fields, range(count)), 1) if count > 1 else 1
        with connection.cursor() as cursor:
            for start in range(0, count, size):
                chunk = values[start * width : (start + size) * width]
                cursor.execute(head + ", ".join([row] * (len(chunk) // width)) + returning, chunk)
                if read_back:
                    for obj, (key,) in zip(objs[start : start + size], cursor.fetchall(), strict=True):
                        setattr(obj, pk.attname, key)
    for obj in objs:
        obj._state.adding, obj._state.db = False, connection.alias


class Rows:
    """Rows of one model alike but for a few fields: the others' values prepared once, as ``insert`` would.

    Made from unsaved instances (``objs``, of one model); ``row(i, values)`` is the row of ``objs[i]``
    with the fields of ``values`` ({attname: value}, among ``varying``) set, for ``insert_rows``. A
    field whose ``pre_save`` gives a time (``auto_now_add``) or is not a plain read must be among
    ``varying``: a prepared row keeps the values it was made with. (A run's first tasks are the same
    rows for every run of one tree version, but for their ids, run and times: ``engine.runs``.)
    """

    def __init__(self, objs, varying, connection):
        connection = _wrapper(connection)
        self.model = type(objs[0])
        fields, savers, _, _, _ = _insert_plan(self.model, False, connection)
        self.columns = {}
        for index, (field, (prepare, keeps_none, plain, _)) in enumerate(zip(fields, savers, strict=True)):
            if field.attname in varying:
                self.columns[field.attname] = (index, prepare, keeps_none)
            elif not plain:
                raise ValueError(f"{self.model.__name__}.{field.attname}: its pre_save is not a plain read; vary it")
            elif field.has_default() and callable(field.default) and field.get_default() != field.get_default():
                # A default drawn afresh for each instance (a token, a key) would be the same in every row.
                raise ValueError(f"{self.model.__name__}.{field.attname}: its default differs per instance; vary it")
        if set(varying) - self.columns.keys():
            raise ValueError(f"{self.model.__name__} has no such fields: {sorted(set(varying) - self.columns.keys())}")
        values, width = _row_values(objs, fields, savers), len(fields)
        self.templates = [values[start : start + width] for start in range(0, len(values), width)]

    def saved(self, attname, value):
        """``value`` prepared for the field ``attname`` (among ``varying``), for many rows of ``row``."""
        _, prepare, keeps_none = self.columns[attname]
        return Saved(_prepared(value, prepare, keeps_none))

    def row(self, index, values):
        row = self.templates[index].copy()
        for attname, value in values.items():
            column, prepare, keeps_none = self.columns[attname]
            row[column] = _prepared(value, prepare, keeps_none)
        return _Row(self.model, row)


class _Row:
    __slots__ = ("model", "values")

    def __init__(self, model, values):
        self.model, self.values = model, values


class Saved:
    """A value already prepared as its field saves it (``prepared``): ``insert`` and ``Rows.row`` write it as it is.

    For a value the same for many rows or many inserts (a run's snapshot, the published tree's; the
    run of many task rows): on an instance, set the attribute to it for the insert, and back to the
    value itself after."""

    __slots__ = ("prepared",)

    def __init__(self, prepared):
        self.prepared = prepared

    @classmethod
    def of(cls, model, name, value, connection):
        prepare, keeps_none, _, _ = _saver(model._meta.get_field(name), _wrapper(connection))
        return cls(_prepared(value, prepare, keeps_none))


def _stamp(objs, fields, savers):
    """Each ``auto_now``/``auto_now_add`` field's ``pre_save`` once: every row of one insert gets the same time."""
    for field, (_, _, _, stamped) in zip(fields, savers, strict=True):
        if stamped:
            stamp = field.pre_save(objs[0], True)
            for obj in objs[1:]:
                setattr(obj, field.attname, stamp)


def insert_where(objs, connection, where):
    """PostgreSQL: (SQL, parameters) of an ``INSERT`` of ``objs`` that inserts them only if ``where`` (SQL
    without parameters) holds, as ``one_statement`` writes an insert: to embed in a data-modifying
    ``WITH``. Their keys must be given (none is read back). Once it ran and inserted them, ``inserted``.
    Raises ``NotOneStatement`` for a value JSON does not carry here: nothing was sent.
    """
    connection = _wrapper(connection)
    model = type(objs[0])
    fields, savers, _, _, _ = _insert_plan(model, False, connection)
    _stamp(objs, fields, savers)
    batch = _Batch(connection)
    batch.add(objs, model._meta.pk, fields, False, _row_values(objs, fields, savers))
    _, _, sql, document, _ = batch.inserts[0]
    head, ordered = sql.rsplit(" ORDER BY r.n", 1)
    return f"{head} WHERE {where} ORDER BY r.n{ordered}", [document]


def inserted(objs, connection):
    """``objs`` were inserted (by a statement of ``insert_where``): they are saved instances now."""
    alias = _wrapper(connection).alias
    for obj in objs:
        obj._state.adding, obj._state.db = False, alias


def _insert_plan(model, read_back, connection):
    """(fields, their savers, "INSERT INTO ... VALUES ", one row's placeholders, " RETURNING pk" or ""), built
    once per model and backend."""
    key = (connection.alias, connection.vendor, read_back)
    plans = model.__dict__.get("_hotsql_insert_plans")
    if plans is None:
        plans = model._hotsql_insert_plans = {}
    if key not in plans:
        pk, quote = model._meta.pk, connection.ops.quote_name
        fields = [field for field in model._meta.concrete_fields if not (read_back and field is pk)]
        plans[key] = (
            fields,
            [_saver(field, connection) for field in fields],
            f"INSERT INTO {table(model, connection)} ({', '.join(quote(field.column) for field in fields)}) VALUES ",
            f"({', '.join(['%s'] * len(fields))})",
            f" RETURNING {quote(pk.column)}" if read_back else "",
        )
    return plans[key]


def _row_values(objs, fields, savers):
    plan = [
        (field, field.attname, prepare, keeps_none, plain or stamped)  # a stamp is set already (``insert``)
        for field, (prepare, keeps_none, plain, stamped) in zip(fields, savers, strict=True)
    ]
    values, previous = [], [(_UNSET, None)] * len(plan)
    for obj in objs:
        for index, (field, attname, prepare, keeps_none, plain) in enumerate(plan):
            value = getattr(obj, attname) if plain else field.pre_save(obj, True)
            last, prepared = previous[index]
            if value is not last:  # one value shared by the rows (a time stamp, a hand-off time) is prepared once
                prepared = _prepared(value, prepare, keeps_none)
                previous[index] = (value, prepared)
            values.append(prepared)
    return values


def _prepared(value, prepare, keeps_none):
    """What a field (its saver's ``prepare``, ``keeps_none``) writes for ``value``: a ``Saved`` as it was prepared,
    a ``Key`` as it is (``one_statement`` resolves it), None as None where the field saves it so."""
    if type(value) is Saved:
        return value.prepared
    return value if (value is None and keeps_none) or type(value) is Key else prepare(value)


_UNSET = object()

# Django's own fields whose saved value is the Python value itself, or the backend's adaptation of it, for
# values of the usual types (and None): ``get_db_prep_save`` took 1 to 4 µs a value, more than a row's insert.
# (An int goes to the backend's ``adapt_integerfield_value``, as Django's IntegerField sends it: on
# PostgreSQL the parameter's type is then the column's, not one chosen by the value's size.)
_PREPARING = ("get_db_prep_save", "get_db_prep_value", "get_prep_value", "to_python")


def _saver(field, connection):
    """(value → what ``field`` saves, None is saved as None, ``pre_save`` is a plain read, ``pre_save`` stamps
    the time)."""
    key = (connection.alias, connection.vendor)
    cache = field.__dict__.setdefault("_hotsql_savers", {})
    if key not in cache:
        stamped = bool(getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False))
        plain = not stamped and (
            type(field).pre_save is models.Field.pre_save
            or type(field).pre_save in (models.DateField.pre_save, models.DateTimeField.pre_save)
        )
        cache[key] = (*_preparer(field, connection), plain, stamped)
    return cache[key]


def _preparer(field, connection):
    """(value → what ``field`` saves, the field saves None as None and the function need not see it)."""

    def slow(value):
        return field.get_db_prep_save(value, connection)

    target = field
    if isinstance(field, models.ForeignKey) and _inherits(field, models.ForeignKey, ("get_db_prep_save",)):
        target = field.target_field  # a ForeignKey saves None, or what its target field saves
    if _inherits(target, models.UUIDField, _PREPARING):
        if connection.features.has_native_uuid_field:
            return (lambda value: value if type(value) is uuid.UUID else slow(value)), True
        return (lambda value: value.hex if type(value) is uuid.UUID else slow(value)), True
    if _inherits(target, models.IntegerField, _PREPARING):
        adapt, internal_type = connection.ops.adapt_integerfield_value, target.get_internal_type()
        return (lambda value: adapt(value, internal_type) if type(value) is int else slow(value)), True
    if _inherits(target, models.DateTimeField, _PREPARING):
        # An aware datetime is what the field hands its backend as it is (a naive one it warns about).
        adapt = connection.ops.adapt_datetimefield_value
        aware = datetime.datetime.utcoffset
        if connection.vendor == "sqlite" and settings.USE_TZ:
            # SQLite's adaptation is the text of the time made naive in the connection's zone: a time
            # in that zone already (timezone.now()'s) is its text without the zone, at a fifth of the cost.
            zone = connection.timezone

            def in_zone(value):
                if type(value) is datetime.datetime and value.tzinfo is zone:
                    return str(value.replace(tzinfo=None))
                return adapt(value) if type(value) is datetime.datetime and aware(value) is not None else slow(value)

            return in_zone, True
        return (
            lambda value: adapt(value) if type(value) is datetime.datetime and aware(value) is not None else slow(value)
        ), True
    if _inherits(target, models.CharField, _PREPARING) or _inherits(target, models.TextField, _PREPARING):
        # Any str as it is, a text enum's member too (to_python returns a str as it is).
        return (lambda value: value if isinstance(value, str) else slow(value)), True
    if _inherits(target, models.BooleanField, _PREPARING):
        return (lambda value: value if type(value) is bool else slow(value)), True
    if _inherits(field, models.JSONField, _PREPARING):
        empty = {list: slow([]), dict: slow({})}  # a task's logs, output and debug start empty
        return (lambda value: empty[type(value)] if type(value) in empty and not value else slow(value)), True
    return slow, False


def _inherits(field, base, methods):
    """``field`` is a ``base`` that prepares its values with ``base``'s own methods."""
    return isinstance(field, base) and all(getattr(type(field), name) is getattr(base, name) for name in methods)


def new(model, **values):
    """``model(**values)`` (values by attname, a missing one its field's default), without ``Model.__init__``:
    its keyword path took ~40 µs for a model of 30 fields, its positional one still ~15, a few hundred µs
    per submit. The values go in the instance's ``__dict__`` as ``__init__`` would set them (a new instance
    caches no related object). A model this cannot stand in for gets ``__init__``: one with init signal
    receivers, its own ``__init__``, a generated field, or an attribute of a field's that is not Django's
    plain one (a descriptor that would see the value set)."""
    constants, factories, plain = _defaults(model)
    unknown = values.keys() - constants.keys() - factories.keys()
    if unknown:
        raise TypeError(f"{model.__name__} has no field (by attname) {', '.join(map(repr, sorted(unknown)))}")
    if not plain or signals.pre_init.has_listeners(model) or signals.post_init.has_listeners(model):
        return model(**values)
    obj = model.__new__(model)
    obj._state = ModelState()
    state = obj.__dict__
    state.update(constants)
    for attname, factory in factories.items():
        if attname not in values:
            state[attname] = factory()
    state.update(values)
    return obj


def copy(obj, **values):
    """A new unsaved instance of ``obj``'s model with ``obj``'s field values and ``values`` (by attname):
    ``new`` with them all, without going through them one by one. It caches no related object."""
    model = type(obj)
    constants, factories, plain = _defaults(model)
    if not plain or signals.pre_init.has_listeners(model) or signals.post_init.has_listeners(model):
        names = [field.attname for field in model._meta.concrete_fields]
        return new(model, **{**{name: getattr(obj, name) for name in names}, **values})
    copied = model.__new__(model)
    state = copied.__dict__
    state.update(obj.__dict__)
    state.update(values)
    copied._state = ModelState()
    return copied


def _defaults(model):
    """The defaults of the model's concrete fields: ({attname: a constant default}, {attname: a callable
    one}, ``new`` may set the attributes itself).

    A constant is what ``Field.get_default`` returns every time (a default that is not callable, the
    same object; "" or None for a field without one); a callable default (and a database default's
    expression) is made afresh for each instance."""
    found = model.__dict__.get("_hotsql_defaults")
    if found is None:
        constants, factories = {}, {}
        fields = model._meta.concrete_fields
        for field in fields:
            fresh = (field.has_default() and callable(field.default)) or field.has_db_default()
            if fresh:
                factories[field.attname] = field.get_default
            else:
                constants[field.attname] = field.get_default()
        plain = model.__init__ is models.Model.__init__ and all(
            not field.generated and type(model.__dict__.get(field.attname)) in _PLAIN_ATTRIBUTES for field in fields
        )
        found = model._hotsql_defaults = (constants, factories, plain)
    return found


# The class attributes Django gives a field's attname: reading a deferred value; a foreign key's id,
# which forgets a cached related object when set (a new instance has none).
_PLAIN_ATTRIBUTES = (DeferredAttribute, ForeignKeyDeferredAttribute)


# --- One statement for several inserts (PostgreSQL) ----------------------------------------------


class NotOneStatement(Exception):  # noqa: N818 (not an error: the caller's signal to use a transaction)
    """Something else than ``insert`` asked the database inside ``one_statement``: nothing was sent."""


class Key:
    """A key the database gives when ``one_statement`` sends its inserts: row ``index`` of insert ``number``.

    It stands for the key in the rows inserted after it (a run's record, a task's broker row), which
    read it from that insert's RETURNING, and is replaced by the key itself once the statement ran.
    """

    __slots__ = ("batch", "number", "index")

    def __init__(self, batch, number, index):
        self.batch, self.number, self.index = batch, number, index

    def _refuse(self, *args):
        self.batch.refused = "a key used before the database gave it"
        raise NotOneStatement(self.batch.refused)

    __int__ = __index__ = __str__ = __format__ = __float__ = _refuse

    def __repr__(self):
        return f"<Key: row {self.index} of insert {self.number}>"


@contextmanager
def one_statement(connection):
    """The ``insert`` calls inside go to the database as one statement at the end (PostgreSQL).

    A submit's record, run, tasks and broker rows were four INSERTs in a transaction: with BEGIN and
    COMMIT, six round trips to the server. Here they are one data-modifying ``WITH``, sent in
    autocommit, atomic by itself. An automatic key read back (the record's, a broker row's) is a
    ``Key`` until then: the rows inserted after it refer to it in SQL, and any other use of it (a
    number, a text) refuses. The rows of one insert get their keys in their order (an auto-increment's
    sequence is drawn row by row, as ``INSERT ... SELECT ... ORDER BY`` hands the rows over, which is
    what PostgreSQL does though it does not promise it; a key of another kind is not read back here:
    it refuses). Any other statement inside raises ``NotOneStatement``
    (caught, the end raises it again), and so does ``outside_one_statement``: nothing was sent, and
    the caller does it all again in a transaction. In a transaction already, or elsewhere (SQLite: no
    server, no round trips), this is ``transaction.atomic(durable=True)``.
    """
    connection = _wrapper(connection)
    if connection.vendor != "postgresql" or connection.in_atomic_block or not connection.get_autocommit():
        # Inside a caller's transaction a durable block refuses, as a submit must not run its inline
        # phase in a transaction that could still roll back (a test's transaction is let through).
        with transaction.atomic(using=connection.alias, durable=True):
            yield
        return
    batch = connection._hotsql_batch = _Batch(connection)
    try:
        with connection.execute_wrapper(batch.refuse):
            yield
    except Exception as error:
        if batch.refused:  # what failed was the use of a key not given yet, or what followed a refusal
            raise NotOneStatement(batch.refused) from error
        raise
    finally:
        connection._hotsql_batch = None
    if batch.refused:
        raise NotOneStatement(batch.refused)
    batch.send()


# What a column's values are written as in ``_Batch``'s JSON, by the internal type of the field (of the
# target field for a foreign key): "text" (a string, as it is) or the type a string is cast to. A field
# of any other type can only be NULL there; a value refuses the one statement.
_JSON_KINDS = {
    **dict.fromkeys(["CharField", "TextField", "SlugField", "EmailField", "URLField"], "text"),
    **dict.fromkeys(["AutoField", "IntegerField", "PositiveIntegerField"], "integer"),
    **dict.fromkeys(["BigAutoField", "BigIntegerField", "PositiveBigIntegerField"], "bigint"),
    **dict.fromkeys(["SmallAutoField", "SmallIntegerField", "PositiveSmallIntegerField"], "smallint"),
    "BooleanField": "boolean",
    "UUIDField": "uuid",
    "DateTimeField": "timestamp with time zone",
    "JSONField": "jsonb",
}


# A key the database gives is not of these kinds: such a column is not searched for keys, and a Key left in
# it refuses (in ``_json_value``) instead of being written through a cast.
_KEYLESS_KINDS = {"text", "boolean", "timestamp with time zone", "jsonb"}


def _json_kind(field):
    """The field's kind in ``_JSON_KINDS``; None for a field class not Django's own (a subclass may prepare
    values, or name a column type, of its own: its values refuse the one statement)."""
    kind = field.__dict__.get("_hotsql_json_kind", _UNSET)
    if kind is _UNSET:
        target = field.target_field if field.is_relation else field
        own = all(type(f).__module__.startswith("django.db.models.fields") for f in (field, target))
        kind = field._hotsql_json_kind = _JSON_KINDS.get(target.get_internal_type()) if own else None
    return kind


def _json_value(value):
    """``json.dumps``'s ``default`` in ``_Batch``: what a value PostgreSQL's fields prepare (``get_db_prep_save``)
    and JSON has no type for is written as, the text its column's type reads (str, int, bool, float and
    None are JSON's own)."""
    if type(value) is uuid.UUID:
        return str(value)
    if type(value) is datetime.datetime and value.utcoffset() is not None:
        return value.isoformat()
    dumps = getattr(value, "dumps", None)  # psycopg's Jsonb, with the field's encoder: its text
    if dumps is not None and hasattr(value, "obj"):
        if not value.obj and type(value.obj) in _EMPTY_DOCUMENTS:  # a task's logs, output and debug at first
            return _EMPTY_DOCUMENTS[type(value.obj)]
        text = dumps(value.obj)
        return text.decode() if isinstance(text, bytes) else text
    raise TypeError(f"a {type(value).__name__} is not written as JSON here")


_KEY_COLUMNS = {}


def _key_columns(fields):
    """[(index, field, kind)] of the columns of ``fields`` (an ``_insert_plan``'s) ``_Batch.add`` looks at: those
    that may hold a key (relations, and columns of a kind a key is of) and those of no kind (a value refuses)."""
    found = _KEY_COLUMNS.get(id(fields))
    if found is None or found[0] is not fields:
        columns = [
            (index, field, kind)
            for index, field in enumerate(fields)
            if (kind := _json_kind(field)) not in _KEYLESS_KINDS or field.is_relation
        ]
        found = _KEY_COLUMNS[id(fields)] = (fields, columns)
    return found[1]


_EMPTY_DOCUMENTS = {list: "[]", dict: "{}"}


@functools.lru_cache(maxsize=256)
def _json_insert_sql(alias, model, read_back, sources):
    """``_Batch``'s INSERT of the fields of ``_insert_plan(model, read_back)`` from one JSON document of rows;
    ``sources`` as in ``_Batch.add``."""
    fields = _insert_plan(model, read_back, connections[alias])[0]
    quote = connections[alias].ops.quote_name
    selected = []
    for column, field in enumerate(fields):
        item, kind = f"r.v->>{column}", _json_kind(field)
        if sources[column] is not None:
            number, key = sources[column][0], quote(sources[column][1])
            selected.append(
                f"CASE WHEN {item} IS NULL THEN NULL ELSE (SELECT {key} FROM i{number}"
                f" ORDER BY {key} LIMIT 1 OFFSET CAST({item} AS integer)) END"
            )
        elif kind is None:
            selected.append("NULL")  # a column of a type not written as JSON here, NULL in every row
        else:
            # Text goes in as text: the column's own type checks its length (a cast would cut it).
            selected.append(item if kind == "text" else f"CAST({item} AS {kind})")
    pk = quote(model._meta.pk.column)
    return (
        f"INSERT INTO {table(model, connections[alias])} ({', '.join(quote(field.column) for field in fields)})"
        f" SELECT {', '.join(selected)} FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS r(v, n)"
        f" ORDER BY r.n{f' RETURNING {pk}' if read_back else ''}"
    )


def outside_one_statement(connection, reason):
    """Refuse ``one_statement`` where what follows needs a transaction of its own (an on-commit hook)."""
    batch = getattr(_wrapper(connection), "_hotsql_batch", None)
    if batch is not None:
        batch.refused = reason
        raise NotOneStatement(reason)


class _Batch:
    """The inserts of ``one_statement``, each one a JSON parameter: one document of rows, not a parameter per value.

    psycopg rewrites a statement's placeholders in Python, and caches that only for statements of at
    most 50 parameters and 4 KB: a submit's VALUES lists took ~5 µs per value, half a millisecond for a
    form with one background branch. Each insert's rows go in as one JSON array, read back by
    ``jsonb_array_elements`` in their order, each value cast to its column's type (``jsonb``, parsed
    once: ``->>`` on ``json`` parses the row's text again for every column, 1.3 ms for ten task rows);
    the statement's text is the same for every submit of a tree, and psycopg caches it. A key from an
    earlier insert is its row number in the document, read from that insert's RETURNING.
    """

    def __init__(self, connection):
        self.connection, self.refused = connection, ""
        self.inserts = []  # (objs, pk field, SQL, document, keyed)

    def refuse(self, execute, sql, params, many, context):
        self.refused = f"another statement: {sql[:60]}"
        raise NotOneStatement(self.refused)

    def _refuse_value(self, field, value):
        self.refused = f"{field.model.__name__}.{field.name}: a {type(value).__name__} is not written as JSON here"
        raise NotOneStatement(self.refused)

    def add(self, objs, pk, fields, read_back, values):
        number, width = len(self.inserts), len(fields)
        if read_back and not isinstance(pk, AutoFieldMixin):
            # Keys are matched to rows by their order, which only a sequence's keys follow.
            self.refused = f"{pk.model.__name__}: a key that is not an auto-increment"
            raise NotOneStatement(self.refused)
        if read_back:
            for index, obj in enumerate(objs):
                setattr(obj, pk.attname, Key(self, number, index))
        rows = [values[start : start + width] for start in range(0, len(values), width)]
        sources = [None] * width  # per column: None, or (the insert whose keys it holds, its key column)
        for column, field, kind in _key_columns(fields):
            found, plain = None, False
            for row in rows:
                value = row[column]
                if type(value) is Key:
                    if found not in (None, value.number) or value.number >= number:
                        self.refused = "keys of two inserts in one column, or of this insert"
                        raise NotOneStatement(self.refused)
                    found, row[column] = value.number, value.index
                elif value is not None:
                    if kind is None:
                        self._refuse_value(field, value)
                    plain = True
            if found is not None:
                if plain:
                    self.refused = "keys and other values in one column"
                    raise NotOneStatement(self.refused)
                sources[column] = (found, self.inserts[found][1].column)
        # (The fields are those of _insert_plan: the model and read_back name them.)
        sql = _json_insert_sql(self.connection.alias, pk.model, read_back, tuple(sources))
        try:
            document = json.dumps(rows, ensure_ascii=False, separators=(",", ":"), default=_json_value)
        except (TypeError, ValueError) as error:
            self.refused = f"{pk.model.__name__}: {error}"
            raise NotOneStatement(self.refused) from error
        self.inserts.append((objs, pk, sql, document, read_back))

    def send(self):
        if not self.inserts:
            return
        keyed = [number for number, insert in enumerate(self.inserts) if insert[4]]
        quote = self.connection.ops.quote_name
        ctes = ", ".join(f"i{number} AS ({insert[2]})" for number, insert in enumerate(self.inserts))
        read = " UNION ALL ".join(
            f"SELECT {number}, {quote(self.inserts[number][1].column)} FROM i{number}" for number in keyed
        )
        with self.connection.cursor() as cursor:
            cursor.execute(
                f"WITH {ctes} {read + ' ORDER BY 1, 2' if keyed else 'SELECT 1'}",
                [insert[3] for insert in self.inserts],
            )
            found = cursor.fetchall() if keyed else []
        keys = {}
        for number, key in found:
            keys.setdefault(number, []).append(key)
        for objs, _, _, _, _ in self.inserts:
            for obj in objs:
                for name, value in list(obj.__dict__.items()):
                    if type(value) is Key:
                        obj.__dict__[name] = keys[value.number][value.index]
                obj._state.adding, obj._state.db = False, self.connection.alias


# --- Writes that go with a later statement (PostgreSQL) ------------------------------------------


class _Stage:
    """The writes ``later`` kept back in one transaction (``atomic``): sent with, or just before, the next statement.

    An execute wrapper: any statement of the connection first sends what is kept (a read sees every
    write before it, a SAVEPOINT and its rollback come after them); ``with_later`` puts them in a
    statement of its own instead, as parts of its ``WITH``.
    """

    def __init__(self, connection, atomic):
        self.connection, self.atomic, self.kept = connection, atomic, []  # kept: (sql, params, row)

    def __call__(self, execute, sql, params, many, context):
        if self.kept:
            self.send()
        return execute(sql, params, many, context)

    def send(self):
        kept, self.kept = self.kept, []
        with self.connection.cursor() as cursor:
            for sql, params, _ in kept:
                cursor.execute(sql, params)


def stage_begin(connection, atomic):
    """PostgreSQL: from now on, in ``atomic`` (a ``transaction.atomic`` just entered), ``later`` may keep
    writes back: each round trip to the server saved is a good part of a queue job's time. The caller
    ends it with ``stage_end`` before ``atomic`` exits. Elsewhere this does nothing."""
    connection = _wrapper(connection)
    if connection.vendor != "postgresql" or getattr(connection, "_hotsql_stage", None) is not None:
        return
    stage = connection._hotsql_stage = _Stage(connection, atomic)
    connection.execute_wrappers.append(stage)


def stage_end(connection, *, send):
    """End ``stage_begin``: send what is kept (``send``: the transaction is about to commit) or drop it
    (it rolls back)."""
    connection = _wrapper(connection)
    stage = getattr(connection, "_hotsql_stage", None)
    if stage is None:
        return
    connection._hotsql_stage = None
    if stage in connection.execute_wrappers:
        connection.execute_wrappers.remove(stage)
    if send and stage.kept:
        stage.send()


def later(connection, sql, params, row):
    """Keep back an UPDATE of one row (``row``: (model, key)) whose count nobody waits for: it goes with
    the next statement of the transaction. False when it cannot (no ``stage_begin``, or inside a block
    nested in its transaction, which could roll back on its own): the caller runs it now.

    An error of such an update surfaces at the statement it goes with, in the same transaction,
    which it aborts all the same (PostgreSQL refuses everything after an error in a transaction).
    """
    connection = _wrapper(connection)
    stage = getattr(connection, "_hotsql_stage", None)
    if stage is None or not connection.atomic_blocks or connection.atomic_blocks[-1] is not stage.atomic:
        return False
    if any(kept_row == row for _, _, kept_row in stage.kept):
        stage.send()  # two updates of one row in one statement: PostgreSQL would make only one of them
    stage.kept.append((sql, params, row))
    return True


def with_later(connection, rows=()):
    """(``WITH`` parts, their parameters, a condition) for the caller's next statement, which puts the kept
    updates before its own parts (``"WITH " + parts + ", ..."``) and the condition in its ``WHERE``: ("",
    [], "") if none. ``rows``: those the caller's statement changes itself: a kept update of one of them
    is sent first, on its own.

    The condition makes the statement run the kept updates before it reads (and locks) its own rows:
    PostgreSQL runs a ``WITH`` part nothing reads after the statement's main part, which would take a
    run's lock before the rows of a step and of its record, where a walk that sends them on their own
    takes it after them; two walks of one run taking them in both orders could deadlock.
    """
    stage = getattr(_wrapper(connection), "_hotsql_stage", None)
    if stage is None or not stage.kept:
        return "", [], ""
    if any(row in rows for _, _, row in stage.kept):
        stage.send()
        return "", [], ""
    kept, stage.kept = stage.kept, []
    names = [f"later{number}" for number in range(len(kept))]
    parts = ", ".join(f"{name} AS ({sql} RETURNING 1)" for name, (sql, _, _) in zip(names, kept, strict=True))
    # An uncorrelated condition: evaluated once, before the main part's first row.
    condition = " + ".join(f"(SELECT count(*) FROM {name})" for name in names) + " >= 0"
    return parts, [value for _, params, _ in kept for value in params], condition
