from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import JsonResponse


class ApiBodyLimitMiddleware:
    """Refuse API request bodies over EVENTS_API_MAX_BODY_BYTES with a 413 in the API's error shape."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path.startswith("/api/") and self.too_large(request):
            limit = settings.EVENTS_API_MAX_BODY_BYTES
            return JsonResponse(
                {"error": {"code": "payload_too_large",
                           "message": f"The request body is over {limit} bytes.", "details": {"limit": limit}}},
                status=413,
            )
        return self.get_response(request)

    def too_large(self, request):
        limit = settings.EVENTS_API_MAX_BODY_BYTES
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length:
            return length > limit
        if request.method in ("POST", "PUT", "PATCH"):
            # No length given (chunked): read it, within Django's own cap.
            try:
                return len(request.body) > limit
            except RequestDataTooBig:
                return True
        return False
