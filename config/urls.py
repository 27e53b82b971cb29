from django.apps import apps
from django.contrib import admin
from django.db import connection
from django.http import JsonResponse
from django.urls import include, path
from django.views.decorators.http import require_GET

from events.api import api


@require_GET
def healthz(request):
    """200 when the database answers; cheap enough for a load balancer."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception:
        return JsonResponse({"status": "unavailable"}, status=503)
    return JsonResponse({"status": "ok"})


urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", healthz, name="healthz"),
    path("api/", api.urls),
    path("", include("forms_app.urls")),
]
if apps.is_installed("demo"):  # development, or EVENTS_DEMO_SERVICE (config/settings.py)
    urlpatterns.append(path("demo/", include("demo.urls")))
