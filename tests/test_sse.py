"""Tests for the incremental SSE parser (bgwatch._sse).

Three layers: hand-written cases for each rule of the WHATWG event-stream
algorithm; a recorded OpenAI Responses stream fed with every chunking; and
hypothesis properties checking the parser against two small reference parsers
(one spec-literal on decoded text, one on bytes applying the memory limits),
split-invariance, and bounded memory on arbitrary bytes.
"""

from __future__ import annotations

import itertools
import json
import random
import re
from collections.abc import Iterable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bgwatch._sse import _WINDOW, SSEEvent, SSEParser

BOM = b"\xef\xbb\xbf"


def parse(chunks: Iterable[bytes], **limits: int) -> list[SSEEvent]:
    """Feed ``chunks`` to a fresh parser, then close it; all events in order."""
    parser = SSEParser(**limits)
    events: list[SSEEvent] = []
    for chunk in chunks:
        events += parser.feed(chunk)
    return events + parser.close()


def split_at(raw: bytes, cuts: Iterable[int]) -> list[bytes]:
    """``raw`` cut at the given offsets (any order, duplicates allowed)."""
    bounds = [0, *sorted(cuts), len(raw)]
    return [raw[a:b] for a, b in itertools.pairwise(bounds)]


def bytewise(raw: bytes) -> list[bytes]:
    return [raw[i : i + 1] for i in range(len(raw))]


def ev(data: str, event: str | None = None, id: str | None = None, truncated: bool = False) -> SSEEvent:
    return SSEEvent(event=event, data=data, id=id, truncated=truncated)


# -- reference parsers ---------------------------------------------------------


def reference_text(raw: bytes) -> list[SSEEvent]:
    """The WHATWG algorithm, literally: decode the whole stream, then parse text.

    No limits. Like SSEParser.close(), a last event without a trailing blank
    line is dispatched (the spec would drop it).
    """
    text = raw.decode("utf-8", "replace").removeprefix("\ufeff")
    lines = re.split(r"\r\n|\r|\n", text)
    events: list[SSEEvent] = []
    data = event_type = last_id = ""

    def dispatch() -> None:
        nonlocal data, event_type
        if data:
            events.append(ev(data.removesuffix("\n"), event_type or None, last_id or None))
        data = event_type = ""

    for line in lines:
        if not line:
            dispatch()
            continue
        if line.startswith(":"):
            continue
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            event_type = value
        elif name == "data":
            data += value + "\n"
        elif name == "id" and "\0" not in value:
            last_id = value
    dispatch()  # end of stream (the last item of `lines` is the unterminated line)
    return events


def reference_bytes(raw: bytes, max_data_bytes: int, max_line_bytes: int) -> list[SSEEvent]:
    """Whole-stream parse on bytes, applying SSEParser's documented limits."""
    raw = raw.removeprefix(BOM)
    events: list[SSEEvent] = []
    data: list[bytes] | None = None
    event_type = b""
    last_id: str | None = None

    def dispatch() -> None:
        nonlocal data, event_type
        if data is not None:
            joined = b"\n".join(data)
            kept = joined[:max_data_bytes]
            truncated = len(joined) > max_data_bytes
            if truncated:  # drop a UTF-8 character the cut split in half
                for i in range(len(kept) - 1, max(len(kept) - 4, -1), -1):
                    if kept[i] < 0x80:
                        break
                    if kept[i] >= 0xC0:
                        size = 2 if kept[i] < 0xE0 else 3 if kept[i] < 0xF0 else 4
                        if len(kept) - i < size:
                            kept = kept[:i]
                        break
            events.append(
                SSEEvent(
                    event_type.decode("utf-8", "replace") or None,
                    kept.decode("utf-8", "replace"),
                    last_id,
                    truncated,
                )
            )
        data = None
        event_type = b""

    for line in re.split(rb"\r\n|\r|\n", raw):
        if not line:
            dispatch()
            continue
        if line.startswith(b":"):
            continue
        name, colon, value = line.partition(b":")
        if colon and value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            data = [*(data or []), value]
        elif name == b"event" and len(line) <= max_line_bytes:
            event_type = value
        elif name == b"id" and len(line) <= max_line_bytes and b"\0" not in value:
            last_id = value.decode("utf-8", "replace") or None
    dispatch()
    return events


# -- spec cases -----------------------------------------------------------------


@pytest.mark.parametrize("nl", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_line_endings(nl: bytes) -> None:
    raw = b"event: a" + nl + b"data: 1" + nl + nl + b"data: 2" + nl + b"data: 3" + nl + nl
    assert parse([raw]) == [ev("1", "a"), ev("2\n3")]
    assert parse(bytewise(raw)) == [ev("1", "a"), ev("2\n3")]


def test_mixed_line_endings() -> None:
    assert parse([b"data: a\r\ndata: b\rdata: c\n\r\n"]) == [ev("a\nb\nc")]


def test_crlf_split_across_chunks_is_one_line_ending() -> None:
    # If the LF were a second line ending it would be a blank line and dispatch
    # "a" alone, before "b" was added.
    assert parse([b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"]) == [ev("a\nb")]
    assert parse([b"data: a\r", b"\n", b"\r", b"\n"]) == [ev("a")]


def test_cr_then_cr_lf_is_two_line_endings() -> None:
    assert parse([b"data: a\r", b"\r\ndata: b\n\n"]) == [ev("a"), ev("b")]


def test_lone_lf_after_split_cr_chunk_without_other_cr() -> None:
    # The second chunk has no CR at all: the fast path must still skip its LF.
    assert parse([b"data: a\r", b"\ndata: b\n\n"]) == [ev("a\nb")]


def sdk_parse(chunks: Iterable[bytes], *, split_crlf: bool) -> list[SSEEvent]:
    """What an ``sdk_compatible`` parser dispatches for ``chunks`` (close() adds nothing there)."""
    parser = SSEParser(sdk_compatible=True, split_crlf_after_block=split_crlf)
    events = [event for chunk in chunks for event in parser.feed(chunk)]
    assert parser.close() == []
    return events


def test_split_crlf_after_block_reads_two_line_endings_only_where_openai_2_ended_a_block() -> None:
    # "\r\r" ends a block of openai 2.x at the chunk end: the next LF is an extra blank line,
    # which dispatches an empty event because the last event ID is not empty.
    chunks = [b"id: 1\ndata: a\r\r", b"\ndata: b\n\n"]
    assert sdk_parse(chunks, split_crlf=True) == [ev("a", id="1"), ev("", id="1"), ev("b", id="1")]
    assert sdk_parse(chunks, split_crlf=False) == [ev("a", id="1"), ev("b", id="1")]
    # Without an ID the extra blank line dispatches nothing.
    assert sdk_parse([b"data: a\r\r", b"\ndata: b\n\n"], split_crlf=True) == [ev("a"), ev("b")]
    # One CR after text, or three, leave a CR unpaired (no block ended there): one CRLF.
    for ending in (b"\r", b"\r\r\r"):
        expected = sdk_parse([b"id: 1\ndata: a" + ending + b"\ndata: b\n\n"], split_crlf=False)
        assert sdk_parse([b"id: 1\ndata: a" + ending, b"\ndata: b\n\n"], split_crlf=True) == expected
    # A chunk of CRs only carries the state on (expected data as openai 2.54 dispatches it).
    for chunks, expected in [
        ([b"data: a\r", b"\r", b"\n"], ["a", ""]),  # "a\r" | "\r" ends a block
        ([b"data: a\r\r", b"\r", b"\n"], ["a", ""]),  # "a\r\r" | "\r" leaves one unpaired
        ([b"data: a\r\r", b"\r", b"\r", b"\n"], ["a", "", "", ""]),
        ([b"data: a\n\r", b"\r", b"\n"], ["a", "", ""]),
    ]:
        got = sdk_parse([b"id: 1\n", *chunks, b"data: b\n\n"], split_crlf=True)
        assert [event.data for event in got] == [*expected, "b"], chunks
    # A CR at a window edge inside one big chunk is never split from its LF.
    head = b"id: 1\ndata: a\r:"
    big = head + b"y" * (_WINDOW - len(head) - 2) + b"\r\r" + b"\ndata: b\n\n"
    assert big[_WINDOW - 1 : _WINDOW + 1] == b"\r\n"
    assert sdk_parse([big], split_crlf=True) == [ev("a", id="1"), ev("b", id="1")]


def test_split_crlf_after_block_needs_sdk_compatible() -> None:
    with pytest.raises(ValueError, match="sdk_compatible"):
        SSEParser(split_crlf_after_block=True)


def test_comments_ignored() -> None:
    raw = b": hello\n:\ndata: x\n: mid-event comment\ndata: y\n\n:keepalive\n\n"
    assert parse([raw]) == [ev("x\ny")]


def test_leading_space_rule_strips_exactly_one_space() -> None:
    raw = b"data:no-space\ndata: one\ndata:  two\ndata:\tTab\nevent:   e\n\n"
    assert parse([raw]) == [ev("no-space\none\n two\n\tTab", "  e")]


def test_value_keeps_later_colons() -> None:
    assert parse([b'data: {"a":"b:c"}\n\n']) == [ev('{"a":"b:c"}')]


def test_field_without_colon_has_empty_value() -> None:
    assert parse([b"data\n\n"]) == [ev("")]
    assert parse([b"data\ndata\n\n"]) == [ev("\n")]
    assert parse([b"event\ndata: x\n\n"]) == [ev("x", None)]
    assert parse([b"data: x\nid\n\n"]) == [ev("x", id=None)]


def test_empty_data_line_is_dispatched_with_empty_data() -> None:
    assert parse([b"data:\n\n"]) == [ev("")]
    assert parse([b"data: \n\n"]) == [ev("")]


def test_no_trailing_blank_line_is_flushed_on_close() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\n\nevent: last\ndata: b\n") == [ev("a")]
    assert parser.close() == [ev("b", "last")]


def test_unterminated_last_line_is_flushed_on_close() -> None:
    parser = SSEParser()
    assert parser.feed(b'event: response.failed\ndata: {"type":"resp') == []
    assert parser.close() == [ev('{"type":"resp', "response.failed")]


def test_close_is_idempotent_and_feed_after_close_is_ignored() -> None:
    parser = SSEParser()
    parser.feed(b"data: a")
    assert parser.close() == [ev("a")]
    assert parser.close() == []
    assert parser.feed(b"\n\ndata: b\n\n") == []
    assert parser.buffered_bytes == 0


def test_close_with_nothing_pending() -> None:
    assert parse([]) == []
    assert parse([b"data: a\n\n"]) == [ev("a")]
    assert parse([b"event: x\n"]) == []


def test_bom_skipped_at_stream_start() -> None:
    assert parse([BOM + b"data: x\n\n"]) == [ev("x")]


def test_bom_split_across_chunks() -> None:
    assert parse([b"\xef", b"\xbb", b"\xbfdata: x\n\n"]) == [ev("x")]
    assert parse([b"\xef\xbb", b"\xbfdata: x\n\n"]) == [ev("x")]


def test_only_one_bom_is_skipped() -> None:
    # The second BOM is part of the field name, which is then unknown.
    assert parse([BOM + BOM + b"data: x\n\ndata: y\n\n"]) == [ev("y")]


def test_bom_prefix_that_is_not_a_bom() -> None:
    assert parse([b"\xef\xbb", b"data: x\n\ndata: y\n\n"]) == [ev("y")]
    assert parse([b"\xef", b"\xbb"]) == []  # ends inside a would-be BOM


def test_id_field_persists_until_changed() -> None:
    raw = b"id: 1\ndata: a\n\ndata: b\n\nid: 2\ndata: c\n\nid\ndata: d\n\nid: 3\ndata: e\n\nid:\ndata: f\n\n"
    assert parse([raw]) == [
        ev("a", id="1"),
        ev("b", id="1"),
        ev("c", id="2"),
        ev("d", id=None),
        ev("e", id="3"),
        ev("f", id=None),
    ]


def test_id_with_nul_is_ignored() -> None:
    assert parse([b"id: 1\n\nid: a\x00b\ndata: x\n\n"]) == [ev("x", id="1")]


def test_id_set_by_event_without_data_still_applies() -> None:
    assert parse([b"id: 7\n\ndata: x\n\n"]) == [ev("x", id="7")]


def test_event_without_data_is_not_dispatched_and_resets_type() -> None:
    raw = b"event: orphan\n\nevent: orphan2\nid: 1\n: c\n\n\n\ndata: x\n\n"
    assert parse([raw]) == [ev("x", None, "1")]


def test_event_type_resets_after_dispatch() -> None:
    assert parse([b"event: a\ndata: 1\n\ndata: 2\n\n"]) == [ev("1", "a"), ev("2")]


def test_unknown_fields_and_retry_ignored() -> None:
    raw = b"retry: 1000\nfoo: bar\nDATA: no\ndata : no\nx-very-long-unknown-field-name: 1\ndata: yes\n\n"
    assert parse([raw]) == [ev("yes")]


def test_invalid_utf8_is_replaced_not_raised() -> None:
    assert parse([b"event: \xff\ndata: a\xc3(b\xe2\x82\n\n"]) == [ev("a\ufffd(b\ufffd", "\ufffd")]


def test_multibyte_character_split_across_chunks() -> None:
    raw = "data: ünïcødé ✓ 🎉\n\n".encode()
    assert parse(bytewise(raw)) == [ev("ünïcødé ✓ 🎉")]


def test_negative_limits_rejected() -> None:
    with pytest.raises(ValueError):
        SSEParser(max_data_bytes=-1)
    with pytest.raises(ValueError):
        SSEParser(max_line_bytes=-1)


def test_max_buffered_bytes_formula() -> None:
    assert SSEParser().max_buffered_bytes == 65536 + 3 * 4096 + 3
    assert SSEParser(max_data_bytes=10, max_line_bytes=0).max_buffered_bytes == 10 + 3 * 5 + 3


# -- limits ------------------------------------------------------------------


def test_truncation_of_a_10mb_event_keeps_prefix_in_bounded_memory() -> None:
    parser = SSEParser()
    bound = 65536 + 64  # the data plus a few bytes of line state
    payload = b"0123456789abcdef" * (10 * 1024 * 1024 // 16)
    raw = b'event: big\ndata: {"type":"response.failed","pad":"' + payload + b'"}\n\n'
    events: list[SSEEvent] = []
    for start in range(0, len(raw), 65536):
        events += parser.feed(raw[start : start + 65536])
        assert parser.buffered_bytes <= bound
    events += parser.close()
    expected = (b'{"type":"response.failed","pad":"' + payload)[:65536].decode()
    assert events == [SSEEvent("big", expected, None, True)]
    assert len(events[0].data) == 65536


def test_truncation_in_one_huge_chunk() -> None:
    raw = b"data: " + b"x" * (10 * 1024 * 1024) + b"\n\ndata: next\n\n"
    assert parse([raw]) == [ev("x" * 65536, truncated=True), ev("next")]


def test_truncation_counts_the_newlines_between_data_lines() -> None:
    lines = [b"data: " + b"%04d" % i * 250 for i in range(20_000)]  # 1 KB lines, 20 MB
    raw = b"\n".join(lines) + b"\n\n"
    parser = SSEParser(max_data_bytes=5000)
    events: list[SSEEvent] = []
    for start in range(0, len(raw), 16384):
        events += parser.feed(raw[start : start + 16384])
        assert parser.buffered_bytes <= 5000 + 16
    joined = b"\n".join(line[6:] for line in lines[:10])
    assert events == [ev(joined[:5000].decode(), truncated=True)]


def test_data_exactly_at_limit_is_not_truncated() -> None:
    assert parse([b"data: abcd\n\n"], max_data_bytes=4) == [ev("abcd")]
    assert parse([b"data: abcd\ndata\n\n"], max_data_bytes=4) == [ev("abcd", truncated=True)]
    assert parse([b"data: abcde\n\n"], max_data_bytes=0) == [ev("", truncated=True)]
    # Filled exactly by a later line, and by a line split across chunks.
    assert parse([b"data: ab\ndata: c\n\n"], max_data_bytes=4) == [ev("ab\nc")]
    assert parse(bytewise(b"data: ab\ndata: c\n\n"), max_data_bytes=4) == [ev("ab\nc")]
    assert parse(bytewise(b"data: ab\ndata: cd\n\n"), max_data_bytes=4) == [ev("ab\nc", truncated=True)]


def test_truncation_does_not_split_a_utf8_character() -> None:
    # "é" is 2 bytes, "✓" 3, "🎉" 4: cutting inside one drops it whole.
    assert parse(["data: aé\n\n".encode()], max_data_bytes=2) == [ev("a", truncated=True)]
    assert parse(["data: a✓\n\n".encode()], max_data_bytes=3) == [ev("a", truncated=True)]
    assert parse(["data: a🎉b\n\n".encode()], max_data_bytes=4) == [ev("a", truncated=True)]
    assert parse(["data: a🎉b\n\n".encode()], max_data_bytes=5) == [ev("a🎉", truncated=True)]


def test_truncated_flag_resets_for_next_event() -> None:
    assert parse([b"data: abcdef\n\ndata: ab\n\n"], max_data_bytes=4) == [
        ev("abcd", truncated=True),
        ev("ab"),
    ]


LONG_LINES = {
    "comment": lambda n: b": " + b"c" * n,
    "name": lambda n: b"x" * n,  # absurd field name, no colon
    "name-colon": lambda n: b"x" * n + b": v",
    "retry": lambda n: b"retry: " + b"9" * n,
    "event": lambda n: b"event: " + b"e" * n,
    "id": lambda n: b"id: " + b"i" * n,
    "binary": lambda n: (bytes(range(256)).replace(b"\n", b"").replace(b"\r", b"") * (n // 254 + 1))[:n],
}


@pytest.mark.parametrize("kind", LONG_LINES)
@pytest.mark.parametrize("chunk_size", [65536, 100, 1])
def test_absurdly_long_lines_are_ignored_in_bounded_memory(kind: str, chunk_size: int) -> None:
    # 10 MB lines in 64 KB chunks; shorter ones (still > max_line_bytes) when the
    # chunks are small, so that they go through the partial-line states.
    line = LONG_LINES[kind](min(10_000_000, 20_000 * chunk_size))
    parser = SSEParser()
    raw = b"data: before\n\n" + line + b"\ndata: after\n\n"
    events: list[SSEEvent] = []
    for start in range(0, len(raw), chunk_size):
        events += parser.feed(raw[start : start + chunk_size])
        assert parser.buffered_bytes <= 4096
    events += parser.close()
    assert events == [ev("before"), ev("after")]


def test_event_and_id_lines_at_line_limit() -> None:
    limit = len(b"event: abc")
    assert parse([b"event: abc\ndata: x\n\n"], max_line_bytes=limit) == [ev("x", "abc")]
    assert parse([b"event: abcd\ndata: x\n\n"], max_line_bytes=limit) == [ev("x")]
    assert parse([b"id: 123456\ndata: x\n\n"], max_line_bytes=limit) == [ev("x", id="123456")]
    assert parse([b"id: 1234567\ndata: x\n\n"], max_line_bytes=limit) == [ev("x")]
    # The same, streamed byte by byte through the partial-line path.
    assert parse(bytewise(b"event: abc\ndata: x\n\n"), max_line_bytes=limit) == [ev("x", "abc")]
    assert parse(bytewise(b"event: abcd\ndata: x\n\n"), max_line_bytes=limit) == [ev("x")]


# -- a recorded OpenAI Responses stream ----------------------------------------

_RESPONSE = (
    '{{"id":"resp_68a3f1c2b9e48193a1f0c7d2e5b64a1f0b2c3d4e5f6a7b8c","object":"response",'
    '"created_at":1755508162,"status":"{status}","background":true,"error":{error},'
    '"incomplete_details":null,"instructions":null,"max_output_tokens":null,'
    '"max_tool_calls":null,"model":"gpt-5-2025-08-07","output":[],"parallel_tool_calls":true,'
    '"previous_response_id":null,"prompt_cache_key":null,"reasoning":{{"effort":"medium",'
    '"summary":null}},"safety_identifier":null,"service_tier":"auto","store":true,'
    '"temperature":1.0,"text":{{"format":{{"type":"text"}},"verbosity":"medium"}},'
    '"tool_choice":"auto","tools":[],"top_logprobs":0,"top_p":1.0,"truncation":"disabled",'
    '"usage":null,"user":null,"metadata":{{}}}}'
)
_FAILED_ERROR = (
    '{"code":"server_error","message":"The server had an error processing your request. '
    "Sorry about that! You can retry your request, or contact us through our help center "
    'if you keep seeing this error. (Please include the request ID req_8f2e1c in your email.)"}'
)
_MSG_ID = "msg_68a3f1c4d0f881939c2d1e0f6a7b8c9d0e1f2a3b4c5d6e7f"
RECORDED_STREAM = (
    "event: response.created\n"
    'data: {"type":"response.created","sequence_number":0,"response":'
    + _RESPONSE.format(status="queued", error="null")
    + "}\n\n"
    "event: response.queued\n"
    'data: {"type":"response.queued","sequence_number":1,"response":'
    + _RESPONSE.format(status="queued", error="null")
    + "}\n\n"
    "event: response.in_progress\n"
    'data: {"type":"response.in_progress","sequence_number":2,"response":'
    + _RESPONSE.format(status="in_progress", error="null")
    + "}\n\n"
    "event: response.output_item.added\n"
    'data: {"type":"response.output_item.added","sequence_number":3,"output_index":0,'
    '"item":{"id":"' + _MSG_ID + '","type":"message","status":"in_progress","content":[],'
    '"role":"assistant"}}\n\n'
    "event: response.content_part.added\n"
    'data: {"type":"response.content_part.added","sequence_number":4,"item_id":"' + _MSG_ID + '",'
    '"output_index":0,"content_index":0,"part":{"type":"output_text","annotations":[],'
    '"logprobs":[],"text":""}}\n\n'
    "event: response.output_text.delta\n"
    'data: {"type":"response.output_text.delta","sequence_number":5,"item_id":"' + _MSG_ID + '",'
    '"output_index":0,"content_index":0,"delta":"Voilà","logprobs":[],"obfuscation":"x1"}\n\n'
    "event: response.output_text.delta\n"
    'data: {"type":"response.output_text.delta","sequence_number":6,"item_id":"' + _MSG_ID + '",'
    '"output_index":0,"content_index":0,"delta":" — ünïcødé ✓ 🎉","logprobs":[]}\n\n'
    "event: response.failed\n"
    'data: {"type":"response.failed","sequence_number":7,"response":'
    + _RESPONSE.format(status="failed", error=_FAILED_ERROR)
    + "}\n\n"
).encode()

EXPECTED_TYPES = [
    "response.created",
    "response.queued",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.delta",
    "response.failed",
]


def _with_endings(raw: bytes, nl: bytes) -> bytes:
    return raw.replace(b"\n", nl)


@pytest.fixture(scope="module")
def recorded_events() -> list[SSEEvent]:
    events = parse([RECORDED_STREAM])
    assert [e.event for e in events] == EXPECTED_TYPES
    return events


def test_recorded_stream_parses_to_valid_openai_events(recorded_events: list[SSEEvent]) -> None:
    from openai.types.responses import ResponseStreamEvent
    from pydantic import TypeAdapter

    adapter: TypeAdapter[ResponseStreamEvent] = TypeAdapter(ResponseStreamEvent)
    for i, event in enumerate(recorded_events):
        assert not event.truncated and event.id is None
        payload = json.loads(event.data)
        assert payload["type"] == event.event and payload["sequence_number"] == i
        assert adapter.validate_python(payload).type == event.event
    failed = json.loads(recorded_events[-1].data)["response"]
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "server_error"


@pytest.mark.parametrize("nl", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_recorded_stream_every_single_split(nl: bytes, recorded_events: list[SSEEvent]) -> None:
    raw = _with_endings(RECORDED_STREAM, nl)
    for i in range(len(raw) + 1):
        assert parse([raw[:i], raw[i:]]) == recorded_events, f"split at {i}"


def test_recorded_stream_sampled_double_splits(recorded_events: list[SSEEvent]) -> None:
    rng = random.Random(20240611)
    for nl in (b"\n", b"\r\n", b"\r"):
        raw = _with_endings(RECORDED_STREAM, nl)
        for _ in range(1500):
            cuts = (rng.randrange(len(raw) + 1), rng.randrange(len(raw) + 1))
            assert parse(split_at(raw, cuts)) == recorded_events, f"splits at {cuts}"


def test_recorded_stream_one_byte_at_a_time(recorded_events: list[SSEEvent]) -> None:
    for nl in (b"\n", b"\r\n", b"\r"):
        raw = _with_endings(RECORDED_STREAM, nl)
        parser = SSEParser()
        events: list[SSEEvent] = []
        for byte in bytewise(raw):
            events += parser.feed(byte)
            assert parser.buffered_bytes <= len(raw)
        assert events == recorded_events  # all dispatched before close()
        assert parser.close() == []


def test_recorded_stream_without_final_blank_line(recorded_events: list[SSEEvent]) -> None:
    for cut in (b"\n\n", b"\n", b"}\n\n"):
        raw = RECORDED_STREAM.removesuffix(cut)
        events = parse([raw])
        assert events[:-1] == recorded_events[:-1]
        assert events[-1].data == recorded_events[-1].data.removesuffix(cut[:-2].decode())


# -- properties ------------------------------------------------------------------

# codec="utf-8" leaves out lone surrogates, which cannot be encoded.
FIELD_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=12)
ID_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\r\n\0"), max_size=8)

SSE_EVENTS = st.lists(
    st.tuples(
        st.none() | FIELD_TEXT,  # event
        st.lists(FIELD_TEXT, min_size=1, max_size=4),  # data lines
        st.none() | ID_TEXT,  # id
    ),
    max_size=8,
)

TOKENS = [
    b"data",
    b"data:",
    b"data: ",
    b"event:",
    b"event: ",
    b"event",
    b"id:",
    b"id",
    b"retry: ",
    b":",
    b": ",
    b" ",
    b"\n",
    b"\n",
    b"\r",
    b"\r\n",
    b"\n\n",
    b"x",
    b"yz",
    b"{}",
    BOM,
    b"\xef",
    b"\xff",
    b"\xe2\x82",
    b"\xf0\x9f\x8e",
    "é✓🎉".encode(),
    b"\x00",
    b"dat",
    b"a:",
    b"x" * 20,
]
# Byte soup that looks enough like SSE to reach every parser state.
SOUP = st.lists(st.sampled_from(TOKENS) | st.binary(max_size=6), max_size=60).map(b"".join)


@st.composite
def _cuts(draw: st.DrawFn, raw: bytes) -> list[int]:
    return draw(st.lists(st.integers(0, len(raw)), max_size=12))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=SSE_EVENTS, data=st.data())
def test_serialized_events_round_trip(
    events: list[tuple[str | None, list[str], str | None]], data: st.DataObject
) -> None:
    draw = data.draw
    lines: list[str] = []  # serialized lines, without endings
    expected: list[SSEEvent] = []
    last_id: str | None = None

    def field(name: str, value: str) -> str:
        if value.startswith(" ") or draw(st.booleans()):
            return f"{name}: {value}"
        if not value and draw(st.booleans()):
            return name  # "field" without colon: empty value
        return f"{name}:{value}"

    def noise() -> None:
        for _ in range(draw(st.integers(0, 2))):
            lines.append(
                draw(
                    st.sampled_from([": comment", ":", "retry: 3000", "foo: bar", "x-unknown"])
                    | FIELD_TEXT.map(lambda t: ":" + t)
                )
            )

    for name, data_lines, id_value in events:
        if draw(st.booleans()):  # an event without data: never dispatched
            lines.append(field("event", draw(FIELD_TEXT)))
            noise()
            lines.append("")
        body = [field("data", d) for d in data_lines]
        # event: and id: may come anywhere between the data lines.
        if name is not None:
            body.insert(draw(st.integers(0, len(body))), field("event", name))
        if id_value is not None:
            body.insert(draw(st.integers(0, len(body))), field("id", id_value))
            last_id = id_value or None
        for line in body:
            noise()
            lines.append(line)
        lines.append("")
        lines.extend([""] * draw(st.integers(0, 1)))  # extra blank lines are harmless
        expected.append(ev("\n".join(data_lines), name or None, last_id))
    if draw(st.booleans()) and lines:
        lines.pop()  # no trailing blank line: close() must flush the last event
        while lines and lines[-1] == "" and draw(st.booleans()):
            lines.pop()

    out = [BOM] if draw(st.booleans()) else []
    prev_ending = b""
    for line in lines:
        ending = draw(st.sampled_from([b"\n", b"\r\n", b"\r"]))
        if prev_ending == b"\r" and not line and ending == b"\n":
            ending = b"\r"  # CR + (empty line + LF) would read as one CRLF
        out += [line.encode(), ending]
        prev_ending = ending
    if draw(st.booleans()) and lines and lines[-1]:
        out.pop()  # the last line may even lack its line ending
    raw = b"".join(out)

    assert parse([raw]) == expected
    assert parse(split_at(raw, draw(_cuts(raw)))) == expected


@settings(max_examples=400, deadline=None)
@given(raw=SOUP, data=st.data())
def test_matches_spec_literal_reference(raw: bytes, data: st.DataObject) -> None:
    expected = reference_text(raw)
    assert parse([raw]) == expected
    assert parse(split_at(raw, data.draw(_cuts(raw)))) == expected
    assert parse(bytewise(raw)) == expected


@settings(max_examples=400, deadline=None)
@given(
    raw=SOUP,
    max_data=st.integers(0, 24),
    max_line=st.integers(0, 16),
    data=st.data(),
)
def test_limits_match_reference_under_any_split(raw: bytes, max_data: int, max_line: int, data: st.DataObject) -> None:
    limits = {"max_data_bytes": max_data, "max_line_bytes": max_line}
    expected = reference_bytes(raw, max_data, max_line)
    assert parse([raw], **limits) == expected
    assert parse(split_at(raw, data.draw(_cuts(raw))), **limits) == expected
    assert parse(bytewise(raw), **limits) == expected


@settings(max_examples=300, deadline=None)
@given(
    chunks=st.lists(st.binary(max_size=300) | SOUP, max_size=20),
    max_data=st.integers(0, 64),
    max_line=st.integers(0, 32),
)
def test_arbitrary_bytes_never_raise_and_memory_stays_bounded(
    chunks: list[bytes], max_data: int, max_line: int
) -> None:
    parser = SSEParser(max_data_bytes=max_data, max_line_bytes=max_line)
    bound = max_data + 3 * max(max_line, 5) + 3
    assert parser.max_buffered_bytes == bound
    for chunk in chunks:
        for event in parser.feed(chunk):
            assert len(event.data.encode()) <= 3 * max_data  # U+FFFD may triple a byte
        assert parser.buffered_bytes <= bound
    parser.close()
    assert parser.buffered_bytes == 0
    # Byte by byte, every partial-line state is held between calls.
    parser = SSEParser(max_data_bytes=max_data, max_line_bytes=max_line)
    for byte in bytewise(b"".join(chunks)):
        parser.feed(byte)
        assert parser.buffered_bytes <= bound


# -- the installed openai SDK's decoder as the oracle (sdk_compatible) --------------------------

# Valid UTF-8 only (the SDK raises at a line that is not), rich in line breaks and in the
# fields that make a blank line dispatch, so that chunk ends fall among runs of CRs.
SDK_TOKENS = [
    b"\r",
    b"\r",
    b"\r\r",
    b"\n",
    b"\r\n",
    b"\r\r\n",
    b"\n\r",
    b"id: 1",
    b"id:",
    b"id",
    b"data: x",
    b"data:",
    b"data",
    b"event: e",
    b"event:",
    b"retry: 5",
    b"retry: x",
    b": c",
    b"x",
    BOM,
    "é".encode(),
]
SDK_SOUP = st.lists(st.sampled_from(SDK_TOKENS), max_size=40).map(b"".join)


@st.composite
def cr_biased_cuts(draw: st.DrawFn, raw: bytes) -> list[int]:
    """Cut points, mostly right after a CR (where openai 2.x's decoder may split a CRLF)."""
    after_cr = [i + 1 for i, byte in enumerate(raw) if byte == 0x0D]
    cuts = draw(st.lists(st.sampled_from(after_cr), max_size=6)) if after_cr else []
    return cuts + draw(st.lists(st.integers(0, len(raw)), max_size=3))


def openai_2_decoder() -> bool:
    """Whether the installed SDK's decoder is openai 2.x's block-wise one (read from the class)."""
    from openai._streaming import SSEDecoder

    return hasattr(SSEDecoder, "_iter_chunks")


def test_streams_module_asks_the_sdk_which_decoder_it_has() -> None:
    from bgwatch._streams import SPLIT_CRLF_AFTER_BLOCK

    assert SPLIT_CRLF_AFTER_BLOCK is openai_2_decoder()


@pytest.mark.parametrize("split_crlf", [False, True], ids=["openai-3-decoder", "openai-2-decoder"])
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=SDK_SOUP, data=st.data())
def test_sdk_compatible_matches_the_installed_sdk_decoder(split_crlf: bool, raw: bytes, data: st.DataObject) -> None:
    """The parser in the installed SDK's mode dispatches what ``SSEDecoder.iter_bytes`` does.

    Each mode runs only where it is the installed decoder's: openai 2.x's for ``split_crlf``.
    """
    if split_crlf != openai_2_decoder():
        pytest.skip("the installed openai has the other decoder")
    from openai._streaming import SSEDecoder

    chunks = [chunk for chunk in split_at(raw, data.draw(cr_biased_cuts(raw))) if chunk]
    expected = [(sse.event, sse.data, sse.id or None) for sse in SSEDecoder().iter_bytes(iter(chunks))]
    got = [(event.event, event.data, event.id) for event in sdk_parse(chunks, split_crlf=split_crlf)]
    assert got == expected
