"""HTTP client of the pvc API for the CLI: connection settings, requests, and errors a person can act on.

Connection, first found wins: ``--api-url`` / ``--token`` flags, ``PVC_API_URL`` / ``PVC_API_TOKEN``, then the
config file (``--config``, ``$PVC_CLI_CONFIG`` or ``~/.config/pvc/cli.toml``, keys ``api_url`` and ``token``),
then ``http://127.0.0.1:7370`` with no token.

Every mutation carries an ``Idempotency-Key`` (one per request of this invocation), and a request whose connection
broke or timed out is sent once more with the same key: the API answers a retry with the job the first attempt
created, so a retried command never makes two jobs.
"""

from __future__ import annotations

import itertools
import os
import tomllib
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

__all__ = ["ApiError", "Client", "Unreachable", "resolve"]

DEFAULT_URL = "http://127.0.0.1:7370"
#: Seconds one HTTP request may take (a long-poll asks for at most 10 s of waiting, so this stays above it).
CLI_HTTP_TIMEOUT = 20.0
DEFAULT_CONFIG = Path("~/.config/pvc/cli.toml")


class ApiError(Exception):
    """The API answered with an error; ``code`` is its stable error code."""

    def __init__(self, status: int, code: str, message: str, details: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details or {}


class Unreachable(Exception):
    """No answer from the API at all."""


@dataclass
class Connection:
    url: str
    token: str


def resolve(url: str | None, token: str | None, config: str | None) -> Connection:
    path = Path(config or os.environ.get("PVC_CLI_CONFIG") or DEFAULT_CONFIG).expanduser()
    file: dict[str, Any] = {}
    if path.is_file():
        try:
            file = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ApiError(0, "bad_config", f"cannot read {path}: {exc}") from exc
    elif config:
        raise ApiError(0, "bad_config", f"config file {path} does not exist")
    return Connection(url=(url or os.environ.get("PVC_API_URL") or file.get("api_url") or DEFAULT_URL).rstrip("/"),
                      token=token or os.environ.get("PVC_API_TOKEN") or file.get("token") or "")


class Client:
    def __init__(self, connection: Connection, timeout: float = CLI_HTTP_TIMEOUT) -> None:
        self.base = f"{connection.url}/api/v1"
        self.timeout = timeout
        self.session = requests.Session()
        if connection.token:
            self.session.headers["X-Api-Key"] = connection.token
        self._keys = (f"{uuid.uuid4()}-{n}" for n in itertools.count(1))

    def _send(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """One request, sent again once when the connection broke or timed out (a mutation with the same
        ``Idempotency-Key``, so the API answers the retry with the job the first attempt created)."""
        if method != "GET":
            kwargs["headers"] = {**kwargs.get("headers", {}), "Idempotency-Key": next(self._keys)}
        url = f"{self.base}{path}"
        try:
            return self.session.request(method, url, timeout=self.timeout, **kwargs)
        except (requests.ConnectionError, requests.Timeout):
            pass  # once more, with the same key
        try:
            return self.session.request(method, url, timeout=self.timeout, **kwargs)
        except requests.ConnectionError as exc:
            raise Unreachable(f"cannot reach the pvc API at {self.base}: is pvc-api running? "
                              f"(set --api-url or PVC_API_URL)") from exc
        except requests.Timeout as exc:
            raise Unreachable(f"the pvc API at {self.base} did not answer within {self.timeout:g} s") from exc

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._send(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                body = response.json()
                raise ApiError(response.status_code, body.get("error", "error"), body.get("message", response.text),
                               body.get("details"))
            except ValueError:
                raise ApiError(response.status_code, "http_error", response.text[:200] or response.reason) from None
        return response.json() if response.content else None

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: dict | None = None) -> Any:
        return self.request("POST", path, json=body or {})

    def put(self, path: str, body: dict | None = None) -> Any:
        return self.request("PUT", path, json=body or {})

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)
