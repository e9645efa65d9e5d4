"""``/events``: a Server-Sent Events stream of job, VM and node changes (the protocol: ``pvc_web.events``)."""

from __future__ import annotations

import threading

from flask import current_app, request

from pvc_web.blueprint import Blueprint, handle
from pvc_web.errors import error_response
from pvc_web.events import EventFeed

PREFIX = "/events"
blp = Blueprint("events", __name__, description="A live stream of job, VM and node changes (Server-Sent Events)")

_STREAM_DOC = {
    "200": {"description": "`text/event-stream`: events `node`, `vm`, `job` (data: the item as its list shows it; "
                           "a job with its last `message` instead of the message list; `{\"name\", \"deleted\": "
                           "true}` for a VM or node that is gone), `reset` (a resume was not possible; a snapshot "
                           "follows) and `ready` (the snapshot is complete). Ids are `<epoch>-<seq>`.",
            "content": {"text/event-stream": {"schema": {"type": "string"}}}},
    "503": {"description": "`too_many_streams` (retry after `Retry-After` s) or the cluster is unavailable"},
}


@blp.route("")
@blp.doc(responses=_STREAM_DOC, parameters=[
    {"in": "header", "name": "Last-Event-ID", "schema": {"type": "string"},
     "description": "resume after this event (EventSource sends it when it reconnects)"},
    {"in": "query", "name": "last_event_id", "schema": {"type": "string"},
     "description": "the same, for clients that cannot set the header"}])
def stream():
    """Changes as they happen. A new stream starts with a snapshot (every node and VM, the unfinished jobs and the
    50 most recent ended ones, then `ready`); a stream resumed with `Last-Event-ID` gets every event after it, or
    `reset` and a snapshot when they are no longer kept. A stream ends after 300 s: reconnect with the last id."""
    handle().schema  # noqa: B018 - 503 cluster_not_initialised before a stream is opened
    streams: threading.BoundedSemaphore = current_app.extensions["pvc_streams"]
    if not streams.acquire(blocking=False):
        response = error_response(503, "too_many_streams", "as many event streams as this API serves are open; "
                                                           "try again later")
        response.headers["Retry-After"] = "5"
        return response
    try:
        feed: EventFeed = current_app.extensions["pvc_events"]
        feed.baseline()
    except BaseException:
        streams.release()
        raise
    last = (request.headers.get("Last-Event-ID") or request.args.get("last_event_id") or "")[:100]
    # waitress tells whether the client has closed its connection (it reads ahead: pvc_web.wsgi).
    gone = request.environ.get("waitress.client_disconnected") or (lambda: False)
    response = current_app.response_class(feed.stream(last or None, gone), mimetype="text/event-stream")
    # Released however the stream ends, even one the server never started (a client gone at once).
    response.call_on_close(streams.release)
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"  # nginx: pass events on as they come (docs/deployment.md)
    return response
