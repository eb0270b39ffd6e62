"""A plain OpenAI app with no bgwatch line: run it under ``opentelemetry-instrument``.

    opentelemetry-instrument --traces_exporter console --metrics_exporter console \\
        python examples/otel_zero_code.py

With ``openai-bgwatch[otel]`` installed, the ``bgwatch`` instrumentor (entry point
``opentelemetry_instrumentor``) puts bgwatch into the client the SDK builds, so the
background responses' spans (``chat``, ``fetch_response``, ``background_response``) and the
``bg_response_*`` metrics reach the configured exporters. Point ``OPENAI_BASE_URL`` at the
embedded simulator (``python -m bgwatch.simulator`` prints its URL; no API key, no internet)
or at the real API.
"""

from __future__ import annotations

import json
import os
import time

from openai import OpenAI


def main() -> None:
    client = OpenAI()  # no http_client, no bgwatch import: zero code
    count = int(os.environ.get("RESPONSES", "6"))
    ids = [client.responses.create(model="gpt-4.1", input="hi", background=True).id for _ in range(count)]
    pending = set(ids)
    while pending:
        for response_id in list(pending):
            if client.responses.retrieve(response_id).status not in ("queued", "in_progress"):
                pending.discard(response_id)
        time.sleep(0.05)
    print("RESPONSES " + json.dumps(ids), flush=True)


if __name__ == "__main__":
    main()
