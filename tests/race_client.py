"""One racing OS process for tests/test_races.py: `python tests/race_client.py SPEC_JSON`.

It prepares its HTTP request, prints "ready", waits for a line on stdin (the parent releases every
racer at once: a barrier across processes), sends the request without following redirects, and
prints the outcome as JSON. Kept free of the portal and of pytest so that it starts quickly."""

from __future__ import annotations

import json
import sys

import requests


def main() -> None:
    spec = json.loads(sys.argv[1])
    session = requests.Session()
    request = session.prepare_request(
        requests.Request(
            spec["method"], spec["url"], data=spec.get("body"), headers=spec.get("headers") or {}
        )
    )
    print("ready", flush=True)
    sys.stdin.readline()
    try:
        response = session.send(request, allow_redirects=False, timeout=60)
        outcome = {"status": response.status_code, "location": response.headers.get("Location")}
    except requests.RequestException as exc:
        outcome = {"status": None, "error": repr(exc)}
    print(json.dumps(outcome), flush=True)


if __name__ == "__main__":
    main()
