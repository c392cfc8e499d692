"""IncrementalText: committed ids to client text through a server's detokenizer, holding back split
characters and stop-string prefixes; the text equals detokenizing the whole output at once."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from gateway.speculative.text_stream import IncrementalText

EOS = 0


class ByteCodec:
    """Byte-level tokens (like GPT-2 BPE): id -> bytes; detokenize decodes with U+FFFD for broken UTF-8."""

    def __init__(self, pieces: dict[int, bytes]) -> None:
        self.pieces = pieces
        self.calls = 0

    async def tokenize(self, text: str) -> list[int]:
        raise NotImplementedError

    async def detokenize(self, ids: Sequence[int]) -> str:
        self.calls += 1
        return b"".join(self.pieces[i] for i in ids).decode("utf-8", "replace")


def codec_for(text: str, rng: random.Random) -> tuple[ByteCodec, list[int]]:
    """`text` as byte tokens of 1-3 bytes, cut anywhere (inside characters too)."""
    data = text.encode()
    pieces: dict[int, bytes] = {EOS: b""}
    ids: list[int] = []
    at = 0
    while at < len(data):
        size = rng.randint(1, 3)
        ids.append(len(pieces))
        pieces[len(pieces)] = data[at : at + size]
        at += size
    return ByteCodec(pieces), ids


async def stream(codec: ByteCodec, ids: list[int], groups: list[int], stop: Sequence[str] = ()) -> tuple[str, bool]:
    text = IncrementalText(codec, {EOS}, stop)
    out, at = [], 0
    for size in groups:
        step = await text.push(ids[at : at + size])
        at += size
        out.append(step.text)
        if step.stopped:
            return "".join(out), True
    step = await text.finish()
    return "".join(out) + step.text, step.stopped


@pytest.mark.parametrize("seed", range(20))
async def test_streamed_text_equals_the_whole_decode_however_the_tokens_are_grouped(seed: int) -> None:
    rng = random.Random(seed)
    original = "Grüße 👩‍👩‍👧 from 東京, naïve café — ok\n\tdone ✅"
    codec, ids = codec_for(original, rng)
    groups = []
    left = len(ids)
    while left:
        groups.append(min(left, rng.randint(1, 5)))
        left -= groups[-1]
    text, stopped = await stream(codec, [*ids, EOS], [*groups, 1])
    assert text == original and not stopped


async def test_a_split_character_is_held_until_its_last_byte() -> None:
    codec = ByteCodec({1: b"a", 2: "é".encode()[:1], 3: "é".encode()[1:], EOS: b""})
    text = IncrementalText(codec, {EOS})
    assert (await text.push([1])).text == "a"
    assert (await text.push([2])).text == ""
    assert (await text.push([3])).text == "é"


async def test_a_stop_string_across_tokens_cuts_the_text_and_counts_the_tokens_that_made_it() -> None:
    rng = random.Random(7)
    codec, ids = codec_for("alpha beta STOP gamma", rng)
    text, stopped = await stream(codec, ids, [2] * (len(ids) // 2) + [len(ids) % 2] * (len(ids) % 2), ["STOP"])
    assert stopped and text == "alpha beta "
    counter = IncrementalText(codec, {EOS}, ["STOP"])
    used = await counter.tokens_through_stop(ids)
    whole = await codec.detokenize(ids[:used])
    assert "STOP" in whole and "STOP" not in await codec.detokenize(ids[: used - 1])


async def test_eos_is_never_detokenized_and_an_incomplete_tail_ends_as_a_replacement_character() -> None:
    codec = ByteCodec({1: b"x", 2: "é".encode()[:1], EOS: b"<eos>"})
    text = IncrementalText(codec, {EOS})
    assert (await text.push([1, EOS])).text == "x"
    assert (await text.push([2])).text == ""
    assert (await text.finish()).text == "\ufffd"
