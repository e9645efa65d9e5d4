"""``python -m pvc_workers``: the node worker; also how the worker re-executes itself after a schema upgrade."""

from pvc_workers.daemon import main

raise SystemExit(main())
