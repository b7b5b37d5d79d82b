"""Container health check of an ``aigw worker``: its Celery node answers a ping over the
broker within a few seconds (a wedged or disconnected worker does not)."""

from __future__ import annotations

import socket
import sys

from gateway.jobs.task_queue import create_celery
from gateway.settings import load_settings


def main() -> int:
    app = create_celery(load_settings())
    replies = app.control.ping(destination=[f"celery@{socket.gethostname()}"], timeout=5.0)
    return 0 if replies else 1


if __name__ == "__main__":
    sys.exit(main())
