"""The per-node worker daemon (``pvc-worker --node NAME``) and its adapters (libvirt)."""
