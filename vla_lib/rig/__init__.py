"""Live rig I/O in the original wire formats (see docs/live_rig.md)."""
