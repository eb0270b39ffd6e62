"""gunicorn settings for bgwatch in multi-process mode (``gunicorn -c gunicorn.conf.py app:app``).

* ``PROMETHEUS_MULTIPROC_DIR`` is set here, in the master, before any worker imports
  prometheus_client: every worker then counts into its own files in that directory and a
  scrape of ``/metrics`` on any worker shows the totals of all of them.
* ``on_starting`` empties the directory of the previous run's files (only ``*.db`` files: the
  directory itself may be one you chose).
* ``child_exit`` tells prometheus_client that a worker is gone, whatever killed it: its share
  of the ``bg_response_in_flight`` gauge (``livesum``) is dropped; its counters are kept.
"""

from __future__ import annotations

import glob
import os
import tempfile
from typing import Any

multiproc_dir = os.environ.setdefault(
    "PROMETHEUS_MULTIPROC_DIR", os.path.join(tempfile.gettempdir(), f"bgwatch-multiproc-{os.getuid()}")
)

bind = os.environ.get("BGWATCH_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("BGWATCH_WORKERS", "3"))
worker_class = "sync"
timeout = 120


def on_starting(server: Any) -> None:
    """Master, once, before the first worker: start from an empty multiprocess directory."""
    os.makedirs(multiproc_dir, exist_ok=True)
    for path in glob.glob(os.path.join(multiproc_dir, "*.db")):
        os.remove(path)


def child_exit(server: Any, worker: Any) -> None:
    """Master, after any worker exited (also when it was SIGKILLed): drop its live gauges."""
    import bgwatch

    bgwatch.mark_process_dead(worker.pid)
