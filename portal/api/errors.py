"""The merchant API's one error shape: `{"error": {"code", "message", "param"}}` with the status
that fits, for every failure (never an HTML page, never a bare 500)."""

from __future__ import annotations

from flask import jsonify


class ApiError(Exception):
    """A request the API refuses; `code` is stable for programs, `message` is for people."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message, "param": self.param}}

    def response(self):
        response = jsonify(self.body())
        response.status_code = self.status
        return response


def not_found(what: str = "order", param: str | None = "id") -> ApiError:
    return ApiError(404, "resource_missing", f"No such {what}.", param)
