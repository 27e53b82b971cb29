from django.urls import path

from . import views

app_name = "forms_app"

urlpatterns = [
    path("f/<slug:slug>/", views.form_detail, name="form_detail"),
    # Tokens are URL-safe base64 (secrets.token_urlsafe): anything else, a NUL byte say, is a 404.
    path("r/<slug:token>/", views.record_wait, name="record_wait"),
    path("r/<slug:token>/status/", views.record_status, name="record_status"),
]
