"""Live rig I/O in the original wire formats (see README "Live rig (dry run by default)")."""
