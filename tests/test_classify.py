"""The pure classifier: paths, bodies, encodings, partial parsing."""

from __future__ import annotations

import gzip
import json
import zlib

import pytest

from bgwatch._classify import (
    UnsupportedEncoding,
    classify_body,
    classify_request,
    is_event_stream,
    is_json_content_type,
    observation_from_mapping,
    parse_response_prefix,
)

from .conftest import response_body


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("POST", "/v1/responses", "create"),
        ("POST", "/v1/responses/", "create"),
        ("GET", "/v1/responses/resp_123", "retrieve"),
        ("POST", "/v1/responses/resp_123/cancel", "cancel"),
        ("POST", "/openai/v1/responses", "create"),  # Azure v1
        ("GET", "/openai/v1/responses/resp_1", "retrieve"),
        ("POST", "/openai/responses", "create"),  # Azure with ?api-version= (query is not in the path)
        ("GET", "/openai/responses/resp_1", "retrieve"),
        ("GET", "/gateway/team-a/v1/responses/resp_9", "retrieve"),  # proxy with a path prefix
        ("GET", "/v1/responses", None),  # list is not a poll
        ("DELETE", "/v1/responses/resp_1", None),
        ("GET", "/v1/responses/resp_1/input_items", None),
        ("POST", "/v1/responses/input_tokens", None),
        ("GET", "/v1/responses/input_tokens", None),
        ("POST", "/v1/responses/compact", None),
        ("POST", "/v1/responses/resp_1/cancel/extra", None),
        ("GET", "/v1/responsesx/resp_1", None),
        ("POST", "/v1/chat/completions", None),
        ("POST", "/v1/embeddings", None),
        ("GET", "/v1/responses//", None),
    ],
)
def test_classify_request(method: str, path: str, expected: str | None) -> None:
    assert classify_request(method, path) == expected


def test_content_types() -> None:
    assert is_json_content_type("application/json")
    assert is_json_content_type("Application/JSON; charset=utf-8")
    assert is_json_content_type("application/problem+json")
    assert not is_json_content_type("text/event-stream")
    assert not is_json_content_type(None)
    assert is_event_stream("text/event-stream; charset=utf-8")
    assert not is_event_stream("application/json")
    assert not is_event_stream(None)


def encode(body: object) -> bytes:
    return json.dumps(body).encode()


def test_failed_body_is_fully_extracted() -> None:
    raw = encode(response_body("resp_1", "failed", code="server_error", message="boom", completed_at=1_760_000_030))
    obs = classify_body("retrieve", 200, raw, request_id="req_9")
    assert obs is not None
    assert (obs.response_id, obs.status, obs.error_code, obs.error_message) == (
        "resp_1",
        "failed",
        "server_error",
        "boom",
    )
    assert (obs.model, obs.created_at, obs.completed_at, obs.background) == (
        "gpt-4.1-2025-04-14",
        1_760_000_000.0,
        1_760_000_030.0,
        True,
    )
    assert obs.request_id == "req_9" and obs.terminal


def test_incomplete_reason_and_active_statuses() -> None:
    obs = classify_body("retrieve", 200, encode(response_body("r", "incomplete", reason="max_output_tokens")))
    assert obs is not None and obs.incomplete_reason == "max_output_tokens" and obs.terminal
    for status in ("queued", "in_progress"):
        active = classify_body("retrieve", 200, encode(response_body("r", status)))
        assert active is not None and active.status == status and not active.terminal
        assert active.completed_at is None


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"[1, 2]",
        b'{"object": "list", "data": []}',
        b'{"object": "response.input_tokens", "input_tokens": 3}',
        b'{"object": "response", "id": 5, "status": "failed"}',
        b'{"object": "response", "status": "failed"}',
        b'{"object": "response", "id": ""}',
        b"\xff\xfe\x00garbage",
        b'{"object": "resp',
    ],
)
def test_not_a_response(raw: bytes) -> None:
    assert classify_body("retrieve", 200, raw) is None


def test_non_2xx_is_not_classified() -> None:
    raw = encode(response_body("r", "failed", code="server_error"))
    assert classify_body("retrieve", 500, raw) is None
    assert classify_body("retrieve", 404, raw) is None


def test_wrong_types_are_treated_as_absent() -> None:
    body = {
        "id": "resp_w",
        "object": "response",
        "created_at": "yesterday",
        "status": "exploded",
        "background": "yes",
        "completed_at": 1e300,
        "error": {"code": 42, "message": ["x"]},
        "incomplete_details": "none",
        "model": {"name": "x"},
    }
    obs = observation_from_mapping("retrieve", body)
    assert obs is not None
    assert obs.status is None and obs.error_code is None and obs.error_message is None
    assert obs.created_at is None and obs.completed_at is None and obs.background is None and obs.model is None


def test_huge_body_is_classified_from_its_prefix() -> None:
    body = response_body("resp_big", "in_progress", output_text="x" * 5_000_000)
    raw = encode(body)
    fields = parse_response_prefix(raw)
    assert fields is not None and "output" not in fields  # the rest of the body was never parsed
    obs = classify_body("retrieve", 200, raw)
    assert obs is not None and obs.status == "in_progress"


def test_a_huge_terminal_body_is_read_up_to_its_usage() -> None:
    # usage comes after output: read once per response, on the terminal observation (issue 15)
    body = response_body("resp_big", "failed", code="server_error", output_text="x" * 5_000_000)
    body["usage"] = {"input_tokens": 7, "output_tokens": 1_250_000, "total_tokens": 1_250_007}
    obs = classify_body("retrieve", 200, encode(body))
    assert obs is not None and obs.error_code == "server_error"
    assert (obs.input_tokens, obs.output_tokens) == (7, 1_250_000)


def test_fields_after_long_instructions_are_still_found() -> None:
    body = response_body("resp_long", "failed", code="invalid_prompt")
    body["instructions"] = "y" * 300_000  # pushes model (and everything after) past every prefix step
    obs = classify_body("retrieve", 200, encode(body))
    assert obs is not None and obs.model == "gpt-4.1-2025-04-14" and obs.error_code == "invalid_prompt"


def test_a_value_cut_by_the_prefix_is_never_trusted() -> None:
    # The error object straddles the 8 KiB prefix: its partial value must not be used.
    body = response_body("resp_cut", "failed", code="rate_limit_exceeded", message="m" * 9000)
    raw = encode(body)
    assert raw.index(b'"error"') < 8 * 1024 < raw.index(b'"incomplete_details"')
    obs = classify_body("retrieve", 200, raw)
    assert obs is not None and obs.error_code == "rate_limit_exceeded" and obs.error_message == "m" * 4096


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "raw-deflate", "br", "gzip-multi"])
def test_encoded_bodies(encoding: str) -> None:
    body = response_body("resp_gz", "failed", code="vector_store_timeout", output_text="z" * 400_000)
    raw = encode(body)
    header = encoding
    if encoding == "gzip":
        data = gzip.compress(raw)
    elif encoding == "deflate":
        data = zlib.compress(raw)
    elif encoding == "raw-deflate":
        compressor = zlib.compressobj(wbits=-15)
        data = compressor.compress(raw) + compressor.flush()
        header = "deflate"
    elif encoding == "br":
        brotli = pytest.importorskip("brotli")
        data = brotli.compress(raw)
    else:
        brotli = pytest.importorskip("brotli")
        data = brotli.compress(gzip.compress(raw))
        header = "gzip, br"
    obs = classify_body("retrieve", 200, data, content_encoding=header)
    assert obs is not None and obs.error_code == "vector_store_timeout"


def test_truncated_gzip_and_unknown_encoding() -> None:
    raw = gzip.compress(encode(response_body("resp_t", "failed", code="server_error")))
    obs = classify_body("retrieve", 200, raw[: len(raw) // 2], content_encoding="gzip")
    # Half a gzip stream still holds the id and status at the front.
    assert obs is None or obs.response_id == "resp_t"
    with pytest.raises(UnsupportedEncoding):
        classify_body("retrieve", 200, b"{}", content_encoding="compress")
