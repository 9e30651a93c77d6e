#!/usr/bin/env bash
# Runs the sandbox demo: gunicorn serving the portal (and its stand-ins) plus one job worker.
# Ctrl-C stops both promptly and quietly: the terminal's interrupt reaches this script only (the
# two servers run in process groups of their own), and the script stops them the graceful way
# (SIGTERM), with a short graceful timeout, since a demo has no long request worth waiting for.
set -euo pipefail
: "${BIN:=.venv/bin}" "${HOST:=127.0.0.1}" "${PORT:=5000}"
export PORTAL_SANDBOX=1 PORTAL_PUBLIC_URL="http://$HOST:$PORT"
export GUNICORN_GRACEFUL_TIMEOUT="${GUNICORN_GRACEFUL_TIMEOUT:-5}"

"$BIN/flask" --app wsgi portal init-db >/dev/null
accounts=$("$BIN/flask" --app wsgi portal create-demo-users)

set -m # each background job in a process group of its own: Ctrl-C reaches this script only
"$BIN/gunicorn" -c gunicorn.conf.py -b "$HOST:$PORT" --workers 2 --threads 16 wsgi:app &
web=$!
"$BIN/flask" --app wsgi portal worker &
worker=$!
set +m

stop() {
  trap - INT TERM EXIT
  kill -TERM "$web" "$worker" 2>/dev/null || true
  wait "$web" "$worker" 2>/dev/null || true
  echo "  Stopped."
  exit 0
}
trap stop INT TERM EXIT

for _ in $(seq 1 100); do curl -fs "$PORTAL_PUBLIC_URL/healthz" >/dev/null 2>&1 && break; sleep 0.2; done
cat <<MSG

  The checkout portal is running in sandbox mode (no real money moves).

  1. Open the demo Skilljar academy:   $PORTAL_PUBLIC_URL/sandbox/skilljar/academy
  2. Pick a course, "Proceed to Checkout": you land on the portal's review page.
  3. Pay on the sandbox Stripe page with 4242 4242 4242 4242, any future expiry, any CVC
     (4000 0000 0000 0002 is declined; "Back" cancels).
  4. You return to the academy's thank-you page with the purchase in SUCCESS.

  OpenLearning instead: open a demo course and press "Join now" (a freshly signed JWT is posted):
                                      $PORTAL_PUBLIC_URL/sandbox/openlearning/

  Cleeng (a media store's offers, free trials, subscriptions):
                                      $PORTAL_PUBLIC_URL/sandbox/cleeng/

  Merchant API, pay by link: open the demo ERP, "Send a pay link", then the caught email:
                                      $PORTAL_PUBLIC_URL/sandbox/merchant
                                      $PORTAL_PUBLIC_URL/sandbox/mail

  After a purchase, Stripe's dashboard: refund it (all or part) or have it disputed (then won
  or lost); the platform, the console and the alerts follow:
                                      $PORTAL_PUBLIC_URL/sandbox/stripe/dashboard

  Operator console (orders, refunds, branding, users): $PORTAL_PUBLIC_URL/admin/
  Demo accounts, one per role (sandbox only; role, email, password):
$(sed 's/^/    /' <<<"$accounts")

  Sandbox home (sessions, API calls): $PORTAL_PUBLIC_URL/sandbox/
  Health check:                       $PORTAL_PUBLIC_URL/healthz

  Ctrl-C stops the portal and the worker.
MSG
wait "$web"
