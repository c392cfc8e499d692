"""`TextHoldback`: streamed text equals the whole text cut at the first completed stop string, whatever
the byte split, and nothing is ever sent that a stop string later claims."""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.speculative.holdback import HoldbackChunk, TextHoldback

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Few characters, of every UTF-8 length, so stop strings overlap and characters split often.
ALPHABET = "ab\né€😀"


def reference(text: str, stops: list[str]) -> tuple[str, bool]:
    """The shortest prefix that ends with a stop string, cut before the longest stop ending there."""
    stops = [s for s in stops if s]
    for end in range(1, len(text) + 1):
        ending = [s for s in stops if text[:end].endswith(s)]
        if ending:
            return text[: end - max(map(len, ending))], True
    return text, False


@st.composite
def split_bytes(draw: st.DrawFn, data: bytes) -> list[bytes]:
    cuts = sorted(draw(st.sets(st.integers(1, max(len(data) - 1, 1)), max_size=len(data))))
    bounds = [0, *(c for c in cuts if c < len(data)), len(data)]
    return [data[i:j] for i, j in itertools.pairwise(bounds)]


@st.composite
def cases(draw: st.DrawFn) -> tuple[str, list[str], list[bytes]]:
    text = draw(st.text(ALPHABET, max_size=40))
    substrings = st.tuples(st.integers(0, len(text)), st.integers(1, 5)).map(lambda p: text[p[0] : p[0] + p[1]])
    stops = draw(st.lists(st.text(ALPHABET, min_size=1, max_size=4) | substrings, max_size=3))
    return text, stops, draw(split_bytes(text.encode()))


def stream(pieces: list[bytes], stops: list[str]) -> tuple[list[HoldbackChunk], TextHoldback]:
    holdback = TextHoldback(stops)
    chunks = [holdback.feed(piece) for piece in pieces]
    chunks.append(holdback.finish())
    return chunks, holdback


@FUZZ
@given(cases())
def test_streamed_text_is_the_text_cut_at_the_first_stop(case: tuple[str, list[str], list[bytes]]) -> None:
    text, stops, pieces = case
    chunks, _ = stream(pieces, stops)
    expected, stopped = reference(text, stops)
    assert "".join(c.text for c in chunks) == expected
    assert chunks[-1].stopped == stopped


@FUZZ
@given(cases())
def test_nothing_sent_is_ever_claimed_by_a_stop(case: tuple[str, list[str], list[bytes]]) -> None:
    text, stops, pieces = case
    expected, _ = reference(text, stops)
    holdback = TextHoldback(stops)
    sent = ""
    received = b""
    longest = max((len(s) for s in stops), default=0)
    for piece in pieces:
        received += piece
        chunk = holdback.feed(piece)
        assert "\ufffd" not in chunk.text  # a split character is never sent half-decoded
        assert not any(s and s in chunk.text for s in stops)
        sent += chunk.text
        assert expected.startswith(sent)  # never more than what survives the stop
        assert not any(s and s in sent for s in stops)
        if chunk.stopped:
            assert sent == expected
            break
        # Liveness: all that is held back is a short suffix that could still start a stop.
        assert sent + holdback.held == received.decode("utf-8", errors="ignore")
        assert len(holdback.held) < max(longest, 1)


@FUZZ
@given(st.data())
def test_arbitrary_bytes_decode_as_a_server_would(data: st.DataObject) -> None:
    raw = data.draw(st.binary(max_size=40))
    pieces = data.draw(split_bytes(raw))
    stops = data.draw(st.lists(st.text("ab\ufffd", min_size=1, max_size=3), max_size=2))
    chunks, _ = stream(pieces, stops)
    assert "".join(c.text for c in chunks) == reference(raw.decode("utf-8", errors="replace"), stops)[0]


def test_stop_spanning_several_tokens() -> None:
    holdback = TextHoldback(["</end>"])
    assert holdback.feed(b"hello </") == HoldbackChunk("hello ", False)
    assert holdback.feed(b"en") == HoldbackChunk("", False)
    assert holdback.feed(b"d> after") == HoldbackChunk("", True)
    assert holdback.feed(b"more") == HoldbackChunk("", True)
    assert holdback.finish() == HoldbackChunk("", True)


def test_a_false_start_is_released() -> None:
    holdback = TextHoldback(["</end>"])
    assert holdback.feed(b"a </e") == HoldbackChunk("a ", False)
    assert holdback.feed(b"m>") == HoldbackChunk("</em>", False)


def test_multibyte_character_split_across_tokens() -> None:
    holdback = TextHoldback()
    euro = "€".encode()
    assert holdback.feed(b"1" + euro[:1]) == HoldbackChunk("1", False)
    assert holdback.feed(euro[1:2]) == HoldbackChunk("", False)
    assert holdback.feed(euro[2:]) == HoldbackChunk("€", False)


def test_stop_right_after_a_split_character() -> None:
    holdback = TextHoldback(["€!"])
    euro = "€".encode()
    assert holdback.feed(b"x" + euro[:2]) == HoldbackChunk("x", False)
    assert holdback.feed(euro[2:]) == HoldbackChunk("", False)
    assert holdback.feed(b"!y") == HoldbackChunk("", True)


def test_overlapping_stop_candidates() -> None:
    # "abc" is still possible after "ab", but "b" completes first: it wins.
    holdback = TextHoldback(["abc", "b"])
    assert holdback.feed(b"xa") == HoldbackChunk("x", False)
    assert holdback.feed(b"bc") == HoldbackChunk("a", True)
    # Same end: cut before the longer stop.
    holdback = TextHoldback(["c", "bc"])
    assert holdback.feed(b"abc") == HoldbackChunk("a", True)
    # "aab" against "ab": the held "aa" gives back its first "a".
    holdback = TextHoldback(["ab"])
    assert holdback.feed(b"a") == HoldbackChunk("", False)
    assert holdback.feed(b"a") == HoldbackChunk("a", False)
    assert holdback.feed(b"b") == HoldbackChunk("", True)


def test_finish_flushes_held_text_and_replaces_an_incomplete_tail() -> None:
    holdback = TextHoldback(["STOP"])
    assert holdback.feed(b"ok ST" + "😀".encode()[:3]) == HoldbackChunk("ok ", False)
    assert holdback.finish() == HoldbackChunk("ST\ufffd", False)


def test_finish_can_complete_a_stop() -> None:
    holdback = TextHoldback(["a\ufffd"])
    assert holdback.feed(b"xa\xe2\x82") == HoldbackChunk("x", False)
    assert holdback.finish() == HoldbackChunk("", True)


def test_empty_stop_strings_are_ignored() -> None:
    holdback = TextHoldback(["", "zz"])
    assert holdback.feed(b"abc") == HoldbackChunk("abc", False)
    assert holdback.finish() == HoldbackChunk("", False)
