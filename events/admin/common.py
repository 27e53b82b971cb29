"""What the admin pages share: JSON shown as text, the links to a tree's editor and overview."""

import json
from urllib.parse import urlencode

from django.urls import reverse
from django.utils.html import format_html

from ..models import RECORD_UPDATE


def pretty_json(value):
    """JSON as an escaped, indented <pre> block."""
    text = json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)
    return format_html('<pre class="events-json">{}</pre>', text)


def tree_editor_url(form_id, event=RECORD_UPDATE):
    return reverse("admin:events_node_changelist") + "?" + urlencode({"form__id__exact": form_id, "event": event})


def tree_overview_url(form_id, event=RECORD_UPDATE):
    return reverse("admin:events_node_overview", kwargs={"form_id": form_id, "event": event})
