"""The rig's cameras, one source for the recorders, the synthetic recorder and the live receivers: the ZED serial
of each view and the camera name -> view key mapping of its wire format."""
from __future__ import annotations

ZED_SERIALS = {1: 41182735, 2: 49429257, 3: 44377151, 4: 49045152}  # view number -> the rig's ZED serial


def default_camera_views() -> dict[str, str]:
    """Camera name (the JSON `camera` field) -> view key. A key ending in `*` matches by prefix."""
    out = {f"zed_{serial}_{side}": f"View{view}_{side}" for view, serial in ZED_SERIALS.items()
           for side in ("left", "right")}
    out["oak*"] = "View5"
    return out
