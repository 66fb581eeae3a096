"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.

Every failure a client can cause becomes an `ApiError` with a status and a one-line message; the
app's handlers turn it (and anything unexpected) into that JSON, so no traceback ever reaches a
client. Unexpected exceptions are logged on the server with their traceback and answered 500.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse
from pydantic import ValidationError

TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(
            self.message, TYPES.get(self.status, "server_error"), self.param, self.code
        )

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None):
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param, code)


def from_validation(e: ValidationError) -> ApiError:
    """The first pydantic error as one line naming the field (never the input's repr dump)."""
    err = e.errors(include_url=False, include_input=False)[0]
    path = ".".join(str(p) for p in err["loc"])
    param = str(err["loc"][0]) if err["loc"] else None
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown field (not an OpenAI request field nor an lmlab extension)"
    return bad_request(f"{path}: {msg}" if path else msg, param=param, code="invalid_value")
