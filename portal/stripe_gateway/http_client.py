"""The HTTP client the Stripe SDK sends its requests with."""

from __future__ import annotations

import time

import stripe

from portal.observability.request_ids import outbound_headers


class StripeHttpClient(stripe.RequestsClient):
    """The SDK's requests client, plus: this request's id on every call, and a back-off on 429
    (Stripe's rate limit), which the SDK itself does not retry. A 429 means Stripe did nothing,
    and creates carry an idempotency key, so sending the same request again is safe."""

    RATE_LIMIT_RETRIES = 3
    BASE_DELAY = 0.5
    MAX_DELAY = 4.0
    sleep = staticmethod(time.sleep)

    def request(self, method, url, headers, post_data=None):
        headers = outbound_headers(headers)
        attempt = 0
        while True:
            content, status, response_headers = super().request(method, url, headers, post_data)
            if status != 429 or attempt >= self.RATE_LIMIT_RETRIES:
                return content, status, response_headers
            attempt += 1
            self.sleep(self._delay(attempt, response_headers))

    def _delay(self, attempt: int, response_headers) -> float:
        delay = self.BASE_DELAY * 2 ** (attempt - 1)
        retry_after = (response_headers or {}).get("Retry-After")
        if retry_after:
            try:
                delay = max(delay, float(retry_after))
            except ValueError:
                pass
        return min(delay, self.MAX_DELAY)
