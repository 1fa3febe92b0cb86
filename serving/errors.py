"""OpenAI-style errors: every failure the gateway or the local engine reports has this shape.

Clients written against the OpenAI API (the official `openai` package included) read
`{"error": {"message", "type", "param", "code"}}` and map the HTTP status to an exception type.
"""

from __future__ import annotations

import json
import logging

from aiohttp import web

log = logging.getLogger("kubetune.serving")

# HTTP status -> OpenAI error type, as the OpenAI API and vLLM name them.
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "internal_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout",
}


class ApiError(Exception):
    """An error answered to the client as OpenAI-style JSON with its HTTP status."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.headers = dict(headers or {})
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(status, "invalid_request_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self, headers: dict[str, str] | None = None) -> web.Response:
        return web.Response(
            status=self.status,
            body=json.dumps(self.body()).encode(),
            content_type="application/json",
            headers={**self.headers, **(headers or {})},
        )


def normalise_error_body(status: int, raw: bytes) -> dict:
    """An upstream error body in our shape: vLLM versions differ (`{"error": {...}}` or flat)."""
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
    elif isinstance(body, dict) and "message" in body:
        err = body
    else:
        text = raw.decode("utf-8", "replace").strip()[:500]
        err = {"message": text or f"upstream answered HTTP {status}"}
    return ApiError(
        status,
        str(err.get("message") or f"upstream answered HTTP {status}"),
        param=err.get("param"),
        code=None if err.get("code") is None else str(err.get("code")),
        type=err.get("type") if isinstance(err.get("type"), str) else None,
    ).body()


@web.middleware
async def openai_errors(request: web.Request, handler):
    """Turn every error, ours or aiohttp's (unknown route, body too large), into OpenAI JSON."""
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except web.HTTPRequestEntityTooLarge as exc:
        return ApiError(413, f"request body too large: {exc.text}", code="request_too_large").response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = exc.reason if exc.status in (404, 405) else (exc.text or exc.reason)
        if exc.status == 404:
            message = f"no route {request.method} {request.path}"
        return ApiError(exc.status, message).response()
    except ConnectionResetError:
        raise  # the client is gone: nobody to answer
    except Exception as exc:  # a bug or an engine crash: answer in our shape and keep serving
        log.exception("unhandled error on %s %s", request.method, request.path)
        return ApiError(500, f"internal error: {exc.__class__.__name__}: {exc}"[:500]).response()
