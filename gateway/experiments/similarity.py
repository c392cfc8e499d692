"""How far a shadow arm's answer is from the one served (issue 6): the text of a body, and their agreement.

A shadow arm mirrors a sample of a route's traffic to a candidate (a quantized or distilled model, say) and
never shows its output to the user; what the experiment keeps is whether the candidate *would have* said the
same thing. This module is pure: it reads finished, non-stream response bodies and scores two texts.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections import Counter
from typing import Any, NamedTuple

import msgspec

# Above this many tokens on either side the LCS is not attempted and a bag-of-tokens F1 stands in. Even
# word-parallel, the LCS table is n*m cells: 2,000 x 2,000 takes about 2 ms, which covers ordinary chat answers,
# while a 50k-token essay would cost a second of the gateway's event loop.
MAX_LCS_TOKENS = 2_000

# Words and single punctuation marks: "ok." and "ok!" share a token but still differ by one.
_TOKEN = re.compile(r"\w+|[^\w\s]")


class _Function(msgspec.Struct):
    name: str | None = None
    arguments: Any = None  # a JSON string by the spec; some servers send the object itself


class _ToolCall(msgspec.Struct):
    function: _Function | None = None


class _Message(msgspec.Struct):
    content: Any = None  # a string, or (rarely, in responses) a list of content parts
    tool_calls: list[_ToolCall] | None = None
    function_call: _Function | None = None  # the legacy single-call form


class _Choice(msgspec.Struct):
    message: _Message | None = None
    text: str | None = None


class _Body(msgspec.Struct):
    choices: list[_Choice] = msgspec.field(default_factory=list)


_decode_body = msgspec.json.Decoder(_Body).decode


def _content_text(content: Any) -> str:
    """A message's content as text; list-of-parts contents keep only their text parts, in order."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _canonical_call(function: _Function) -> dict[str, Any]:
    """Name and arguments of one call, the arguments parsed so key order and spacing cannot make a difference."""
    arguments = function.arguments
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            pass  # arguments that are not JSON compare as the raw string the model wrote
    return {"name": function.name, "arguments": arguments}


def answer_text(kind: str, body: bytes) -> str | None:
    """The first choice's answer in a non-stream `chat` or `completion` body, or None if it cannot be read.

    Chat tool calls are rendered as sorted-key JSON of name and arguments (after any content) so two tool-call
    answers compare by what they call, not by how the JSON was spelled.
    """
    try:
        choices = _decode_body(body).choices
    except msgspec.DecodeError:
        return None
    if not choices:
        return None
    choice = choices[0]
    if kind == "completion":
        return choice.text
    if kind != "chat" or choice.message is None:
        return None
    message = choice.message
    functions = [call.function for call in message.tool_calls or () if call.function is not None]
    if message.function_call is not None:
        functions.append(message.function_call)
    text = _content_text(message.content)
    if not functions:
        return text
    calls = json.dumps([_canonical_call(f) for f in functions], sort_keys=True, ensure_ascii=False)
    return f"{text}\n{calls}" if text else calls


class Agreement(NamedTuple):
    """How a candidate's answer compares with the served one."""

    exact: bool  # equal up to trailing whitespace and Unicode normal form
    similarity: float  # ROUGE-L F-measure over lowercased tokens, in [0, 1]
    prefix_tokens: int  # leading whitespace-separated tokens that agree: a late drift keeps this high
    length_ratio: float  # candidate / served characters; inf when only the served answer is empty


def _normalise(text: str) -> str:
    """NFC, with trailing whitespace dropped from each line and from the end: differences no reader sees."""
    text = unicodedata.normalize("NFC", text)
    return "\n".join(line.rstrip() for line in text.splitlines()).rstrip()


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.casefold())


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence of two token lists.

    The classic O(n*m) DP, computed a machine word at a time on Python ints (Hyyro's bit-vector form): bit i
    of `v` is set while row i of the DP table has not yet gained a match, so the zero bits count the LCS.
    """
    if len(a) < len(b):
        a, b = b, a  # the longer side becomes the bit vector: fewer, wider int operations
    masks: dict[str, int] = {}
    for i, token in enumerate(a):
        masks[token] = masks.get(token, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for token in b:
        u = v & masks.get(token, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def _bag_overlap(a: list[str], b: list[str]) -> int:
    return sum((Counter(a) & Counter(b)).values())


def token_similarity(served: str, candidate: str) -> float:
    """ROUGE-L F-measure (2*LCS / (n+m)); a bag-of-tokens F1 when either side exceeds MAX_LCS_TOKENS."""
    a, b = _tokens(served), _tokens(candidate)
    if not a and not b:
        return 1.0
    if not a or not b:
        return 0.0
    common = lcs_length(a, b) if max(len(a), len(b)) <= MAX_LCS_TOKENS else _bag_overlap(a, b)
    return 2 * common / (len(a) + len(b))


def compare_answers(served: str, candidate: str) -> Agreement:
    """Exact agreement, token similarity, agreeing prefix and relative length of `candidate` against `served`."""
    served_n, candidate_n = _normalise(served), _normalise(candidate)
    prefix = 0
    for left, right in zip(served_n.split(), candidate_n.split(), strict=False):
        if left != right:
            break
        prefix += 1
    if served_n:
        ratio = len(candidate_n) / len(served_n)
    else:
        ratio = 1.0 if not candidate_n else math.inf
    return Agreement(
        exact=served_n == candidate_n,
        similarity=token_similarity(served_n, candidate_n),
        prefix_tokens=prefix,
        length_ratio=ratio,
    )
