"""The JSON API as a test calls it: its URLs, and a Django test client that speaks JSON."""

import json

CALLBACK_URL = "/api/external-events/callback/"


def progress_url(task_id):
    return f"/api/event-workflow-tasks/{task_id}"


class JsonApi:
    """A Django test client speaking JSON to /api/, running after-commit work (the resume job) at once."""

    def __init__(self, client, capture):
        self.client = client
        self.capture = capture

    def _send(self, method, url, body=None, *, key=None, header="bearer", raw=None, headers=None):
        all_headers = dict(headers or {})
        if key is not None:
            if header == "x-api-key":
                all_headers["X-Api-Key"] = key
            else:
                all_headers["Authorization"] = f"{header} {key}"
        data = raw if raw is not None else (json.dumps(body) if body is not None else "")
        with self.capture(execute=True):
            return getattr(self.client, method)(url, data=data, content_type="application/json", headers=all_headers)

    def post(self, url, body=None, **kwargs):
        return self._send("post", url, body, **kwargs)

    def put(self, url, body=None, **kwargs):
        return self._send("put", url, body, **kwargs)

    def get(self, url, *, key=None, header="bearer"):
        headers = {}
        if key is not None:
            headers = {"X-Api-Key": key} if header == "x-api-key" else {"Authorization": f"{header} {key}"}
        with self.capture(execute=True):
            return self.client.get(url, headers=headers)
