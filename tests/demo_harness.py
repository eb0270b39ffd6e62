"""``bgwatch demo`` as a subprocess, scraped by a real Prometheus.

Shared by the end-to-end test (tests/test_e2e_prometheus.py) and the README picture
(scripts/render_dashboard.py)::

    with scraped_demo(["--seed", "7", "--responses", "150"], job="bgwatch-e2e", rule_files=[RULES_FILE]) as run:
        summary = run.demo.wait_for_summary(timeout=60)  # the demo's --json line: the workload ended
        run.wait_for_scrape_after(run.demo.summary_at)   # Prometheus has the final counts
        run.prom.query('sum by (code) (bg_response_failed_total)')

Order of events: Prometheus starts with the demo's (future) ``host:port`` as its only target
and the demo starts only once Prometheus has tried that target, so that it is scraped every
second from the workload's first request on (Prometheus 2.42 applies static targets on a 5 s
tick: ~5 s). The demo runs with ``--json --keep-serving``: its summary is one JSON line on
stdout when the workload ends, and it keeps ``/metrics`` up until it is stopped (SIGTERM,
then SIGKILL), always, also when the caller fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

from .prometheus_harness import REPO_ROOT, Prometheus, free_port, wait_until

__all__ = ["DemoError", "DemoProcess", "ScrapedDemo", "demo_env", "scraped_demo", "wait_for_scrape_loop"]

# The line `bgwatch demo` prints (on stderr with --json) once /metrics is up.
_METRICS_LINE = re.compile(r"^metrics: http://(?P<target>[^/\s]+)/metrics$")
_ZERO_TIME = "0001-01-01T00:00:00Z"


class DemoError(RuntimeError):
    """The demo exited, or did not print what was expected in time."""


def demo_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a demo subprocess: no OpenAI or Prometheus settings of the caller's
    (``OPENAI_API_KEY``, ``PROMETHEUS_MULTIPROC_DIR``...), and ``src/`` importable from a checkout."""
    env = {
        k: v for k, v in (os.environ if base is None else base).items() if not k.startswith(("OPENAI_", "PROMETHEUS_"))
    }
    src = str(REPO_ROOT / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
    return env


class DemoProcess:
    """``python -m bgwatch demo --json --keep-serving --metrics-port PORT ARGS...``.

    Its stdout and stderr are drained by threads (the pipes never fill up); stderr is kept for
    error messages. Use as a context manager, or call :meth:`stop` in a ``finally``.
    """

    def __init__(self, args: Sequence[str], *, metrics_port: int = 0, python: str | None = None) -> None:
        self.command = [
            python or sys.executable,
            "-m",
            "bgwatch",
            "demo",
            "--json",
            "--keep-serving",
            "--metrics-port",
            str(metrics_port),
            *args,
        ]
        self.returncode: int | None = None
        self.summary: dict[str, Any] | None = None
        self.summary_at: float = 0.0
        """Epoch seconds at which the summary line arrived (the workload had ended)."""
        self.started_at: float = 0.0
        self._proc: subprocess.Popen[str] | None = None
        self._stdout: queue.Queue[str | None] = queue.Queue()
        self._stderr: queue.Queue[str | None] = queue.Queue()
        self._stderr_lines: list[str] = []
        self._target: str | None = None

    def start(self) -> DemoProcess:
        self.started_at = time.time()
        self._proc = subprocess.Popen(
            self.command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=demo_env(),
            cwd=REPO_ROOT,
        )
        for stream, sink in ((self._proc.stdout, self._stdout), (self._proc.stderr, self._stderr)):
            threading.Thread(target=self._pump, args=(stream, sink), name="bgwatch-demo-pipe", daemon=True).start()
        return self

    @staticmethod
    def _pump(stream: IO[str] | None, sink: queue.Queue[str | None]) -> None:
        if stream is not None:
            for line in stream:
                sink.put(line.rstrip("\n"))
        sink.put(None)  # end of stream

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stderr_text(self) -> str:
        """What the demo wrote on stderr so far (banner, table, errors)."""
        with contextlib.suppress(queue.Empty):
            while True:
                line = self._stderr.get_nowait()
                if line is not None:
                    self._stderr_lines.append(line)
        return "\n".join(self._stderr_lines)

    def _next_line(self, source: queue.Queue[str | None], deadline: float, what: str) -> str:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DemoError(f"no {what} from `{' '.join(self.command)}` in time\n{self.stderr_text()}")
            try:
                line = source.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            if line is None:
                code = self._proc.wait(5) if self._proc is not None else None
                raise DemoError(f"the demo ended (exit status {code}) before its {what}\n{self.stderr_text()}")
            return line

    def wait_for_target(self, timeout: float = 60.0) -> str:
        """``host:port`` of the demo's /metrics, from its ``metrics: http://.../metrics`` line."""
        if self._target is not None:
            return self._target
        deadline = time.monotonic() + timeout
        while True:
            line = self._next_line(self._stderr, deadline, "metrics line")
            self._stderr_lines.append(line)
            m = _METRICS_LINE.match(line)
            if m:
                self._target = m.group("target")
                return self._target

    def wait_for_summary(self, timeout: float = 120.0) -> dict[str, Any]:
        """The ``--json`` summary, printed when the workload has ended (the demo keeps serving)."""
        if self.summary is not None:
            return self.summary
        deadline = time.monotonic() + timeout
        while True:
            line = self._next_line(self._stdout, deadline, "JSON summary")
            with contextlib.suppress(ValueError):
                summary = json.loads(line)
                if isinstance(summary, dict):
                    self.summary_at = time.time()
                    self.summary = summary
                    return summary

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (the demo's --keep-serving handler exits with its summary's status), then
        SIGKILL after ``timeout``. Returns the exit status."""
        proc = self._proc
        if proc is None:
            return self.returncode
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        self.returncode = proc.returncode
        return self.returncode

    def __enter__(self) -> DemoProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class ScrapedDemo:
    """A demo subprocess and the Prometheus that scrapes it (see :func:`scraped_demo`)."""

    prom: Prometheus
    demo: DemoProcess
    target: str
    """``host:port``: the ``instance`` label of the demo's series."""
    prom_started_at: float

    def scrape_time(self) -> float | None:
        """Timestamp of the last successful scrape of the demo (None before the first one)."""
        # timestamp() of the selector itself: of `up == 1` it would be the evaluation time
        up = f'up{{instance="{self.target}"}}'
        result = self.prom.query(f"timestamp({up}) and ({up} == 1)")
        return float(result[0]["value"][1]) if result else None

    def wait_for_scrape_after(self, when: float, timeout: float = 15.0) -> float:
        """Wait until the demo was scraped successfully by a scrape that started after ``when``
        (epoch seconds) and the rules were evaluated over it; return that scrape's timestamp."""

        def scraped() -> float | None:
            at = self.scrape_time()
            return at if at is not None and at > when else None

        at = wait_until(scraped, timeout=timeout, message=lambda: f"no scrape of {self.target} after {when}")
        if self.prom.rule_files:
            self.prom.wait_for_rule_evaluations(1, timeout=timeout)
        return at


def wait_for_scrape_loop(prom: Prometheus, timeout: float = 30.0) -> None:
    """Wait until Prometheus has tried to scrape a target (up or not): from then on it scrapes
    every scrape interval, so a demo started now is watched from its first request on."""

    def attempted() -> bool:
        return any(t.get("lastScrape", _ZERO_TIME) != _ZERO_TIME for t in prom.targets_status())

    wait_until(attempted, timeout=timeout, message=lambda: f"no scrape attempted\n{prom.log_tail(10)}")


@contextlib.contextmanager
def scraped_demo(
    demo_args: Sequence[str],
    *,
    job: str = "bgwatch-demo",
    rule_files: Sequence[str | os.PathLike[str]] = (),
    binary: str | None = None,
    workdir: str | os.PathLike[str] | None = None,
    scrape_interval: str = "1s",
    python: str | None = None,
    start_timeout: float = 60.0,
) -> Iterator[ScrapedDemo]:
    """Start Prometheus, then the demo with ``demo_args`` on the port Prometheus scrapes.

    Yields once the demo serves /metrics and Prometheus scrapes it. Stops the demo, then
    Prometheus, on exit (also on errors).
    """
    target = f"127.0.0.1:{free_port()}"
    with Prometheus(
        [target],
        job=job,
        rule_files=rule_files,
        binary=binary,
        workdir=workdir,
        scrape_interval=scrape_interval,
        evaluation_interval=scrape_interval,
    ) as prom:
        prom_started_at = time.time()
        wait_for_scrape_loop(prom)
        demo = DemoProcess(demo_args, metrics_port=int(target.rsplit(":", 1)[1]), python=python)
        try:
            demo.start()
            actual = demo.wait_for_target(timeout=start_timeout)
            if actual != target:  # the port was taken in between: the demo fell back to a free one
                prom.targets = [actual]
                prom.reload()
            run = ScrapedDemo(prom, demo, actual, prom_started_at)

            def up() -> bool:
                return run.scrape_time() is not None

            wait_until(up, timeout=30, message=lambda: f"{actual} never scraped: {prom.targets_status()}")
            yield run
        finally:
            demo.stop()
