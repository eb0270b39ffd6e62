"""Incremental, bounded-memory parser for ``text/event-stream`` (Server-Sent Events).

bgwatch sees a streamed response as raw byte chunks passing through an httpx
transport hook. It must observe them without buffering the stream, so this
parser is fed chunk by chunk and returns the events each chunk completes.

Parsing follows the WHATWG HTML "event stream interpretation" algorithm
(https://html.spec.whatwg.org/multipage/server-sent-events.html), with these
deliberate differences, all driven by the parser running on untrusted bytes
inside somebody else's HTTP client:

* Memory is bounded per stream, whatever the stream length and whatever the
  length of any one line: an event keeps at most ``max_data_bytes`` of data
  (the prefix, flagged ``truncated=True``), ``event:`` and ``id:`` lines
  longer than ``max_line_bytes`` are ignored, and comments, unknown fields and
  ``retry:`` are discarded as they stream by, never buffered.
* :meth:`SSEParser.close` dispatches a final event that was not followed by a
  blank line (the spec discards it), unless ``sdk_compatible``.
* Nothing raises on malformed input; invalid UTF-8 decodes with U+FFFD.

``sdk_compatible=True`` makes the parser dispatch exactly the events the openai SDK's own
decoder (``openai._streaming.SSEDecoder``) dispatches, which departs from the spec in three
ways: a byte order mark is not stripped (the first line then names an unknown field), an
event is dispatched at a blank line when it has data, an event type, a valid ``retry:`` or a
non-empty last event ID (an event with no data line then carries ``""``, which the SDK fails
to parse as JSON), and a last event with no blank line after it is never dispatched.

``split_crlf_after_block=True`` (with ``sdk_compatible``) adds the one chunk-boundary case
in which openai 2.x's decoder departs from that: it gathers the lines of the network chunks
into blocks, yields a block as soon as it ends in ``\r\r``, ``\n\n`` or ``\r\n\r\n``,
and splits each block into lines on its own. So when a block ends in a CR that ends a network
chunk and the next chunk starts with LF, that CR and LF are two line endings: the LF ends an
extra blank line, which dispatches an event with data ``""`` after a non-empty ``id:``
(openai 3.x, the spec and this parser otherwise read one CRLF). Inside one network chunk a
CRLF is never split (``splitlines`` keeps it whole), so only chunk ends decide, by parity.
Say the 2.x buffer holds an *unpaired CR* when it ends in a CR that did not end a block. A CR
ending a line of text leaves one unpaired; a bare CR (a blank line) ends a block if one was
unpaired, and is left unpaired itself otherwise. Hence, for a chunk ending in a run of ``k``
CRs: if the chunk holds other bytes, a CR is left unpaired iff ``k`` is odd (whether the bytes
before the run end in LF or not); if it holds only CRs, iff the previous chunk left one
unpaired xor ``k`` is odd; and a chunk not ending in CR leaves none. The chunk ended a block
at its last CR iff it ends in CR and leaves none unpaired. The cost is one ``rstrip`` per
chunk that ends in CR, nothing for the others.

Line splitting works on bytes: CR, LF and ``:`` are ASCII, and UTF-8
decoding with ``errors="replace"`` never swallows an ASCII byte, so splitting
before decoding gives the same result as the spec's decode-then-split.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from operator import length_hint

__all__ = ["SSEEvent", "SSEParser", "line_endings"]

_BOM = b"\xef\xbb\xbf"
_LF = 0x0A
_CR = 0x0D
_COLON = 0x3A
_SPACE = 0x20
# CRLF or a lone CR. One regex pass normalises both to LF faster (up to ~5x on
# large events) than bytes.replace(b"\r\n", ...), whose two-byte search is slow.
_CR_ENDING = re.compile(rb"\r\n?")
_LINE_ENDING = re.compile(rb"\r\n?|\n")

# Longest field name the spec gives a meaning to ("event", "retry"). A line whose
# first _MAX_FIELD_NAME + 1 bytes hold no colon names an unknown field and is
# skipped, so at most this many bytes of a field name are ever buffered.
_MAX_FIELD_NAME = 5

# feed() splits a chunk into a list of lines; a huge chunk of nothing but line
# breaks would make that list ~8x the chunk size. Parsing big chunks in windows
# of this size caps that transient overhead (the parser is split-invariant, so
# windowing changes nothing else).
_WINDOW = 1 << 18

# States of the line currently being received (one not yet ended by CR/LF).
_HEAD = 0  # field name not known yet: ``_line`` holds <= _MAX_FIELD_NAME bytes, no colon
_DATA_START = 1  # "data:" seen, value not started: a leading space may still need stripping
_DATA = 2  # inside a data value: bytes go straight to the event's data buffer
_KEEP = 3  # "event:" / "id:" line: ``_line`` holds the whole line, <= max_line_bytes
_SKIP = 4  # comment, unknown field, retry, or over-long line: discard up to the line end


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched Server-Sent Event.

    Attributes:
        event: The ``event:`` field, or None when absent (or empty), which the
            spec calls a "message" event.
        data: The ``data:`` lines joined with "\\n", decoded as UTF-8 with
            invalid bytes replaced. When ``truncated`` it is only a prefix.
        id: The last event ID in effect when the event was dispatched, or None
            when none was set (or it was reset by an empty ``id:``). As in the
            spec, an ``id:`` persists for the following events until changed.
        truncated: True when the data exceeded ``max_data_bytes`` and only its
            first ``max_data_bytes`` bytes were kept (less up to 3 bytes of a
            UTF-8 character the cut would split).
    """

    event: str | None
    data: str
    id: str | None
    truncated: bool


class SSEParser:
    """Incremental Server-Sent Events parser for one stream, in O(1) memory.

    Feed it the stream's bytes in chunks of any size and split anywhere: the
    events returned do not depend on where the chunk boundaries fall (except
    with ``split_crlf_after_block``, which copies a decoder for which they do).
    Call :meth:`close` once at end of stream.

    Memory held between calls is bounded by :attr:`max_buffered_bytes`
    (plus per-object overhead), however long the stream or any line in it.
    One parser per stream; it is not thread-safe.

    Example:
        >>> p = SSEParser()
        >>> p.feed(b"event: ping\\ndata: {")
        []
        >>> p.feed(b'}\\n\\n')
        [SSEEvent(event='ping', data='{}', id=None, truncated=False)]
    """

    __slots__ = (
        "_at_start",
        "_closed",
        "_cr_pending",
        "_data",
        "_event",
        "_has_data",
        "_head",
        "_id",
        "_id_str",
        "_line",
        "_max_data",
        "_max_line",
        "_mode",
        "_retry_set",
        "_sdk",
        "_split_crlf",
        "_truncated",
        "_unpaired_cr",
    )

    def __init__(
        self,
        *,
        max_data_bytes: int = 65536,
        max_line_bytes: int = 4096,
        sdk_compatible: bool = False,
        split_crlf_after_block: bool = False,
    ) -> None:
        """Create a parser for one stream.

        Args:
            max_data_bytes: Most bytes of one event's data to keep (the data
                lines joined with "\\n"); beyond it the event is truncated.
            max_line_bytes: Longest ``event:`` or ``id:`` line accepted, field
                name included; longer ones are ignored. Data lines are bounded
                by ``max_data_bytes`` instead, and comments and unknown fields
                are never buffered, so they have no line limit.
            sdk_compatible: dispatch what the openai SDK's decoder dispatches (see the module
                docstring) instead of what the spec says.
            split_crlf_after_block: with ``sdk_compatible``, read a CR that ends one of openai
                2.x's event blocks at the end of a chunk and an LF starting the next chunk as
                two line endings, as that decoder does (see the module docstring).

        Raises:
            ValueError: If a limit is negative, or ``split_crlf_after_block`` is given
                without ``sdk_compatible``.
        """
        if max_data_bytes < 0 or max_line_bytes < 0:
            raise ValueError("max_data_bytes and max_line_bytes must be >= 0")
        if split_crlf_after_block and not sdk_compatible:
            raise ValueError("split_crlf_after_block emulates the openai SDK: it needs sdk_compatible")
        self._max_data = max_data_bytes
        self._max_line = max_line_bytes
        self._sdk = sdk_compatible
        self._retry_set = False  # a valid retry: line since the last dispatch (SDK mode only)
        # Stream position state.
        self._at_start = not sdk_compatible  # the first bytes may be a BOM, possibly split across chunks
        self._head = b""  # first bytes of the stream while they are still a BOM prefix
        self._cr_pending = False  # last chunk ended in CR: a leading LF finishes that CRLF
        self._split_crlf = split_crlf_after_block
        self._unpaired_cr = False  # openai 2.x's block buffer ends in an unpaired CR (split mode)
        self._closed = False
        # Current line state (see the _HEAD.._SKIP constants).
        self._mode = _HEAD
        self._line = bytearray()
        # Current event state.
        # Data lines joined with b"\n", at most _max_data bytes. The first line is
        # stored as the bytes object itself (no copy: most events have one data
        # line); it becomes a bytearray only when more is appended.
        self._data: bytes | bytearray = b""
        self._has_data = False  # a data line was seen: dispatch even if the data is empty
        self._truncated = False
        self._event = b""  # event type buffer
        self._id = b""  # last event ID buffer (persists across events, as in the spec)
        self._id_str: str | None = None  # _id decoded once, not once per event

    @property
    def buffered_bytes(self) -> int:
        """Bytes of stream content currently held between calls.

        Always at most :attr:`max_buffered_bytes`; tests use it to check that
        memory stays bounded.
        """
        return len(self._head) + len(self._line) + len(self._data) + len(self._event) + len(self._id)

    @property
    def max_buffered_bytes(self) -> int:
        """Upper bound of :attr:`buffered_bytes` for this parser's limits.

        One event's data, one partial line (an ``event:``/``id:`` line, or a
        field name of at most 5 bytes), the event type and the last event ID
        (each shorter than a line), and a partial BOM.
        """
        return self._max_data + 3 * max(self._max_line, _MAX_FIELD_NAME) + len(_BOM)

    def feed(self, chunk: bytes, dispatched_at: list[int] | None = None) -> list[SSEEvent]:
        """Parse the next chunk of the stream.

        Args:
            chunk: The next bytes of the stream, split anywhere.
            dispatched_at: If given, a list that receives, for each event returned, where in
                ``chunk`` it was dispatched: the index of the blank line's line ending among the
                matches of :func:`line_endings` over ``chunk``. When omitted, costs one test per event.

        Returns:
            The events completed by this chunk, in stream order; often empty.
            Nothing is returned after :meth:`close`.
        """
        events: list[SSEEvent] = []
        if self._closed or not chunk:
            return events
        if self._split_crlf:
            self._track_blocks(chunk)
        if len(chunk) <= _WINDOW:
            self._feed(chunk, events, dispatched_at, 0, False)
        else:
            endings = 0
            for start in range(0, len(chunk), _WINDOW):
                endings += self._feed(chunk[start : start + _WINDOW], events, dispatched_at, endings, start > 0)
        return events

    @property
    def crlf_pending(self) -> bool:
        """Whether an LF starting the next chunk would be the second half of a CRLF.

        True when the last chunk ended in CR, unless ``split_crlf_after_block`` says that
        openai 2.x ended a block at that CR (then such an LF ends a line of its own).
        """
        return self._cr_pending and not (self._split_crlf and not self._unpaired_cr)

    def close(self) -> list[SSEEvent]:
        """Signal the end of the stream and flush what it left pending.

        An unterminated last line is treated as complete, and an event that
        was not followed by a blank line is dispatched. Calling it again
        returns an empty list.

        Returns:
            The final event, if one was pending, in a list.
        """
        events: list[SSEEvent] = []
        if self._closed:
            return events
        # A stream that ended inside what might have been a BOM ("\xef" or
        # "\xef\xbb") is dropped: as a line it would be an unknown field.
        self._head = b""
        self._end_line(events)
        if self._has_data and not self._sdk:
            events.append(self._dispatch())
        self._closed = True
        # Release the buffers: a closed parser holds nothing.
        self._data = b""
        self._line = bytearray()
        self._event = self._id = b""
        return events

    # -- internals -------------------------------------------------------------

    def _track_blocks(self, chunk: bytes) -> None:
        """Follow openai 2.x's block buffer over one non-empty network chunk (split mode).

        If the last chunk ended a block at its final CR, an LF starting this chunk is a line
        ending of its own: forget the pending CR. Then the parity rule of the module docstring
        says whether this chunk leaves an unpaired CR at the end of the buffer.
        """
        if self._cr_pending and not self._unpaired_cr and chunk[0] == _LF:
            self._cr_pending = False
        if chunk[-1] != _CR:
            self._unpaired_cr = False
            return
        run = len(chunk) - len(chunk.rstrip(b"\r"))
        odd = run % 2 == 1
        self._unpaired_cr = odd if run < len(chunk) else self._unpaired_cr != odd

    def _feed(
        self, chunk: bytes, events: list[SSEEvent], dispatched_at: list[int] | None, base: int, continued: bool
    ) -> int:
        """Parse one non-empty chunk, appending completed events to ``events``.

        With ``dispatched_at``, each event's line ending is appended to it, counted from
        ``base`` (the line endings of the earlier windows of the same :meth:`feed` call;
        ``continued`` says there were some). Returns the number of line endings this window
        adds to that count (a CRLF split between two windows of one call counts once, in the
        first; an LF finishing a CRLF begun by the previous call is a match of its own).
        """
        if self._at_start:
            chunk = self._head + chunk
            if len(chunk) < len(_BOM) and _BOM.startswith(chunk):
                self._head = chunk  # cannot tell yet whether this is a BOM
                return 0
            self._at_start = False
            self._head = b""
            if chunk.startswith(_BOM):
                chunk = chunk[len(_BOM) :]
                if not chunk:
                    return 0

        # A CR ending the previous chunk already ended its line; an LF starting
        # this one is the second half of that CRLF, not another line ending.
        skip_lf = self._cr_pending and chunk[0] == _LF
        if b"\r" in chunk:
            # Uncommon in practice (most servers send LF only). Normalising lets one C-level
            # split() find every line; a CR at the very end becomes a line end whose
            # possible LF partner arrives with the next chunk.
            self._cr_pending = chunk[-1] == _CR
            chunk = _CR_ENDING.sub(b"\n", chunk)
        else:
            self._cr_pending = False

        lines = chunk.split(b"\n")
        # The last piece is the start of a line that is not complete yet.
        tail = lines.pop()
        # An LF joined to a CR of the previous window of this call is no match of its own.
        hidden = skip_lf and continued
        if lines:
            it = iter(lines)
            # The line ending of the current line is the match numbered top - length_hint(it).
            top = base + len(lines) - 1 - hidden if dispatched_at is not None else 0
            if skip_lf:
                next(it)
            if self._mode != _HEAD or self._line:
                # The previous chunk left a line in progress: its end is here.
                first = next(it, None)
                if first is not None:
                    self._feed_partial(first)
                    self._end_line(events)
            # Hot loop, one iteration per complete line: the cases of a real stream
            # (blank line, "data:", "event:") come first and are inlined, since
            # method calls would cost as much as the parsing itself.
            max_data = self._max_data
            max_line = self._max_line
            for line in it:
                if not line:
                    # Blank line: dispatch. This is _dispatch() inlined for the
                    # common, untruncated case.
                    if not self._has_data and self._sdk and (self._event or self._id or self._retry_set):
                        if dispatched_at is not None:
                            dispatched_at.append(top - length_hint(it))
                        events.append(self._dispatch())  # the SDK's dataless event: data ""
                        continue
                    if self._has_data:
                        if dispatched_at is not None:
                            dispatched_at.append(top - length_hint(it))
                        if self._truncated:
                            events.append(self._dispatch())
                            continue
                        event = self._event
                        events.append(
                            SSEEvent(
                                event.decode("utf-8", "replace") if event else None,
                                self._data.decode("utf-8", "replace"),
                                self._id_str,
                                False,
                            )
                        )
                        self._data = b""
                        self._has_data = False
                        self._retry_set = False
                    self._event = b""
                elif line.startswith(b"data:"):
                    value = line[6:] if line[5:6] == b" " else line[5:]
                    if self._has_data:
                        self._put_line(value)
                    else:
                        self._has_data = True
                        if len(value) <= max_data:
                            self._data = value
                        else:
                            self._put(value)
                elif line.startswith(b"event:"):
                    if len(line) <= max_line:
                        self._event = line[7:] if line[6:7] == b" " else line[6:]
                else:
                    self._process_field(line)
        if tail:
            self._feed_partial(tail)
        return len(lines) - hidden

    def _process_field(self, line: bytes) -> None:
        """Process one complete, non-empty line other than a ``data:`` line."""
        if line[0] == _COLON:
            return  # comment
        colon = line.find(b":")
        if colon < 0:
            name = line
            value = b""
        else:
            name = line[:colon]
            value = line[colon + 2 :] if line[colon + 1 : colon + 2] == b" " else line[colon + 1 :]
        if name == b"data":  # in practice "data" without a colon: an empty data line
            self._start_data_line()
            self._put(value)
        elif name == b"event":
            if len(line) <= self._max_line:
                self._event = value
        elif name == b"id" and len(line) <= self._max_line and b"\x00" not in value:
            # The spec ignores an id containing NUL; an over-long one is junk.
            self._set_id(value)
        elif name == b"retry" and self._sdk:
            # The SDK keeps a retry that int() accepts, and a kept one makes the next blank line dispatch.
            try:
                int(value.decode("utf-8"))
            except ValueError:
                return
            self._retry_set = True
        # Anything else is ignored.

    def _feed_partial(self, piece: bytes) -> None:
        """Add ``piece`` to the line in progress, which it does not end."""
        mode = self._mode
        if mode == _HEAD:
            if not piece:
                return
            known = len(self._line)
            if not known and piece.startswith(b"data:"):
                # Fast path for the usual case: a chunk boundary inside a data line.
                self._start_data_line()
                if len(piece) == 5:
                    self._mode = _DATA_START
                else:
                    self._mode = _DATA
                    self._put(piece[6:] if piece[5] == _SPACE else piece[5:])
                return
            # Classify on the first bytes only, so a huge piece is never copied.
            head = bytes(self._line) + piece[: _MAX_FIELD_NAME + 1 - known]
            colon = head.find(b":")
            if colon < 0:
                if len(head) > _MAX_FIELD_NAME:
                    mode = _SKIP  # name too long to be one we know: ignore the line
                    self._line.clear()
                else:
                    self._line[:] = head  # still undecided; wait for more bytes
            elif colon == 0:
                mode = _SKIP  # comment
            else:
                name = head[:colon]
                # The colon was not in _line (it would have been classified), so it
                # lies in piece: what follows it is this line's value so far.
                rest = piece[colon + 1 - known :]
                if name == b"data":
                    self._line.clear()
                    self._start_data_line()
                    mode = _DATA_START
                    piece = rest
                elif name in (b"event", b"id") or (name == b"retry" and self._sdk):
                    if known + len(piece) > self._max_line:
                        mode = _SKIP
                        self._line.clear()
                    else:
                        mode = _KEEP
                        self._line += piece
                    self._mode = mode
                    return
                else:
                    mode = _SKIP
                    self._line.clear()
            self._mode = mode
            if mode != _DATA_START:
                return
        if mode == _DATA_START:
            if not piece:
                return
            if piece[0] == _SPACE:
                piece = piece[1:]
            self._mode = _DATA
            self._put(piece)
        elif mode == _DATA:
            self._put(piece)
        elif mode == _KEEP:
            if len(self._line) + len(piece) > self._max_line:
                self._mode = _SKIP
                self._line.clear()
            else:
                self._line += piece
        # _SKIP: discard.

    def _end_line(self, events: list[SSEEvent]) -> None:
        """End the line in progress (at a line break or at end of stream)."""
        mode = self._mode
        self._mode = _HEAD
        if mode == _HEAD:
            if not self._line:
                return
            line = bytes(self._line)  # a short field name without colon, e.g. "data"
        elif mode == _KEEP:
            line = bytes(self._line)
        else:
            return  # data already stored, or a skipped line
        self._line.clear()
        self._process_field(line)

    def _start_data_line(self) -> None:
        """Record that a data line began: the spec joins data lines with LF."""
        if self._has_data:
            self._put(b"\n")
        else:
            self._has_data = True

    def _put_line(self, value: bytes) -> None:
        """Append a complete data line (not the event's first) to the data."""
        self._put(b"\n")
        self._put(value)

    def _put(self, value: bytes) -> None:
        """Append ``value`` to the event's data, keeping at most ``max_data_bytes``."""
        if self._truncated or not value:
            return
        data = self._data
        if type(data) is bytes:
            # Appending: switch to a mutable buffer so that many small pieces (a line
            # fed byte by byte) cost O(total), not O(total**2).
            data = self._data = bytearray(data)
        room = self._max_data - len(data)
        if len(value) > room:
            data += value[:room]
            self._truncated = True
        else:
            data += value

    def _set_id(self, value: bytes) -> None:
        """Set the last event ID buffer; an empty value resets it to None."""
        self._id = value
        self._id_str = value.decode("utf-8", "replace") if value else None

    def _dispatch(self) -> SSEEvent:
        """Build the pending event and reset the per-event buffers."""
        data = self._data
        if self._truncated:
            data = data[: _utf8_cut(data)]
        event = SSEEvent(
            self._event.decode("utf-8", "replace") if self._event else None,
            data.decode("utf-8", "replace"),
            self._id_str,
            self._truncated,
        )
        self._data = b""
        self._has_data = False
        self._truncated = False
        self._retry_set = False
        self._event = b""
        return event


def line_endings(chunk: bytes) -> list[tuple[int, int]]:
    """The ``(start, end)`` of every line ending in ``chunk`` (CRLF, CR or LF), in order.

    Maps the indices :meth:`SSEParser.feed` puts in ``dispatched_at`` to byte offsets. An LF
    starting ``chunk`` is a match of its own, also when it finishes a CRLF begun by the
    previous chunk.
    """
    return [match.span() for match in _LINE_ENDING.finditer(chunk)]


def _utf8_cut(data: bytes | bytearray) -> int:
    """Length of ``data`` without a trailing UTF-8 sequence cut short.

    Truncation cuts at a byte count; decoding the cut half of a character
    would append a U+FFFD that is not in the stream.
    """
    n = len(data)
    for i in range(n - 1, max(n - 4, -1), -1):
        byte = data[i]
        if byte < 0x80:
            return n  # ASCII: nothing cut
        if byte >= 0xC0:  # lead byte: does its sequence fit before the end?
            size = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return i if n - i < size else n
    return n
