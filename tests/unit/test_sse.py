"""`SSEFramer`: whole events out whatever the chunking, CRLF framing, `done` on `data: [DONE]`."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.sse import DONE_EVENT, SSEFramer

payloads = st.dictionaries(st.text(max_size=6), st.text(max_size=12) | st.integers() | st.none(), max_size=4)
# One event: optional `event:`/`id:` lines and one or more `data:` lines of JSON (never a raw newline).
event_lines = st.lists(
    st.one_of(
        payloads.map(lambda v: b"data: " + msgspec.json.encode(v)),
        st.sampled_from([b"event: message", b"id: 7", b": keep-alive comment", b"data:"]),
    ),
    min_size=1,
    max_size=4,
)
events = st.lists(event_lines, min_size=1, max_size=8)


def frame(evts: list[list[bytes]], newline: bytes) -> list[bytes]:
    return [newline.join(lines) + newline + newline for lines in evts]


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def feed_all(chunks: list[bytes]) -> tuple[SSEFramer, list[bytes]]:
    framer = SSEFramer()
    outputs = [framer.feed(chunk) for chunk in chunks]
    return framer, outputs


@settings(max_examples=300, deadline=None)
@given(evts=events, newline=st.sampled_from([b"\n", b"\r\n"]), done=st.booleans(),
       cuts=st.lists(st.integers(min_value=0), max_size=20))
def test_any_split_reassembles_to_the_same_whole_events(
    evts: list[list[bytes]], newline: bytes, done: bool, cuts: list[int]
) -> None:
    framed = frame(evts, newline)
    if done:
        framed.append(DONE_EVENT.replace(b"\n", newline))
    stream = b"".join(framed)
    framer, outputs = feed_all(split_at(stream, cuts))

    assert b"".join(outputs) == stream.replace(b"\r\n", b"\n")
    assert framer.pending == b""
    assert framer.done is done
    # Every output ends exactly at an event boundary of the normalized stream.
    boundaries = set()
    position = 0
    for event in framed:
        position += len(event.replace(b"\r\n", b"\n"))
        boundaries.add(position)
    position = 0
    for out in outputs:
        if out:
            assert out.endswith(b"\n\n")
            position += len(out)
            assert position in boundaries


@settings(max_examples=200, deadline=None)
@given(evts=events, cut=st.integers(min_value=1))
def test_an_incomplete_tail_stays_pending(evts: list[list[bytes]], cut: int) -> None:
    stream = b"".join(frame(evts, b"\n"))
    last_start = len(stream) - len(frame(evts[-1:], b"\n")[0])
    cut_at = last_start + cut % (len(stream) - last_start - 1) + 1  # inside the last event, not at its end
    framer, outputs = feed_all([stream[:cut_at]])
    assert outputs == [stream[:last_start]]
    assert framer.pending == stream[last_start:cut_at]
    assert not framer.done


def test_byte_by_byte_crlf() -> None:
    stream = b'data: {"a":1}\r\n\r\ndata: {"b":2}\r\n\r\ndata: [DONE]\r\n\r\n'
    framer, outputs = feed_all([bytes([b]) for b in stream])
    assert [o for o in outputs if o] == [b'data: {"a":1}\n\n', b'data: {"b":2}\n\n', DONE_EVENT]
    assert framer.done


def test_done_only_on_the_done_event() -> None:
    framer = SSEFramer()
    assert framer.feed(b'data: {"content":"data: [DONE]"}\n\n') == b'data: {"content":"data: [DONE]"}\n\n'
    assert not framer.done
    assert framer.feed(b"data: [DONE]") == b""
    assert not framer.done
    assert framer.feed(b"\n\n") == DONE_EVENT
    assert framer.done


def test_several_events_in_one_chunk_come_out_together() -> None:
    framer = SSEFramer()
    assert framer.feed(b"data: 1\n\ndata: 2\n\ndata: 3") == b"data: 1\n\ndata: 2\n\n"
    assert framer.pending == b"data: 3"
    assert framer.feed(b"\n\ndata: [DONE]\n\n") == b"data: 3\n\ndata: [DONE]\n\n"
    assert framer.done
