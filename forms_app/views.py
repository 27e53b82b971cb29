from django.http import HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_GET, require_http_methods
from django_htmx.http import HttpResponseClientRedirect

from .builder import build_form_class, record_data
from .models import Form, Record
from .services import record_submit
from .waiting import record_progress


class HttpResponseSeeOther(HttpResponseRedirect):
    status_code = 303


@require_http_methods(["GET", "POST"])
def form_detail(request, slug):
    form = get_object_or_404(Form.objects.published(), slug=slug)
    submission = build_form_class(form)(request.POST if request.method == "POST" else None)
    if request.method == "POST" and submission.is_valid():
        record = record_submit(form=form, data=record_data(form, submission.cleaned_data))
        return HttpResponseSeeOther(record.get_absolute_url())
    return render(request, "forms_app/form_detail.html", {"form_obj": form, "submission": submission})


@require_GET
def record_wait(request, token):
    record = get_object_or_404(Record.objects.select_related("form"), token=token)
    progress = record_progress(record)
    if progress.state == "done" and progress.redirect_url:
        return HttpResponseRedirect(progress.redirect_url)
    return render(request, "forms_app/record_wait.html", {"record": record, "progress": progress})


@require_GET
def record_status(request, token):
    record = get_object_or_404(Record.objects.select_related("form"), token=token)
    progress = record_progress(record)
    if progress.state == "done" and progress.redirect_url:
        return HttpResponseClientRedirect(progress.redirect_url)
    return render(request, "forms_app/record_wait.html#status", {"record": record, "progress": progress})
