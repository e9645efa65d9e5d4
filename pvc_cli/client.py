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
from urllib.parse import urlsplit

import click
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
    """The connection settings; ``click.UsageError`` (exit 2) for a config file that is named but missing or
    unreadable, or an API URL that is not ``http(s)://host[:port]``."""
    named = config or os.environ.get("PVC_CLI_CONFIG")
    path = Path(named or DEFAULT_CONFIG).expanduser()
    file: dict[str, Any] = {}
    if path.is_file():
        try:
            file = tomllib.loads(path.read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise click.UsageError(f"cannot read the CLI config file {path}: {exc}") from exc
    elif named:
        source = "--config" if config else "PVC_CLI_CONFIG"
        raise click.UsageError(f"the CLI config file {path} ({source}) does not exist")
    chosen = (url or os.environ.get("PVC_API_URL") or file.get("api_url") or DEFAULT_URL).rstrip("/")
    parts = urlsplit(chosen)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise click.UsageError(f"API URL {chosen!r} is not http(s)://host[:port] (from --api-url, PVC_API_URL or "
                               f"the config file's api_url)")
    return Connection(url=chosen, token=token or os.environ.get("PVC_API_TOKEN") or file.get("token") or "")


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
        except requests.RequestException as exc:
            raise Unreachable(f"cannot talk to the pvc API at {self.base}: {exc}") from exc
        try:
            return self.session.request(method, url, timeout=self.timeout, **kwargs)
        except requests.ConnectionError as exc:
            raise Unreachable(f"cannot reach the pvc API at {self.base}: is pvc-api running? "
                              f"(set --api-url or PVC_API_URL)") from exc
        except requests.Timeout as exc:
            raise Unreachable(f"the pvc API at {self.base} did not answer within {self.timeout:g} s") from exc
        except requests.RequestException as exc:  # a URL requests cannot use, a TLS failure, a broken answer
            raise Unreachable(f"cannot talk to the pvc API at {self.base}: {exc}") from exc

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._send(method, path, **kwargs)
        try:
            body = response.json() if response.content else None
        except ValueError:
            # Not the pvc API (a proxy's error page, Flower, a web server): say where we asked and what answered.
            kind = response.headers.get("Content-Type", "no content type").split(";")[0]
            raise ApiError(response.status_code, "not_pvc_api",
                           f"{method} {response.url} answered HTTP {response.status_code} with {kind}, not the pvc "
                           f"API's JSON: is the API URL ({self.base.removesuffix('/api/v1')}) right?") from None
        if response.status_code >= 400:
            body = body if isinstance(body, dict) else {}
            code, message = body.get("error", "http_error"), body.get("message") or response.reason
            if response.status_code == 404 and code == "not_found":
                message = f"{message} (at {self.base.removesuffix('/api/v1')}: is the API URL right?)"
            raise ApiError(response.status_code, code, message, body.get("details"))
        return body

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: dict | None = None) -> Any:
        return self.request("POST", path, json=body or {})

    def put(self, path: str, body: dict | None = None) -> Any:
        return self.request("PUT", path, json=body or {})

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)
