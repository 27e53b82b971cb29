import functools
import json
import re
import secrets
import string

from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from django.db import connection, models, transaction
from django.urls import get_script_prefix, get_urlconf, reverse
from django.utils import timezone

from events import hotsql

from .messages import render_message

SLUG = re.compile(r"[-a-zA-Z0-9_]+")
TOKEN_PLACEHOLDER = "xRecordTokenx"


def token_url(name, token):
    """``reverse(name, kwargs={"token": token})``: a record's pages (every submit redirects to one).

    Reversing took ~30 µs a call; the address is reversed once per page, prefix and URLconf, with a
    placeholder, and a token put in its place. A token is URL-safe base64, which the slug converter
    and the quoting leave as it is; anything else goes to ``reverse`` (which refuses it).
    """
    if not SLUG.fullmatch(token):
        return reverse(name, kwargs={"token": token})
    return _token_url(name, get_script_prefix(), get_urlconf()).replace(TOKEN_PLACEHOLDER, token)


@functools.lru_cache(maxsize=64)
def _token_url(name, prefix, urlconf):
    return reverse(name, kwargs={"token": TOKEN_PLACEHOLDER}, urlconf=urlconf)


field_name_validator = RegexValidator(
    r"^[a-z][a-z0-9_]*$",
    "Use lower-case letters, digits and underscores, starting with a letter.",
)


class FormQuerySet(models.QuerySet):
    def published(self):
        return self.filter(is_published=True)


class Form(models.Model):
    """An admin-defined form: its fields, its waiting page and its event trees."""

    class WaitFor(models.TextChoices):
        RUN = "run", "the submission run to finish"
        FLAG = "flag", "a flag on the record"

    slug = models.SlugField(unique=True)
    title = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    submit_label = models.CharField(max_length=60, default="Submit")
    is_published = models.BooleanField(default=True)

    # The post-submission (waiting) page.
    waiting_title = models.CharField(max_length=200, default="Thank you, we are processing your submission")
    poll_seconds = models.PositiveSmallIntegerField(default=2, help_text="How often the waiting page checks.")
    wait_for = models.CharField(max_length=10, choices=WaitFor, default=WaitFor.RUN)
    wait_flag = models.CharField(
        max_length=100, blank=True, help_text="With “a flag on the record”: the flag that means done."
    )
    max_wait_seconds = models.PositiveIntegerField(
        default=120, help_text="After this long the page says the work is taking longer and polls less often."
    )
    done_message = models.TextField(
        default="All done.", help_text="Template over the record: {{ record.email }}, {{ flags.paid }}."
    )
    done_redirect_url = models.CharField(
        max_length=500, blank=True, help_text="If set, the finished page goes here instead of the done message."
    )
    failed_message = models.TextField(default="Sorry, something went wrong while processing your submission.")
    collect_debug = models.BooleanField(
        default=False, help_text="Store a debug trace of every step of this form's runs (costs storage)."
    )

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = FormQuerySet.as_manager()

    class Meta:
        ordering = ["title"]

    def __str__(self):
        return self.title

    def get_absolute_url(self):
        return reverse("forms_app:form_detail", kwargs={"slug": self.slug})

    def field_named(self, name):
        """The field called ``name``, or None. The fields are read once per instance (or taken prefetched)."""
        if "_fields_by_name" not in self.__dict__:
            self._fields_by_name = {field.name: field for field in self.fields.all()}
        return self._fields_by_name.get(name)

    def waiting_outcome(self, record, *, run_status, handled_failures=()):
        """How the waiting page ends for ``record``: (state, message, redirect URL).

        ``run_status``: the status of its submission run ("running", "complete", "failed", ...), None
        when it has none. The state is "done" (the run completed, or the flag the page waits for is
        set: the done message and the redirect URL), "failed" (the failed message) or "working"
        (the page still waits: no message). ``record`` is anything with ``data`` and ``flags``;
        the waiting page and a test run (events.testrun) both end here.
        """
        if self.wait_for == self.WaitFor.FLAG:
            done = bool(record.flags.get(self.wait_flag))
        else:
            done = run_status in (None, "complete")
        if done:
            message = render_message(self.done_message, record, handled_failures=handled_failures)
            return "done", message, self.done_redirect_url
        if run_status == "failed":
            return "failed", render_message(self.failed_message, record, handled_failures=handled_failures), ""
        return "working", "", ""

    def clean(self):
        if self.wait_for == self.WaitFor.FLAG and not self.wait_flag:
            raise ValidationError({"wait_flag": "Name the flag the waiting page waits for."})


class Field(models.Model):
    """One input of a form. ``name`` is the key in Record.data: never rename it once records exist."""

    class Type(models.TextChoices):
        TEXT = "text", "Text"
        TEXTAREA = "textarea", "Text area"
        EMAIL = "email", "Email"
        INTEGER = "integer", "Integer"
        DECIMAL = "decimal", "Decimal"
        DATE = "date", "Date"
        DATETIME = "datetime", "Date and time"
        CHOICE = "choice", "Choice"
        MULTIPLE_CHOICE = "multiple_choice", "Multiple choice"
        CHECKBOX = "checkbox", "Checkbox"
        URL = "url", "URL"
        HIDDEN = "hidden", "Hidden (internal, set by actions)"

    form = models.ForeignKey(Form, on_delete=models.CASCADE, related_name="fields")
    name = models.CharField(max_length=100, validators=[field_name_validator])
    label = models.CharField(max_length=200)
    type = models.CharField(max_length=20, choices=Type, default=Type.TEXT)
    required = models.BooleanField(default=False)
    help_text = models.CharField(max_length=300, blank=True)
    choices = models.JSONField(default=list, blank=True, help_text='For choice fields: ["Economy", "Business"].')
    min_value = models.DecimalField(max_digits=20, decimal_places=6, null=True, blank=True)
    max_value = models.DecimalField(max_digits=20, decimal_places=6, null=True, blank=True)
    max_length = models.PositiveIntegerField(null=True, blank=True)
    pattern = models.CharField(max_length=300, blank=True, help_text="A regular expression the value must match.")
    default = models.CharField(max_length=300, blank=True, help_text="Initial value.")
    position = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["position", "id"]
        constraints = [models.UniqueConstraint(fields=["form", "name"], name="unique_field_name_per_form")]

    def __str__(self):
        return f"{self.label} ({self.name})"

    @property
    def is_shown(self):
        return self.type != self.Type.HIDDEN

    def clean(self):
        if self.pk and self.form_id:
            stored = Field.objects.filter(pk=self.pk).values_list("name", flat=True).first()
            if stored and stored != self.name and self.form.records.exists():
                raise ValidationError(
                    {
                        "name": f"Records already store values under “{stored}”: "
                        "a field's name cannot change once records exist."
                    }
                )


TOKEN_FIRST_CHARACTERS = string.ascii_letters + string.digits


def new_record_token():
    """32 URL-safe characters (192 random bits), never beginning with "-": a token is also a command-line
    argument (``test_tree --record TOKEN``), where a leading "-" reads as an option."""
    return secrets.choice(TOKEN_FIRST_CHARACTERS) + secrets.token_urlsafe(24)[1:]


class JsonKeySet:
    """SQL for ``column`` (a JSON object) with ``key`` set to ``value``, computed by the database."""

    VENDORS = ("sqlite", "postgresql")
    SAFE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")

    @staticmethod
    def sql(vendor, column, key, value):
        """(SQL, params) of the new value of ``column`` (quoted SQL) on the ``vendor``'s database."""
        if vendor == "sqlite":
            return f"json_set({column}, %s, json(%s))", [f'$."{key}"', json.dumps(value)]
        return f"jsonb_set({column}, %s::text[], %s::jsonb, true)", [[key], json.dumps(value)]


class Record(models.Model):
    """One submission: its data keyed by field name, its flags, and a public token for the waiting page."""

    form = models.ForeignKey(Form, on_delete=models.CASCADE, related_name="records")
    token = models.CharField(max_length=64, default=new_record_token, editable=False)
    data = models.JSONField(default=dict, blank=True)
    flags = models.JSONField(default=dict, blank=True)
    # True exactly when the submission run is terminal.
    is_complete = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        # A constraint rather than unique=True: on PostgreSQL that adds a second index, for LIKE, which
        # nothing asks for and every submit would write.
        constraints = [models.UniqueConstraint(fields=["token"], name="one_record_per_token")]

    def __str__(self):
        return f"{self.form.slug} #{self.pk}"

    def get_absolute_url(self):
        return token_url("forms_app:record_wait", self.token)

    def set_value(self, name, value):
        """Set one key of ``data``, keeping concurrent writes to other keys."""
        self._update_json("data", name, value)

    def set_flag(self, name, value=True):
        self._update_json("flags", name, bool(value))

    def _update_json(self, attname, key, value):
        """Write one key of a JSON column in the database itself, so concurrent writes to other keys stay.

        On SQLite and PostgreSQL it is one UPDATE (json_set / jsonb_set), and this copy learns the key
        it set; elsewhere the row is locked, read and written back.
        """
        if connection.vendor in JsonKeySet.VENDORS and JsonKeySet.SAFE_KEY.match(key):
            # A hot statement (a set_flag or update_field step): written as SQL, not compiled per call.
            column = connection.ops.quote_name(Record._meta.get_field(attname).column)
            hotsql.update(
                Record,
                connection,
                {"updated_at": timezone.now()},
                computed={attname: JsonKeySet.sql(connection.vendor, column, key, value)},
                where="id = %s",
                params=[self.pk],
                later_row=self.pk,  # in a walk on PostgreSQL: with the next statement (hotsql.later)
            )
            getattr(self, attname)[key] = value
            return
        with transaction.atomic():
            fresh = Record.objects.select_for_update().only(attname).get(pk=self.pk)
            stored = getattr(fresh, attname)
            stored[key] = value
            Record.objects.filter(pk=self.pk).update(**{attname: stored, "updated_at": timezone.now()})
        setattr(self, attname, stored)
