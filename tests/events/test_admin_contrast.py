"""Status colours in admin are readable: WCAG AA (contrast ≥ 4.5:1 for text) in the light and dark themes.

The test reads the stylesheet we ship and Django admin's own (base.css, dark_mode.css), applies the
custom-property cascade of each theme (``:root``, ``html[data-theme=…]``, ``prefers-color-scheme: dark``)
and computes the contrast of every text colour of ours against the backgrounds the timeline rows use.
"""

import re

import pytest
from django.contrib.staticfiles import finders
from django.urls import reverse

from events.models import Run, RunTask
from tests.factories import RecordFactory

AA_TEXT = 4.5
OURS = "css/admin_runs.css"
DJANGO = ["admin/css/base.css", "admin/css/dark_mode.css"]
# (value of <html data-theme>, whether the system prefers dark): Django admin's theme switch.
THEMES = {
    "light": ("auto", False),
    "dark (from the system)": ("auto", True),
    "dark (chosen)": ("dark", False),
    "light (chosen on a dark system)": ("light", True),
}
BACKGROUNDS = ["--body-bg", "--darkened-bg"]  # the page, and every other table row


def read_static(path):
    found = finders.find(path)
    assert found, f"{path} is not a static file"
    with open(found, encoding="utf-8") as handle:
        return handle.read()


def css_rules(text, media=None):
    """[(media or None, selector, {property: value})] of a stylesheet, @media blocks flattened."""
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    rules, index = [], 0
    while (opening := text.find("{", index)) != -1:
        prelude = text[index:opening].strip()
        depth, end = 1, opening + 1
        while depth:
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            end += 1
        body = text[opening + 1 : end - 1]
        if prelude.startswith("@media"):
            rules += css_rules(body, media=prelude)
        elif not prelude.startswith("@"):
            declarations = {}
            for declaration in body.split(";"):
                name, colon, value = declaration.partition(":")
                if colon:
                    declarations[name.strip()] = value.strip()
            rules.append((media, prelude, declarations))
        index = end
    return rules


def custom_properties(rules, *, data_theme, prefers_dark):
    """The custom properties on <html> for one theme: specificity first, then source order."""
    found = []
    for order, (media, selector, declarations) in enumerate(rules):
        if media is not None and not (prefers_dark and "prefers-color-scheme: dark" in media):
            continue
        specificity = max(
            {":root": 10, f'html[data-theme="{data_theme}"]': 11}.get(part.strip(), -1) for part in selector.split(",")
        )
        if specificity < 0:
            continue
        found += [(specificity, order, name, value) for name, value in declarations.items() if name.startswith("--")]
    return {name: value for _, _, name, value in sorted(found)}


def resolve(value, properties):
    """A colour value with var(--x[, fallback]) resolved, as #rrggbb."""
    value = value.strip().removesuffix("!important").strip()
    match = re.fullmatch(r"var\(\s*(--[\w-]+)\s*(?:,\s*(.+))?\)", value)
    if match:
        name, fallback = match.groups()
        if name in properties:
            return resolve(properties[name], properties)
        assert fallback, f"{name} is not defined in this theme"
        return resolve(fallback, properties)
    assert re.fullmatch(r"#[0-9a-fA-F]{3}|#[0-9a-fA-F]{6}", value), f"not a hex colour: {value!r}"
    if len(value) == 4:
        value = "#" + "".join(digit * 2 for digit in value[1:])
    return value.lower()


def luminance(hex_colour):
    def channel(c):
        c = int(c, 16) / 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(hex_colour[i : i + 2]) for i in (1, 3, 5))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(one, other):
    lighter, darker = sorted((luminance(one), luminance(other)), reverse=True)
    return (lighter + 0.05) / (darker + 0.05)


def low_contrast(ours_text):
    """Every (theme, selector, colour, background, ratio) of ``ours_text`` below AA."""
    django_rules = [rule for path in DJANGO for rule in css_rules(read_static(path))]
    ours = css_rules(ours_text)
    failures = []
    for theme, (data_theme, prefers_dark) in THEMES.items():
        properties = custom_properties(django_rules + ours, data_theme=data_theme, prefers_dark=prefers_dark)
        for _, selector, declarations in ours:
            if "color" not in declarations:
                continue
            colour = resolve(declarations["color"], properties)
            for background in BACKGROUNDS:
                ratio = contrast(colour, resolve(properties[background], properties))
                if ratio < AA_TEXT:
                    failures.append((theme, selector, colour, background, round(ratio, 2)))
    return failures


def test_every_text_colour_we_ship_meets_wcag_aa_in_the_light_and_dark_themes():
    assert low_contrast(read_static(OURS)) == []


def test_the_check_catches_a_low_contrast_status_colour():
    # What the timeline used to ship for "Done": Django's light-green message background, as text.
    old = ".events-status-complete { color: var(--message-success-bg, #2a7a2a); }"

    failures = low_contrast(read_static(OURS) + old)

    assert ("light", ".events-status-complete", "#ddffdd", "--body-bg", 1.08) in failures
    assert {theme for theme, *_ in failures} == set(THEMES)


@pytest.mark.parametrize("status", [*RunTask.Status.values, "handled", "handling"])
def test_every_status_has_its_own_colour_in_every_theme(status):
    rules = css_rules(read_static(OURS))
    colours = [
        declarations["color"]
        for _, selector, declarations in rules
        if f".events-status-{status}" in [part.strip() for part in selector.split(",")] and "color" in declarations
    ]
    assert colours, f"no colour for .events-status-{status}"
    django_rules = [rule for path in DJANGO for rule in css_rules(read_static(path))]
    for data_theme, prefers_dark in THEMES.values():
        properties = custom_properties(django_rules + rules, data_theme=data_theme, prefers_dark=prefers_dark)
        resolve(colours[-1], properties)  # defined (or with a readable fallback) in this theme


@pytest.mark.parametrize("page", ["run", "task"])
def test_the_run_and_task_pages_take_their_colours_from_the_shipped_stylesheet(admin_client, form, page):
    record = RecordFactory(form=form)
    run = Run.objects.create(form=form, record=record)
    task = RunTask.objects.create(run=run, node_id=1, position=0, type="set_flag", status=RunTask.Status.COMPLETE)
    url = (
        reverse("admin:events_run_change", args=[run.pk])
        if page == "run"
        else reverse("admin:events_runtask_change", args=[task.pk])
    )

    html = admin_client.get(url).content.decode()

    assert f'href="/static/{OURS}"' in html
    inline_styles = re.findall(r"<style>(.*?)</style>", html, re.S)
    assert not [style for style in inline_styles if re.search(r"(?<![-\w])color\s*:", style)]
    if page == "run":
        assert 'class="events-status events-status-complete">Done</span>' in html
