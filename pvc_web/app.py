"""``create_app(settings)``: the Flask application factory of ``pvc-api``.

Every route lives under ``/api/v1``; the OpenAPI 3 document is ``/api/v1/openapi.json``, Swagger UI is
``/api/v1/docs`` and the live status page ``/api/v1/status`` (``pvc_web.pages``; all behind the token; a browser
is asked for it through Basic auth, which only these pages accept: ``pvc_web.auth``).
"""

from __future__ import annotations

import threading

from flask import Flask, Response, g

from pvc_tasks.app import configure
from pvc_tasks.config import Settings
from pvc_web import access, auth, errors, limits, metrics, names, pages
from pvc_web.blueprint import API_PREFIX, PvcApi
from pvc_web.cluster import ClusterHandle
from pvc_web.events import EventFeed
from pvc_web.probe import HealthProbe
from pvc_web.routes import cluster, events, health, jobs, nodes, sriov, vms

__all__ = ["create_app"]


def create_app(settings: Settings, handle: ClusterHandle | None = None) -> Flask:
    app = Flask("pvc_web")
    app.config.update(
        API_TITLE="pvc-orchestrator API",
        API_VERSION="v1",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX=API_PREFIX,
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="docs",
        OPENAPI_SWAGGER_UI_URL=pages.SWAGGER_UI_URL,  # served from the package: no CDN (pvc_web.pages)
        MAX_CONTENT_LENGTH=settings.api_max_body,
        API_SPEC_OPTIONS={
            "info": {"description": "Jobs for VM lifecycle on a pvc cluster. Authenticate with the X-Api-Key "
                                    "header. Mutations answer 202 with a Location of the job."},
            "components": {"securitySchemes": {"ApiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key"}}},
            "security": [{"ApiKey": []}],
        },
    )
    # Every task module, so that ending a job from here (cancel) runs its family's end-of-job ops too.
    configure(settings).loader.import_default_modules()
    if handle is None:
        handle = ClusterHandle(settings)
        handle.start()
    app.extensions["pvc"] = handle
    app.extensions["pvc_settings"] = settings
    app.extensions["pvc_waiters"] = threading.BoundedSemaphore(max(1, settings.api_threads // 2))
    app.extensions["pvc_events"] = EventFeed(handle)
    app.extensions["pvc_streams"] = threading.BoundedSemaphore(max(1, settings.api_threads // 4))
    app.extensions["pvc_metrics"] = metrics.registry_for(handle, settings.broker_url)
    app.extensions["pvc_health"] = HealthProbe(handle, settings).start()
    access.install(app)
    auth.install(app, auth.TokenTable(settings.api_tokens))
    limits.install(app)
    names.install(app)
    errors.register(app)
    api = PvcApi(app)
    app.register_blueprint(pages.blp)
    app.register_blueprint(metrics.blp)
    for module in (health, cluster, nodes, vms, jobs, sriov, events):
        api.register_blueprint(module.blp, url_prefix=f"{API_PREFIX}{module.PREFIX}")

    @app.after_request
    def read_from(response: Response) -> Response:
        """Where a list came from (``model``: the read model behind its barrier; ``zookeeper``: read directly)."""
        if "pvc_read_from" in g:
            response.headers["X-PVC-Read-From"] = g.pvc_read_from
        return response

    return app
