"""The pure classifier: paths, bodies, encodings, and each of its rules pinned by a test.

Every rule of ``_classify`` has a test here that fails when the rule changes (the report of
issue 11 lists the mutations tried). The differential suite (``test_differential_bodies.py``)
checks the whole against the SDK itself.
"""

from __future__ import annotations

import gzip
import json
import zlib

import pytest

from bgwatch._classify import (
    STATUSES,
    classify_body,
    classify_request,
    decode_content,
    observation_from_json,
    observation_from_mapping,
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


def encode(body: object) -> bytes:
    return json.dumps(body).encode()


def minimal(**fields: object) -> dict[str, object]:
    """The smallest body that is a response, plus ``fields``."""
    return {"id": "resp_min", "object": "response", **fields}


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
    assert obs.request_id == "req_9" and obs.terminal and obs.call == "retrieve"


def test_incomplete_reason_and_active_statuses() -> None:
    obs = classify_body("retrieve", 200, encode(response_body("r", "incomplete", reason="max_output_tokens")))
    assert obs is not None and obs.incomplete_reason == "max_output_tokens" and obs.terminal
    for status in ("queued", "in_progress"):
        active = classify_body("retrieve", 200, encode(response_body("r", status)))
        assert active is not None and active.status == status and not active.terminal
        assert active.completed_at is None


# -- rule: a body is a response only when "object" is "response" -----------------------------


@pytest.mark.parametrize("kind", ["response.input_tokens", "list", "Response", "response ", None, 1])
def test_rule_object_must_be_response(kind: object) -> None:
    body = {"object": kind, "id": "resp_x", "status": "failed", "error": {"code": "server_error"}}
    assert observation_from_mapping("retrieve", body) is None
    assert classify_body("retrieve", 200, encode(body)) is None
    del body["object"]
    assert observation_from_mapping("retrieve", body) is None
    body["object"] = "response"
    obs = observation_from_mapping("retrieve", body)
    assert obs is not None and obs.status == "failed"


# -- rule: the id is a non-empty string of at most 256 characters ----------------------------


@pytest.mark.parametrize("response_id", [None, 5, "", "x" * 257, ["resp_1"]])
def test_rule_id_must_be_a_short_nonempty_string(response_id: object) -> None:
    assert observation_from_mapping("retrieve", minimal(id=response_id, status="failed")) is None


def test_rule_an_id_of_256_characters_is_kept() -> None:
    obs = observation_from_mapping("retrieve", minimal(id="x" * 256))
    assert obs is not None and obs.response_id == "x" * 256


# -- rule: only the six statuses, as the one canonical string each ---------------------------


def test_rule_status_is_one_of_the_six_or_none() -> None:
    for status in STATUSES:
        parsed = json.loads(encode(minimal(status=status)))
        obs = observation_from_mapping("retrieve", parsed)
        assert obs is not None and obs.status == status
        assert obs.status is STATUSES[STATUSES.index(status)]  # the canonical object, not the parser's copy
    for other in ("exploded", "FAILED", "", 3, None, ["failed"]):
        obs = observation_from_mapping("retrieve", minimal(status=other))
        assert obs is not None and obs.status is None


# -- rule: error code and message are strings from an error object, cut to 256 / 4096 --------


def test_rule_error_code_and_message() -> None:
    obs = observation_from_mapping(
        "retrieve", minimal(status="failed", error={"code": "c" * 300, "message": "m" * 5000})
    )
    assert obs is not None and obs.error_code == "c" * 256 and obs.error_message == "m" * 4096
    obs = observation_from_mapping("retrieve", minimal(status="failed", error={"code": "brand_new_code"}))
    assert obs is not None and obs.error_code == "brand_new_code" and obs.error_message is None
    for error in ("server_error", ["server_error"], {"code": 42, "message": ["x"]}, None):
        obs = observation_from_mapping("retrieve", minimal(status="failed", error=error))
        assert obs is not None and obs.error_code is None and obs.error_message is None


# -- rule: the incomplete reason is a string from an incomplete_details object, cut to 256 ----


def test_rule_incomplete_reason() -> None:
    obs = observation_from_mapping("retrieve", minimal(status="incomplete", incomplete_details={"reason": "r" * 300}))
    assert obs is not None and obs.incomplete_reason == "r" * 256
    for details in ("max_output_tokens", {"reason": 1}, None, [{"reason": "content_filter"}]):
        obs = observation_from_mapping("retrieve", minimal(status="incomplete", incomplete_details=details))
        assert obs is not None and obs.incomplete_reason is None


# -- rule: model and service tier are strings, cut to 256 / 64 -------------------------------


def test_rule_model_and_service_tier() -> None:
    obs = observation_from_mapping("retrieve", minimal(model="m" * 300, service_tier="t" * 100))
    assert obs is not None and obs.model == "m" * 256 and obs.service_tier == "t" * 64
    obs = observation_from_mapping("retrieve", minimal(model={"name": "x"}, service_tier=1))
    assert obs is not None and obs.model is None and obs.service_tier is None


# -- rule: timestamps are floats in [0, 1e11), as the SDK holds them ---------------------------


def test_rule_created_at_as_the_sdk_builds_it() -> None:
    cases: list[tuple[object, float | None]] = [
        (1_760_000_000, 1_760_000_000.0),
        (1_760_000_000.5, 1_760_000_000.5),
        (True, 1.0),  # ``created_at: float``: the SDK's float() of an int, a bool included
        (0, 0.0),
        (-1, None),
        (100_000_000_000, None),
        (99_999_999_999, 99_999_999_999.0),
        ("1760000000", None),  # kept as a string by the SDK: not a timestamp
        (None, None),
    ]
    for value, expected in cases:
        obs = observation_from_mapping("retrieve", minimal(created_at=value))
        assert obs is not None and obs.created_at == expected, value
    # An integer too large for a float: the SDK's construction fails, it returns nothing.
    assert observation_from_mapping("retrieve", minimal(created_at=10**400)) is None


def test_rule_completed_at_as_the_sdk_builds_it() -> None:
    cases: list[tuple[object, float | None]] = [
        (1_760_000_042, 1_760_000_042.0),
        ("12", 12.0),  # ``Optional[float]``: pydantic's lax validation runs first
        (True, 1.0),
        (10**400, None),  # kept as an int by the SDK, no timestamp
        (-5.0, None),
        (1e300, None),
        ("soon", None),
        (None, None),
    ]
    for value, expected in cases:
        obs = observation_from_mapping("retrieve", minimal(completed_at=value))
        assert obs is not None and obs.completed_at == expected, value


# -- rule: background is a bool, as the SDK holds it ------------------------------------------


def test_rule_background_as_the_sdk_builds_it() -> None:
    cases: list[tuple[object, bool | None]] = [
        (True, True),
        (False, False),
        ("yes", True),  # pydantic's lax bool
        (1, True),
        ("false", False),
        (2, None),  # kept as 2 by the SDK: not a bool
        ("maybe", None),
        (None, None),
    ]
    for value, expected in cases:
        obs = observation_from_mapping("retrieve", minimal(background=value))
        assert obs is not None and obs.background is expected, value


# -- rule: tokens are ints in [0, 1e15) from the usage object, as the SDK holds them ---------


def test_rule_usage_tokens_as_the_sdk_builds_them() -> None:
    def tokens(usage: object) -> tuple[int | None, int | None]:
        obs = observation_from_mapping("retrieve", minimal(status="completed", usage=usage))
        assert obs is not None
        return obs.input_tokens, obs.output_tokens

    assert tokens({"input_tokens": 36, "output_tokens": 87}) == (36, 87)
    assert tokens({"input_tokens": 10**15, "output_tokens": -1}) == (None, None)
    assert tokens({"input_tokens": 3.0, "output_tokens": True}) == (None, None)  # kept as is by the SDK
    whole = {
        "input_tokens": "3",
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": 4,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 7,
    }
    assert tokens(whole) == (3, 4)  # a usage object that validates whole is coerced
    assert tokens({"input_tokens": "3", "output_tokens": 4}) == (None, 4)  # one that does not, is not
    assert tokens(None) == (None, None)
    assert tokens([36, 87]) == (None, None)


# -- rule: only a JSON object parsed by json.loads is read ------------------------------------


@pytest.mark.parametrize("data", [[{"object": "response", "id": "r"}], "response", None, 1])
def test_rule_only_a_parsed_object_is_read(data: object) -> None:
    assert observation_from_json("retrieve", data) is None


def test_rule_request_id_passes_through() -> None:
    obs = observation_from_json("cancel", minimal(), "req_42")
    assert obs is not None and obs.request_id == "req_42" and obs.call == "cancel"


# -- rule: 2xx only -------------------------------------------------------------------------


def test_rule_only_2xx_answers_are_classified() -> None:
    raw = encode(response_body("r", "failed", code="server_error"))
    for status in (200, 201, 202, 299):
        assert classify_body("retrieve", status, raw) is not None
    for status in (100, 199, 300, 304, 404, 500):
        assert classify_body("retrieve", status, raw) is None


# -- rule: the body is parsed as json.loads parses it (what the SDK's HTTP library does) -------


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
        b'{"object": "response", "id": "r", "status": "failed"} trailing',
    ],
)
def test_rule_what_json_loads_refuses_is_no_response(raw: bytes) -> None:
    assert classify_body("retrieve", 200, raw) is None


def test_rule_duplicate_keys_keep_the_last_value() -> None:
    raw = b'{"id": "r", "object": "response", "status": "failed", "output": [], "status": "completed"}'
    obs = classify_body("retrieve", 200, raw)
    assert obs is not None and obs.status == "completed"


def test_rule_utf8_bom_utf16_and_utf32_bodies_are_read() -> None:
    text = json.dumps(response_body("resp_u", "failed", code="server_error"))
    for raw in (b"\xef\xbb\xbf" + text.encode(), *(text.encode(c) for c in ("utf-16", "utf-16-le", "utf-32-be"))):
        obs = classify_body("retrieve", 200, raw)
        assert obs is not None and obs.error_code == "server_error", raw[:8]


def test_rule_a_lone_surrogate_is_read_as_json_reads_it() -> None:
    body = response_body("resp_sur", "failed", code="server_error", message="\ud800 broken")
    obs = classify_body("retrieve", 200, encode(body))
    assert obs is not None and obs.error_message == "\ud800 broken"


def test_rule_deep_nesting_counts_as_json_loads_decides() -> None:
    deep = encode(minimal(status="failed")).replace(b"}", b', "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    assert classify_body("retrieve", 200, deep) is None  # json.loads raises RecursionError: so does the SDK


def test_huge_integer_created_at_is_no_response_as_in_the_sdk() -> None:
    raw = encode(response_body("resp_huge", "failed", code="server_error")).replace(
        b'"created_at": 1760000000.0', b'"created_at": 1' + b"0" * 400
    )
    assert b"0" * 400 in raw
    assert classify_body("retrieve", 200, raw) is None


# -- rule: Content-Encoding is undone by the SDK's HTTP library, by its rules ----------------


def compress(raw: bytes, coding: str) -> bytes:
    if coding == "gzip":
        return gzip.compress(raw)
    if coding == "deflate":
        return zlib.compress(raw)
    if coding == "raw-deflate":
        compressor = zlib.compressobj(wbits=-15)
        return compressor.compress(raw) + compressor.flush()
    brotli = pytest.importorskip("brotli")
    return bytes(brotli.compress(raw))


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "raw-deflate", "br", "gzip-multi"])
def test_encoded_bodies(encoding: str) -> None:
    raw = encode(response_body("resp_gz", "failed", code="vector_store_timeout", output_text="z" * 400_000))
    header = encoding
    if encoding == "raw-deflate":
        header = "deflate"
    if encoding == "gzip-multi":
        data, header = compress(compress(raw, "gzip"), "br"), "gzip, br"
    else:
        data = compress(raw, encoding)
    obs = classify_body("retrieve", 200, data, content_encoding=header)
    assert obs is not None and obs.error_code == "vector_store_timeout"


@pytest.mark.parametrize("header", ["x-gzip", "UTF-8", "none", "binary", "compress", "identity", "identity, x-gzip"])
def test_rule_codings_the_library_does_not_know_are_ignored(header: str) -> None:
    raw = encode(response_body("resp_i", "failed", code="server_error"))
    obs = classify_body("retrieve", 200, raw, content_encoding=header)
    assert obs is not None and obs.error_code == "server_error"
    assert classify_body("retrieve", 200, gzip.compress(raw), content_encoding=header) is None  # left unparsed


def test_rule_a_broken_or_truncated_coding_is_no_response() -> None:
    raw = gzip.compress(encode(response_body("resp_t", "failed", code="server_error")))
    assert classify_body("retrieve", 200, raw[: len(raw) // 2], content_encoding="gzip") is None
    assert classify_body("retrieve", 200, b"not gzip", content_encoding="gzip") is None


def test_rule_stacked_codings_up_to_the_library_limit() -> None:
    from bgwatch._sdk import sdk_library

    raw = encode(minimal(status="failed"))
    for layers in range(1, 8):
        data = raw
        for _ in range(layers):
            data = gzip.compress(data)
        header = ", ".join(["gzip"] * layers)
        obs = classify_body("retrieve", 200, data, content_encoding=header)
        # httpx2 refuses more than 5 stacked codings; legacy httpx decodes any number.
        if layers <= 5 or sdk_library() == "httpx":
            assert obs is not None and obs.status == "failed", layers
        else:
            assert obs is None, layers


def test_decode_content_is_the_librarys_decoding() -> None:
    raw = encode(minimal())
    assert decode_content(gzip.compress(raw), [("content-encoding", "gzip")]) == raw
    assert decode_content(raw, {"content-encoding": "x-gzip"}) == raw
