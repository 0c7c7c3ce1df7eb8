"""The suite runs offline: ultralytics must never reach for the network (the CLI sets this for its users)."""

import os

os.environ.setdefault("YOLO_OFFLINE", "1")
