import logging

from django.conf import settings
from django.http import Http404, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext
from django.views.decorators.http import require_GET, require_http_methods
from django_htmx.http import HttpResponseClientRedirect

from events.middleware import DATABASE_UNAVAILABLE
from events.throttle import Throttle

from .builder import record_data
from .definitions import published_form, submission_class
from .models import Record, token_url
from .services import record_submit
from .waiting import record_progress, submission_of

logger = logging.getLogger("forms_app.views")

NOT_SAVED = _("Your answers were not saved, please try again: we cannot reach our database just now.")
NOT_SHOWN = _("This form cannot be shown just now, please try again in a moment.")

FORM_POSTS = Throttle("form-posts", "EVENTS_FORM_POST_LIMIT", "EVENTS_FORM_POST_WINDOW_SECONDS")

# The last definition (with its fields) of each form this process showed: while the database
# cannot be reached, a submitted form is shown again from it, with what was typed.
last_known_forms = {}


class HttpResponseSeeOther(HttpResponseRedirect):
    status_code = 303


@require_http_methods(["GET", "POST"])
def form_detail(request, slug):
    try:
        form, version = published_form(slug)
        last_known_forms[slug] = form
        if request.method == "POST" and (wait := FORM_POSTS.hit(request)):
            return form_throttled(request, form, wait)
        submission = submission_class(form)(request.POST if request.method == "POST" else None)
        if request.method == "POST" and submission.is_valid():
            record = record_submit(form=form, data=record_data(form, submission.cleaned_data), version=version)
            return HttpResponseSeeOther(record.get_absolute_url())
    except DATABASE_UNAVAILABLE as error:
        return form_unavailable(request, slug, error)
    return render(request, "forms_app/form_detail.html", {"form_obj": form, "submission": submission})


def form_throttled(request, form, wait):
    """429: the client sent this form too often (EVENTS_FORM_POST_LIMIT). The form again, with what was typed."""
    logger.info("Form %s: too many posts from one address; answered 429 (try again in %s s)", form.slug, wait)
    context = {
        "form_obj": form,
        "submission": submission_class(form)(request.POST),
        "throttled": too_many_message(wait),
    }
    response = render(request, "forms_app/form_detail.html", context, status=429)
    response["Retry-After"] = str(wait)
    return response


def too_many_message(seconds):
    return ngettext(
        "Your answers were not saved: too many forms were sent from your address in a short time. "
        "Please wait %(seconds)d second, then send the form again.",
        "Your answers were not saved: too many forms were sent from your address in a short time. "
        "Please wait %(seconds)d seconds, then send the form again.",
        seconds,
    ) % {"seconds": seconds}


def form_unavailable(request, slug, error):
    """503 while the database cannot be reached: the form again, holding what was typed; nothing is lost.

    Without a definition of the form in this process, what was typed is kept in the page
    (hidden fields that a "Try again" button sends again).
    """
    logger.warning("Form %s: the database cannot be reached (%s); answered 503", slug, error)
    form = last_known_forms.get(slug)
    posted = request.POST if request.method == "POST" else None
    kept = (
        []
        if posted is None
        else [(name, value) for name, values in posted.lists() if name != "csrfmiddlewaretoken" for value in values]
    )
    context = {
        "form_obj": form,
        "submission": submission_class(form)(posted) if form is not None else None,
        "kept": kept,
        "unavailable": NOT_SAVED if posted is not None else NOT_SHOWN,
    }
    response = render(request, "forms_app/form_detail.html", context, status=503)
    response["Retry-After"] = str(settings.EVENTS_UNAVAILABLE_RETRY_AFTER_SECONDS)
    return response


@require_GET
def record_wait(request, token):
    try:
        record, run, rows = submission_of(token)
        progress = record_progress(record, run, rows)
    except Record.DoesNotExist:
        raise Http404(_("No such record.")) from None
    except DATABASE_UNAVAILABLE as error:
        return record_unavailable(request, token, error)
    if progress.state == "done" and progress.redirect_url:
        return HttpResponseRedirect(progress.redirect_url)
    status_url = token_url("forms_app:record_status", token)
    return render(
        request, "forms_app/record_wait.html", {"record": record, "progress": progress, "status_url": status_url}
    )


@require_GET
def record_status(request, token):
    try:
        record, run, rows = submission_of(token)
        progress = record_progress(record, run, rows)
    except Record.DoesNotExist:
        raise Http404(_("No such record.")) from None
    except DATABASE_UNAVAILABLE as error:
        return record_unavailable(request, token, error)
    if progress.state == "done" and progress.redirect_url:
        return HttpResponseClientRedirect(progress.redirect_url)
    if (shown := request.GET.get("shown")) and shown == progress.fingerprint():
        return HttpResponse(status=204)  # the page shows this already: htmx swaps nothing and polls on
    # The poll's own address, as the next poll's (reversing it took a tenth of a poll's time).
    context = {"record": record, "progress": progress, "swap": True, "status_url": request.path}
    return render(request, "forms_app/record_wait.html#status", context)


def record_unavailable(request, token, error):
    """503 while the database cannot be reached: the waiting page says so and tries again.

    The htmx poll gets an empty 503, which htmx does not swap in: the page keeps what it
    showed and polls again at its next tick.
    """
    logger.warning("Waiting page: the database cannot be reached (%s); answered 503", error)
    retry_after = settings.EVENTS_UNAVAILABLE_RETRY_AFTER_SECONDS
    if request.htmx:
        response = HttpResponse(status=503)
    else:
        response = render(request, "forms_app/record_unavailable.html", {"retry_after": retry_after}, status=503)
    response["Retry-After"] = str(retry_after)
    return response
