"""``pvc_web.render.CachedList`` answers what the response schema would, and follows each record's changes."""

import json

from flask import Flask

from pvc_web.render import CachedList
from pvc_web.schemas import VmSchema
from pvc_web.views import vm_view


def record(name: str, **changes) -> dict:
    base = {"name": name, "uuid": f"00000000-0000-4000-8000-{name:0>12}", "state": "running", "node": "hv1",
            "last_node": "", "failed_reason": "", "memory": "256", "vcpus": "1", "active_job": "",
            "meta.node_limit": "hv1,hv2", "meta.node_selector": "", "meta.autostart": "false",
            "meta.migration_method": "default", "meta.max_downtime": "300", "meta.shutdown_force": ""}
    return dict(base, **changes)


def test_the_cached_list_is_the_schema_dump_through_changes():
    """Rendered, a record changed, a record removed and one added: each answer equals the schema's own dump."""
    app, listed = Flask("t"), CachedList(VmSchema(), vm_view)
    rounds = [[record("a"), record("b")],
              [record("a", state="stopped", active_job="j1"), record("b")],
              [record("b", **{"meta.node_limit": ""}), record("c", node="hv2")]]
    with app.app_context():
        for records in rounds:
            answer = json.loads(listed.response(records).get_data())
            assert answer == VmSchema(many=True).dump([vm_view(r) for r in records])
    assert answer[0]["meta"]["node_limit"] == [] and [v["name"] for v in answer] == ["b", "c"]
