#!/usr/bin/env bash
# Serve the app and run the worker side by side; Ctrl-C stops both.
set -u
export DJANGO_DEBUG=${DJANGO_DEBUG:-1}
PY=${PY:-.venv/bin/python}
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-8000}
# The demo form's "Checking seat availability" step calls the built-in stand-in
# service (/demo/external-service/) on this very server, which then calls back:
# the HTTP action may reach loopback only when it is allowed explicitly.
export EVENTS_PUBLIC_URL=${EVENTS_PUBLIC_URL:-http://$HOST:$PORT}
export EVENTS_HTTP_ALLOWED_HOSTS=${EVENTS_HTTP_ALLOWED_HOSTS:-127.0.0.1,localhost}

"$PY" manage.py worker &
worker=$!
"$PY" manage.py runserver --noreload "$HOST:$PORT" &
web=$!

stop() {
  trap - INT TERM
  echo; echo "Stopping the web server ($web) and the worker ($worker)…"
  kill -TERM "$web" "$worker" 2>/dev/null
  wait "$web" "$worker" 2>/dev/null
  exit 0
}
trap stop INT TERM

sleep 2
cat <<MSG

  The form:          http://$HOST:$PORT/f/booking/
  Admin:             http://$HOST:$PORT/admin/   (user: admin, password: admin)
  Health:            http://$HOST:$PORT/healthz
  Emails are printed below, in this console. Press Ctrl-C to stop.

MSG
wait -n "$web" "$worker"
echo "A process stopped on its own; stopping the other."
stop
