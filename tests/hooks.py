"""Storage-lock hooks the workers of a test cluster load by name (``PVC_STORAGE_LOCK_HOOK=tests.hooks:...``)."""


def refuse(vm: str, xml: str, dead_node: str) -> None:
    """A storage back end that will not release the dead node's locks."""
    raise RuntimeError(f"locks on {vm}'s disks are still held by {dead_node}")
