"""OpenLearning's enrolment API, called with the course administrator's API key:
- class tokens: `POST {base}/enrolments/?api_key=KEY`, form body `class={class}&user={sub}`;
- program tokens: `POST {base}/institutions/{aud}/programs/{program}/enrolments/?api_key=KEY`,
  JSON body `{"user": sub}`.
A learner who is already enrolled counts as enrolled.
"""

from __future__ import annotations

from urllib.parse import quote, urlencode

from portal.config import Settings
from portal.http import HttpClient, classify

ENROLLED = "enrolled"
ALREADY_ENROLLED = "already enrolled"


class OpenLearningClient:
    def __init__(self, settings: Settings, recorder=None):
        self.base = settings.openlearning_api_base
        self.api_key = settings.openlearning_api_key or ""
        self.http = HttpClient(
            "openlearning",
            connect_timeout=settings.http_connect_timeout,
            read_timeout=settings.http_read_timeout,
            recorder=recorder,
        )

    def _url(self, path: str) -> str:
        return f"{self.base}{path}?{urlencode({'api_key': self.api_key})}"

    def enrol_in_class(self, class_id: str, user_id: str, *, order_id=None) -> str:
        """ENROLLED or ALREADY_ENROLLED; raises UpstreamError otherwise."""
        response = self.http.request(
            "POST",
            self._url("/enrolments/"),
            data={"class": class_id, "user": user_id},
            headers={"Accept": "application/json"},
            order_id=order_id,
        )
        return _enrolment(response, "OpenLearning class enrolment")

    def enrol_in_program(
        self, institution: str, program: str, user_id: str, *, order_id=None
    ) -> str:
        path = (
            f"/institutions/{quote(institution, safe='')}/programs/{quote(program, safe='')}"
            "/enrolments/"
        )
        response = self.http.request(
            "POST",
            self._url(path),
            json={"user": user_id},
            headers={"Accept": "application/json"},
            order_id=order_id,
        )
        return _enrolment(response, "OpenLearning program enrolment")


def _enrolment(response, what: str) -> str:
    if response.ok:
        return ENROLLED
    status = response.status_code
    if status == 409 or (status in {400, 422} and "already" in response.text.lower()):
        return ALREADY_ENROLLED
    raise classify(response, what)
