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

stop() {  # stop [exit status]
  trap - INT TERM
  echo; echo "Stopping the web server ($web) and the worker ($worker)…"
  kill -TERM "$web" "$worker" 2>/dev/null
  wait "$web" "$worker" 2>/dev/null
  exit "${1:-0}"
}
trap stop INT TERM

sleep 2
cat <<MSG

  The form:          http://$HOST:$PORT/f/booking/
  Admin:             http://$HOST:$PORT/admin/   (user: admin, password: admin)
  Health:            http://$HOST:$PORT/healthz
  Emails are printed below, in this console. Press Ctrl-C to stop.

MSG
# Ctrl-C normally runs stop() above and never comes back here. It does come back here when this
# shell could not take SIGINT (started with it ignored, as a background job is) or when bash left it
# to the process it waited for: then the worker, which stops on SIGINT, ends with status 0. Only a
# process that ends any other way stopped on its own.
wait -n "$web" "$worker"
status=$?
if ! kill -0 "$worker" 2>/dev/null; then ended="The worker"; else ended="The web server"; fi
if [ "$status" -eq 0 ] || [ "$status" -eq 130 ] || [ "$status" -eq 143 ]; then
  echo "$ended stopped when asked to (Ctrl-C or a stop signal); stopping the other."
  stop 0
fi
echo "$ended stopped on its own (exit status $status); stopping the other."
stop 1
