"""The runtime's tests use the rig's fixtures (loopback ports, a tiny recorded dataset)."""
from tests.rig.conftest import live_cfg, rig_root, rig_session  # noqa: F401  (pytest fixtures)
