"""``GET /health``: the one unauthenticated endpoint; 200 when ZooKeeper and the broker answer, else 503.

It answers from the API's last look at them (``pvc_web.probe``, every 2 s), never waiting on I/O itself. It also
shows how old the oldest unfinished jobs are, how often steps were re-sent and how many jobs are past their kind's
bound (figures only: job ids and VM names need a token, ``GET /cluster``)."""

from __future__ import annotations

from flask import current_app

from pvc_web.blueprint import Blueprint
from pvc_web.schemas import HealthSchema

PREFIX = "/health"
blp = Blueprint("health", __name__, description="Liveness of the API and its dependencies (no token needed)")


@blp.route("")
@blp.response(200, HealthSchema)
@blp.alt_response(503, schema=HealthSchema, description="a dependency is down, or the last look is stale")
@blp.doc(security=[])
def health():
    """Health of the API, ZooKeeper and the broker, as the API's last look found them."""
    return current_app.extensions["pvc_health"].answer()
