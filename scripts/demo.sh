#!/usr/bin/env bash
# Runs the sandbox demo: gunicorn serving the portal (and its stand-ins) plus one job worker.
set -euo pipefail
: "${BIN:=.venv/bin}" "${HOST:=127.0.0.1}" "${PORT:=5000}"
export PORTAL_SANDBOX=1 PORTAL_PUBLIC_URL="http://$HOST:$PORT"
"$BIN/gunicorn" -c gunicorn.conf.py -b "$HOST:$PORT" --workers 2 --threads 16 wsgi:app &
web=$!
"$BIN/flask" --app wsgi portal worker &
worker=$!
trap 'kill $web $worker 2>/dev/null; wait 2>/dev/null' EXIT INT TERM
for _ in $(seq 1 50); do curl -fs "$PORTAL_PUBLIC_URL/healthz" >/dev/null 2>&1 && break; sleep 0.2; done
cat <<MSG

  The checkout portal is running in sandbox mode (no real money moves).

  1. Open the demo Skilljar academy:   $PORTAL_PUBLIC_URL/sandbox/skilljar/academy
  2. Pick a course, "Proceed to Checkout": you land on the portal's review page.
  3. Pay on the sandbox Stripe page with 4242 4242 4242 4242, any future expiry, any CVC
     (4000 0000 0000 0002 is declined; "Back" cancels).
  4. You return to the academy's thank-you page with the purchase in SUCCESS.

  OpenLearning instead: open a demo course and press "Join now" (a freshly signed JWT is posted):
                                      $PORTAL_PUBLIC_URL/sandbox/openlearning/

  Merchant API, pay by link: open the demo ERP, "Send a pay link", then the caught email:
                                      $PORTAL_PUBLIC_URL/sandbox/merchant
                                      $PORTAL_PUBLIC_URL/sandbox/mail

  After a purchase, Stripe's dashboard: refund it (all or part) or have it disputed (then won
  or lost); the platform, the console and the alerts follow:
                                      $PORTAL_PUBLIC_URL/sandbox/stripe/dashboard

  Sandbox home (sessions, API calls): $PORTAL_PUBLIC_URL/sandbox/
  Health check:                       $PORTAL_PUBLIC_URL/healthz

  Ctrl-C stops the portal and the worker.
MSG
wait $web
