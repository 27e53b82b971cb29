from django.urls import path

from . import views

app_name = "forms_app"

urlpatterns = [
    path("f/<slug:slug>/", views.form_detail, name="form_detail"),
    path("r/<str:token>/", views.record_wait, name="record_wait"),
    path("r/<str:token>/status/", views.record_status, name="record_status"),
]
