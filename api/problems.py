"""Errors as RFC 9457 problem details (``application/problem+json``), never a bare 500 for bad
input: a workflow's problems carry the same located issues the CLI prints."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from dagwright.errors import DagwrightError, PlanError, RunNotFound

log = logging.getLogger(__name__)

MEDIA_TYPE = "application/problem+json"


class Problem(Exception):
    """An HTTP error with a title, a detail and, for invalid workflows, the located issues."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str = "",
        *,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail or title)
        self.status, self.title, self.detail = status, title, detail
        self.errors, self.headers = errors, headers

    def body(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": "about:blank",
            "title": self.title,
            "status": self.status,
            "detail": self.detail or self.title,
        }
        if instance:
            body["instance"] = instance
        if self.errors is not None:
            body["errors"] = self.errors
        return body


def response(problem: Problem, request: Request | None = None) -> JSONResponse:
    instance = request.url.path if request is not None else None
    return JSONResponse(
        problem.body(instance),
        status_code=problem.status,
        headers=problem.headers,
        media_type=MEDIA_TYPE,
    )


def invalid(exc: PlanError) -> Problem:
    """422 for a workflow, plan or inputs that fail validation (nothing was recorded)."""
    issues = sorted(exc.issues, key=lambda i: (i.line is None, i.line or 0))
    count = len(issues)
    return Problem(
        422,
        "Invalid workflow",
        f"{count} problem{'s' if count != 1 else ''}: nothing was run or recorded",
        errors=[i.as_dict() for i in issues],
    )


def _body_issues(exc: RequestValidationError) -> list[dict[str, Any]]:
    issues = []
    for e in exc.errors():
        if e.get("type") == "json_invalid":  # its loc is a position in the text, not a field
            where = (e.get("ctx") or {}).get("error", "")
            issues.append({"field": None, "message": f"the body is not JSON: {where}".rstrip(": ")})
            continue
        loc = [str(p) for p in e.get("loc", ()) if p != "body"]
        issues.append({"field": ".".join(loc) or None, "message": str(e.get("msg", ""))})
    return issues


def install(app: FastAPI) -> None:
    """The exception handlers that turn every error into a problem document."""

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return response(exc, request)

    @app.exception_handler(PlanError)
    async def _plan(request: Request, exc: PlanError) -> JSONResponse:
        return response(invalid(exc), request)

    @app.exception_handler(RunNotFound)
    async def _not_found(request: Request, exc: RunNotFound) -> JSONResponse:
        return response(Problem(404, "Run not found", str(exc)), request)

    @app.exception_handler(RequestValidationError)
    async def _body(request: Request, exc: RequestValidationError) -> JSONResponse:
        problem = Problem(422, "Invalid request", "the request does not match the API",
                          errors=_body_issues(exc))  # fmt: skip
        return response(problem, request)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        title = {404: "Not found", 405: "Method not allowed"}.get(exc.status_code, "HTTP error")
        problem = Problem(
            exc.status_code, title, str(exc.detail), headers=dict(exc.headers or {}) or None
        )
        return response(problem, request)

    @app.exception_handler(DagwrightError)
    async def _ours(request: Request, exc: DagwrightError) -> JSONResponse:
        return response(Problem(409, "Not possible now", str(exc)), request)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s", request.method, request.url.path)
        return response(Problem(500, "Internal error", "see the server's log"), request)


__all__ = ["MEDIA_TYPE", "Problem", "install", "invalid", "response"]
