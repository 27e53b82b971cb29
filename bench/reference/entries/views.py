from django.http import HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods
from django_q.tasks import async_task

from .forms import EntryForm
from .models import Entry


class HttpResponseSeeOther(HttpResponseRedirect):
    status_code = 303


@require_http_methods(["GET", "POST"])
def entry_create(request):
    """(a) Validate a 5-field form, insert one row, redirect 303."""
    form = EntryForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        entry = form.save()
        return HttpResponseSeeOther(reverse("entry_detail", args=[entry.pk]))
    return render(request, "entries/entry_form.html", {"form": form})


@require_http_methods(["GET", "POST"])
def entry_create_async(request):
    """(b) The same, plus one django-q2 ``async_task``."""
    form = EntryForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        entry = form.save()
        async_task("entries.jobs.entry_created", entry.pk)
        return HttpResponseSeeOther(reverse("entry_detail", args=[entry.pk]))
    return render(request, "entries/entry_form.html", {"form": form})


@require_GET
def entry_detail(request, pk):
    """(c) A one-row read rendered by a tiny template."""
    return render(request, "entries/entry_detail.html", {"entry": get_object_or_404(Entry, pk=pk)})
