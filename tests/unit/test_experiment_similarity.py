"""Shadow-arm agreement: reading answers out of bodies, and scoring a candidate's answer against the served one."""

from __future__ import annotations

import json
import math
import random
import unicodedata

import pytest

from gateway.experiments.similarity import (
    MAX_LCS_TOKENS,
    Agreement,
    answer_text,
    compare_answers,
    lcs_length,
    token_similarity,
)


def chat_body(content: object = None, tool_calls: list[dict[str, object]] | None = None) -> bytes:
    message: dict[str, object] = {"role": "assistant", "content": content}
    if tool_calls is not None:
        message["tool_calls"] = tool_calls
    return json.dumps({"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": message}]}).encode()


def tool_call(name: str, arguments: str) -> dict[str, object]:
    return {"id": "call_1", "type": "function", "function": {"name": name, "arguments": arguments}}


def reference_lcs(a: list[str], b: list[str]) -> int:
    """The textbook DP, to check the bit-parallel one against."""
    previous = [0] * (len(b) + 1)
    for x in a:
        row = [0]
        for j, y in enumerate(b):
            row.append(previous[j] + 1 if x == y else max(previous[j + 1], row[j]))
        previous = row
    return previous[-1]


# --- answer_text ---


def test_chat_content_and_completion_text() -> None:
    assert answer_text("chat", chat_body("Hello there")) == "Hello there"
    body = json.dumps({"choices": [{"text": "once upon", "index": 0}, {"text": "other"}]}).encode()
    assert answer_text("completion", body) == "once upon"


def test_null_content_is_an_empty_answer() -> None:
    assert answer_text("chat", chat_body(None)) == ""


def test_content_parts_keep_their_text() -> None:
    parts = [{"type": "text", "text": "a"}, {"type": "image_url"}, {"type": "text", "text": "b"}]
    assert answer_text("chat", chat_body(parts)) == "ab"


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        ("chat", b"not json"),
        ("chat", b"{}"),
        ("chat", b'{"choices": []}'),
        ("chat", b'{"choices": [{"index": 0}]}'),
        ("chat", b'{"choices": "nope"}'),
        ("embedding", chat_body("x")),
        ("completion", b'{"choices": [{"index": 0}]}'),
    ],
)
def test_unreadable_bodies_give_none(kind: str, body: bytes) -> None:
    assert answer_text(kind, body) is None


def test_tool_calls_with_reordered_arguments_compare_equal() -> None:
    served = answer_text("chat", chat_body(None, [tool_call("get_weather", '{"city": "Oslo", "unit": "c"}')]))
    candidate = answer_text("chat", chat_body(None, [tool_call("get_weather", '{"unit":"c","city":"Oslo"}')]))
    assert served is not None and candidate is not None
    assert served == candidate
    assert compare_answers(served, candidate) == Agreement(True, 1.0, len(served.split()), 1.0)


def test_tool_calls_with_other_arguments_or_names_differ() -> None:
    served = answer_text("chat", chat_body(None, [tool_call("get_weather", '{"city": "Oslo"}')]))
    other_city = answer_text("chat", chat_body(None, [tool_call("get_weather", '{"city": "Bergen"}')]))
    other_name = answer_text("chat", chat_body(None, [tool_call("get_time", '{"city": "Oslo"}')]))
    assert served is not None and other_city is not None and other_name is not None
    assert not compare_answers(served, other_city).exact
    assert not compare_answers(served, other_name).exact
    assert 0 < compare_answers(served, other_city).similarity < 1


def test_tool_call_arguments_that_are_not_json_stay_raw() -> None:
    text = answer_text("chat", chat_body("Calling.", [tool_call("f", "{broken")]))
    assert text == 'Calling.\n[{"arguments": "{broken", "name": "f"}]'


# --- compare_answers ---


def test_identical() -> None:
    text = "The capital of France is Paris."
    assert compare_answers(text, text) == Agreement(True, 1.0, 6, 1.0)


def test_trailing_whitespace_only_difference_is_exact() -> None:
    agreement = compare_answers("Line one\nLine two", "Line one   \nLine two\n\n")
    assert agreement.exact
    assert agreement.similarity == 1.0
    assert agreement.length_ratio == 1.0


def test_leading_or_inner_whitespace_is_not_normalised_for_exact() -> None:
    assert not compare_answers("a b", "a  b").exact
    assert compare_answers("a b", "a  b").similarity == 1.0


def test_case_difference_is_not_exact_but_fully_similar() -> None:
    agreement = compare_answers("Paris is the Capital.", "paris IS the capital.")
    assert not agreement.exact
    assert agreement.similarity == 1.0
    assert agreement.prefix_tokens == 0


def test_late_drift_keeps_a_long_prefix_and_high_similarity() -> None:
    words = [f"w{i}" for i in range(50)]
    served = " ".join(words)
    candidate = " ".join([*words[:45], "x", "y", "z", "w48", "w49"])
    agreement = compare_answers(served, candidate)
    assert not agreement.exact
    assert agreement.prefix_tokens == 45
    assert agreement.similarity == pytest.approx(47 / 50)
    assert 0.9 < agreement.similarity < 1


def test_disjoint() -> None:
    agreement = compare_answers("alpha beta gamma", "one two")
    assert agreement == Agreement(False, 0.0, 0, len("one two") / len("alpha beta gamma"))


def test_empty_cases() -> None:
    assert compare_answers("", "") == Agreement(True, 1.0, 0, 1.0)
    assert compare_answers("  \n", "") == Agreement(True, 1.0, 0, 1.0)
    served_only = compare_answers("something", "")
    assert served_only == Agreement(False, 0.0, 0, 0.0)
    candidate_only = compare_answers("", "something")
    assert not candidate_only.exact and candidate_only.similarity == 0.0 and math.isinf(candidate_only.length_ratio)


def test_punctuation_is_its_own_token() -> None:
    assert token_similarity("yes, indeed", "yes indeed") == pytest.approx(2 * 2 / 5)
    assert token_similarity("!", "?") == 0.0


def test_unicode_nfc_and_nfd_forms_are_exact() -> None:
    nfc = unicodedata.normalize("NFC", "Café naïve Ångström")
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfc != nfd
    assert compare_answers(nfc, nfd) == Agreement(True, 1.0, 3, 1.0)


def test_length_ratio_is_candidate_over_served() -> None:
    assert compare_answers("abcd", "ab").length_ratio == 0.5
    assert compare_answers("ab", "abcd").length_ratio == 2.0


def test_bit_parallel_lcs_matches_the_textbook_dp() -> None:
    rng = random.Random(6)
    for _ in range(300):
        alphabet = [chr(ord("a") + i) for i in range(rng.randint(1, 6))]
        a = rng.choices(alphabet, k=rng.randint(0, 40))
        b = rng.choices(alphabet, k=rng.randint(0, 40))
        assert lcs_length(a, b) == reference_lcs(a, b) == lcs_length(b, a)


def test_at_the_cap_lcs_is_still_used() -> None:
    served = " ".join(f"t{i}" for i in range(MAX_LCS_TOKENS))
    reversed_ = " ".join(f"t{i}" for i in reversed(range(MAX_LCS_TOKENS)))
    # Same bag, reversed order: the LCS is a single token, so similarity is tiny rather than the bag F1's 1.0.
    assert token_similarity(served, reversed_) == pytest.approx(2 / (2 * MAX_LCS_TOKENS))


def test_long_texts_fall_back_to_bag_f1_and_are_symmetric() -> None:
    rng = random.Random(7)
    vocabulary = [f"word{i}" for i in range(300)]
    served_tokens = rng.choices(vocabulary, k=5_000)
    candidate_tokens = list(served_tokens)
    for i in rng.sample(range(5_000), 500):
        candidate_tokens[i] = "other"
    served, candidate = " ".join(served_tokens), " ".join(candidate_tokens)
    forward, backward = compare_answers(served, candidate), compare_answers(candidate, served)
    assert forward.similarity == backward.similarity == pytest.approx(0.9)
    assert forward.prefix_tokens == backward.prefix_tokens
    assert compare_answers(served, served).similarity == 1.0
    # Past the cap, order is not seen: reversing the text keeps the bag and so the score.
    assert compare_answers(served, " ".join(reversed(served_tokens))).similarity == 1.0


def test_similarity_is_symmetric_and_bounded() -> None:
    rng = random.Random(8)
    words = ["a", "b", "c", "D", "d", ".", ","]
    for _ in range(200):
        x = " ".join(rng.choices(words, k=rng.randint(0, 12)))
        y = " ".join(rng.choices(words, k=rng.randint(0, 12)))
        s = compare_answers(x, y).similarity
        assert 0.0 <= s <= 1.0
        assert s == compare_answers(y, x).similarity
