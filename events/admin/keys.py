"""API keys: created here, shown once, stored hashed, revocable."""

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.cache import add_never_cache_headers
from django.utils.html import format_html
from django.views.decorators.http import require_POST

from ..models import (
    ApiKey,
)

# API keys ------------------------------------------------------------------------------------------


class ApiKeyStateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return [("active", "Active"), ("revoked", "Revoked")]

    def queryset(self, request, queryset):
        if self.value() == "active":
            return queryset.active()
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        return queryset


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Adding a key asks only for a name; the key is shown once, on the page after saving, and never again.

    Only its hash is stored, so no page can show it later: a lost key is revoked and replaced.
    """

    list_display = ("name", "prefix_display", "state", "created_at", "last_used_at", "revoked_at")
    list_filter = (ApiKeyStateFilter,)
    search_fields = ("name", "prefix")
    actions = ["revoke_keys"]
    change_form_template = "admin/events/apikey/change_form.html"
    shown_fields = ["name", "prefix_display", "state", "created_at", "last_used_at", "revoked_at"]

    @admin.display(description="key starts with", ordering="prefix")
    def prefix_display(self, key):
        return f"{key.prefix}…"

    @admin.display(description="state", ordering="revoked_at")
    def state(self, key):
        if key.is_active:
            return "active"
        return format_html('<strong class="events-revoked">{}</strong>', "revoked")

    def get_fields(self, request, obj=None):
        return ["name"] if obj is None else self.shown_fields

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else self.shown_fields[1:]

    def save_model(self, request, obj, form, change):
        if change:
            return super().save_model(request, obj, form, change)
        issued, raw = ApiKey.issue(name=obj.name)
        for field in ApiKey._meta.concrete_fields:
            setattr(obj, field.attname, getattr(issued, field.attname))
        obj._state.adding, obj._state.db = False, issued._state.db
        obj.issued_key = raw  # lives for this request only; response_add shows it
        return None

    def response_add(self, request, obj, post_url_continue=None):
        """The one page that ever shows the key: rendered in answer to the POST, not stored, not cached."""
        raw = getattr(obj, "issued_key", None)
        if raw is None:
            return super().response_add(request, obj, post_url_continue)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "API key created",
            "key": obj,
            "raw_key": raw,
            "change_url": reverse("admin:events_apikey_change", args=[obj.pk]),
            "changelist_url": reverse("admin:events_apikey_changelist"),
        }
        response = TemplateResponse(request, "admin/events/apikey/created.html", context)
        add_never_cache_headers(response)
        return response

    @admin.action(description="Revoke selected keys", permissions=["change"])
    def revoke_keys(self, request, queryset):
        active = list(queryset.active())
        for key in active:
            key.revoke()
        messages.success(request, f"Revoked {len(active)} key(s).")
        already = queryset.count() - len(active)
        if already:
            messages.warning(request, f"{already} key(s) were already revoked.")

    def get_urls(self):
        return [
            path("<path:object_id>/revoke/", self.admin_site.admin_view(self.revoke_view), name="events_apikey_revoke"),
            *super().get_urls(),
        ]

    def revoke_view(self, request, object_id):
        return require_POST(self._revoke)(request, object_id)

    def _revoke(self, request, object_id):
        key = self.get_object(request, object_id)
        if key is None:
            raise Http404("No such key.")
        if not self.has_change_permission(request, key):
            raise PermissionDenied
        if key.is_active:
            key.revoke()
            messages.success(request, f"API key {key} revoked: it no longer authenticates.")
        else:
            messages.warning(request, f"API key {key} was already revoked.")
        return HttpResponseRedirect(reverse("admin:events_apikey_change", args=[key.pk]))

    def change_view(self, request, object_id, form_url="", extra_context=None):
        key = self.get_object(request, object_id)
        extra_context = {**(extra_context or {})}
        if key is not None and key.is_active and self.has_change_permission(request, key):
            extra_context["revoke_url"] = reverse("admin:events_apikey_revoke", args=[key.pk])
        return super().change_view(request, object_id, form_url, extra_context)
