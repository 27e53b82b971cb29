import datetime
import decimal
import json

import pytest
from django import forms

from forms_app.builder import build_form_class, record_data
from tests.factories import FieldFactory


@pytest.fixture
def submission(one_field_form):
    """``submission({"type": "integer"}, {"value": "3"})``: the built form, bound to that data."""

    def make(field, data):
        form = one_field_form(**field)
        return build_form_class(form)(data)

    return make


def cleaned(submission, field, data):
    bound = submission(field, data)
    assert bound.is_valid(), bound.errors
    return bound.cleaned_data["value"]


def errors(submission, field, data):
    bound = submission(field, data)
    assert not bound.is_valid()
    return bound.errors["value"]


@pytest.mark.parametrize(
    ("type", "field_class", "widget_class"),
    [
        ("text", forms.CharField, forms.TextInput),
        ("textarea", forms.CharField, forms.Textarea),
        ("email", forms.EmailField, forms.EmailInput),
        ("integer", forms.IntegerField, forms.NumberInput),
        ("decimal", forms.DecimalField, forms.NumberInput),
        ("date", forms.DateField, forms.DateInput),
        ("datetime", forms.DateTimeField, forms.DateTimeInput),
        ("choice", forms.ChoiceField, forms.Select),
        ("multiple_choice", forms.MultipleChoiceField, forms.CheckboxSelectMultiple),
        ("checkbox", forms.BooleanField, forms.CheckboxInput),
        ("url", forms.URLField, forms.URLInput),
    ],
)
def test_every_shown_field_type_builds_its_form_field(one_field_form, type, field_class, widget_class):
    form = one_field_form(type=type, label="Your value", help_text="Some help", choices=["x", "y"])

    built = build_form_class(form)().fields["value"]

    assert isinstance(built, field_class)
    assert isinstance(built.widget, widget_class)
    assert built.label == "Your value"
    assert built.help_text == "Some help"


def test_date_and_datetime_fields_use_native_pickers(one_field_form):
    date_html = str(build_form_class(one_field_form(type="date"))()["value"])
    datetime_html = str(build_form_class(one_field_form(type="datetime"))()["value"])

    assert 'type="date"' in date_html
    assert 'type="datetime-local"' in datetime_html


def test_fields_keep_their_position_order(db):
    form = FieldFactory(name="second", position=2).form
    FieldFactory(form=form, name="first", position=1)
    FieldFactory(form=form, name="third", position=3)

    assert list(build_form_class(form)().fields) == ["first", "second", "third"]


@pytest.mark.parametrize(
    "field",
    [
        {"type": "text"},
        {"type": "textarea"},
        {"type": "email"},
        {"type": "integer"},
        {"type": "decimal"},
        {"type": "date"},
        {"type": "datetime"},
        {"type": "choice", "choices": ["a", "b"]},
        {"type": "multiple_choice", "choices": ["a", "b"]},
        {"type": "checkbox"},
        {"type": "url"},
    ],
    ids=lambda field: field["type"],
)
def test_a_required_field_rejects_an_empty_value(submission, field):
    assert errors(submission, {**field, "required": True}, {}) == ["This field is required."]


@pytest.mark.parametrize(
    ("field", "empty"),
    [
        ({"type": "text"}, ""),
        ({"type": "integer"}, None),
        ({"type": "decimal"}, None),
        ({"type": "date"}, None),
        ({"type": "choice", "choices": ["a"]}, ""),
        ({"type": "multiple_choice", "choices": ["a"]}, []),
        ({"type": "checkbox"}, False),
    ],
    ids=lambda value: value["type"] if isinstance(value, dict) else "",
)
def test_an_optional_field_accepts_an_empty_value(submission, field, empty):
    assert cleaned(submission, field, {}) == empty


def test_text_enforces_max_length(submission):
    field = {"type": "text", "max_length": 5}

    assert cleaned(submission, field, {"value": "abcde"}) == "abcde"
    assert errors(submission, field, {"value": "abcdef"}) == ["Ensure this value has at most 5 characters (it has 6)."]


def test_textarea_enforces_max_length(submission):
    assert errors(submission, {"type": "textarea", "max_length": 3}, {"value": "abcd"}) == [
        "Ensure this value has at most 3 characters (it has 4)."
    ]


def test_text_enforces_the_pattern(submission):
    field = {"type": "text", "pattern": r"^[A-Z]{3}$"}

    assert cleaned(submission, field, {"value": "LHR"}) == "LHR"
    assert errors(submission, field, {"value": "lhr"}) == ["Enter a value matching ^[A-Z]{3}$."]


def test_email_validates_the_address_and_the_pattern(submission):
    field = {"type": "email", "pattern": r"@example\.com$"}

    assert cleaned(submission, field, {"value": "ann@example.com"}) == "ann@example.com"
    assert "Enter a valid email address." in errors(submission, field, {"value": "not an address"})
    assert errors(submission, field, {"value": "ann@example.org"}) == [r"Enter a value matching @example\.com$."]


def test_url_validates_the_address(submission):
    assert cleaned(submission, {"type": "url"}, {"value": "https://example.com/a"}) == "https://example.com/a"
    assert errors(submission, {"type": "url"}, {"value": "not a url"}) == ["Enter a valid URL."]


def test_integer_enforces_min_and_max(submission):
    field = {"type": "integer", "min_value": 1, "max_value": 9}

    assert cleaned(submission, field, {"value": "1"}) == 1
    assert cleaned(submission, field, {"value": "9"}) == 9
    assert errors(submission, field, {"value": "0"}) == ["Ensure this value is greater than or equal to 1."]
    assert errors(submission, field, {"value": "10"}) == ["Ensure this value is less than or equal to 9."]
    assert errors(submission, field, {"value": "two"}) == ["Enter a whole number."]


def test_decimal_enforces_min_and_max(submission):
    field = {"type": "decimal", "min_value": decimal.Decimal("0.5"), "max_value": decimal.Decimal("2.5")}

    assert cleaned(submission, field, {"value": "0.5"}) == decimal.Decimal("0.5")
    assert cleaned(submission, field, {"value": "2.5"}) == decimal.Decimal("2.5")
    [too_small] = errors(submission, field, {"value": "0.25"})
    [too_big] = errors(submission, field, {"value": "3"})
    assert too_small.startswith("Ensure this value is greater than or equal to 0.5")
    assert too_big.startswith("Ensure this value is less than or equal to 2.5")


def test_decimal_bound_messages_show_the_bounds_as_the_admin_wrote_them(submission):
    field = {"type": "decimal", "min_value": decimal.Decimal("0.5"), "max_value": decimal.Decimal("2.5")}

    assert errors(submission, field, {"value": "0.25"}) == ["Ensure this value is greater than or equal to 0.5."]
    assert errors(submission, field, {"value": "3"}) == ["Ensure this value is less than or equal to 2.5."]


def test_date_and_datetime_parse_iso_input(submission):
    assert cleaned(submission, {"type": "date"}, {"value": "2027-01-31"}) == datetime.date(2027, 1, 31)
    moment = cleaned(submission, {"type": "datetime"}, {"value": "2027-01-31T09:30"})
    assert moment == datetime.datetime(2027, 1, 31, 9, 30, tzinfo=datetime.UTC)
    assert errors(submission, {"type": "date"}, {"value": "2027-02-30"}) == ["Enter a valid date."]


def test_choice_accepts_only_its_choices(submission):
    field = {"type": "choice", "choices": ["Economy", "Business"]}

    assert cleaned(submission, field, {"value": "Business"}) == "Business"
    assert errors(submission, field, {"value": "First"}) == [
        "Select a valid choice. First is not one of the available choices."
    ]


def test_choice_renders_its_options(one_field_form):
    html = str(build_form_class(one_field_form(type="choice", choices=["Economy", "Business"]))()["value"])

    assert '<option value="Economy">Economy</option>' in html
    assert '<option value="Business">Business</option>' in html


def test_multiple_choice_accepts_only_its_choices(submission):
    field = {"type": "multiple_choice", "choices": ["a", "b", "c"]}

    assert cleaned(submission, field, {"value": ["a", "c"]}) == ["a", "c"]
    assert errors(submission, field, {"value": ["a", "d"]}) == [
        "Select a valid choice. d is not one of the available choices."
    ]


def test_checkbox_is_true_when_ticked(submission):
    assert cleaned(submission, {"type": "checkbox"}, {"value": "on"}) is True


def test_a_default_is_the_initial_value(one_field_form):
    html = str(build_form_class(one_field_form(type="text", default="Economy"))()["value"])

    assert 'value="Economy"' in html


def test_hidden_fields_are_neither_built_nor_rendered(form):
    built = build_form_class(form)()

    assert list(built.fields) == ["email", "seats"]
    assert 'name="status"' not in str(built)


def test_hidden_fields_are_stored_with_their_default_whatever_is_posted(form):
    form.fields.filter(name="status").update(default="new")
    bound = build_form_class(form)({"email": "ann@example.com", "seats": "2", "status": "paid"})
    assert bound.is_valid(), bound.errors

    assert record_data(form, bound.cleaned_data) == {"email": "ann@example.com", "seats": 2, "status": "new"}


def test_record_data_turns_dates_decimals_and_datetimes_into_json(db):
    form = FieldFactory(name="day", type="date").form
    FieldFactory(form=form, name="at", type="datetime")
    FieldFactory(form=form, name="price", type="decimal")
    FieldFactory(form=form, name="tags", type="multiple_choice", choices=["a", "b"])
    FieldFactory(form=form, name="ok", type="checkbox")
    bound = build_form_class(form)(
        {"day": "2027-01-31", "at": "2027-01-31T09:30", "price": "12.50", "tags": ["b"], "ok": "on"}
    )
    assert bound.is_valid(), bound.errors

    data = record_data(form, bound.cleaned_data)

    assert data == {
        "day": "2027-01-31",
        "at": "2027-01-31T09:30:00+00:00",
        "price": "12.50",
        "tags": ["b"],
        "ok": True,
    }
    assert json.loads(json.dumps(data)) == data
