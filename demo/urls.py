from django.urls import path

from . import standin

app_name = "demo"

urlpatterns = [
    path("external-service/", standin.external_service, name="external_service"),
    path("loyalty-service/", standin.loyalty_service, name="loyalty_service"),
]
