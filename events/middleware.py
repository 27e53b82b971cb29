from django.conf import settings
from django.http import JsonResponse


class ApiBodyLimitMiddleware:
    """Refuse API request bodies over EVENTS_API_MAX_BODY_BYTES with a 413 in the API's error shape."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path.startswith("/api/"):
            limit = settings.EVENTS_API_MAX_BODY_BYTES
            try:
                length = int(request.META.get("CONTENT_LENGTH") or 0)
            except ValueError:
                length = 0
            if length > limit:
                return JsonResponse(
                    {"error": {"code": "payload_too_large",
                               "message": f"The request body is over {limit} bytes.", "details": {"limit": limit}}},
                    status=413,
                )
        return self.get_response(request)
