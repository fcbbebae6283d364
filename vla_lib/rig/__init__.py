"""Live rig I/O in the rig's wire formats (see docs/live_rig.md)."""
