"""Prefix keys, the consistent-hash ring, the sticky table and the prefix_affinity policy's choices."""

from __future__ import annotations

from collections import Counter
from typing import Any

from gateway.routing.affinity import PrefixAffinityPolicy, StickyTable
from gateway.routing.interfaces import BackendStats, RequestFeatures
from gateway.routing.prefix import BLOCK_BYTES, HashRing, prefix_key, prefix_keys
from gateway.routing.stats import LocalStats

from .fakes import FakeBackend, make_backend

SYSTEM = "You answer questions about the attached contract. " + "Clause. " * 300  # ~2.4 KB
DOCUMENT = "<document>" + "The tenant shall pay rent monthly. " * 40 + "</document>"


def chat(*messages: tuple[str, Any], **extra: Any) -> RequestFeatures:
    return RequestFeatures("chat", {"messages": [{"role": r, "content": c} for r, c in messages], **extra})


def completion(prompt: Any) -> RequestFeatures:
    return RequestFeatures("completion", {"prompt": prompt})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class LoadStats(LocalStats):
    """Live statistics whose loads a test sets; everything else unobserved."""

    def __init__(self) -> None:
        super().__init__()
        self.loads: dict[str, float] = {}

    def get(self, backend: str) -> BackendStats:
        return BackendStats(recent_requests=self.loads.get(backend, 0.0))


# -- keys ------------------------------------------------------------------------------------------


def test_same_system_prompt_and_document_give_the_same_key_whatever_the_last_question() -> None:
    first = chat(("system", SYSTEM), ("user", DOCUMENT), ("assistant", "Read it."), ("user", "Who pays rent?"))
    second = chat(("system", SYSTEM), ("user", DOCUMENT), ("assistant", "Read it."), ("user", "When is it due?"))
    assert prefix_key(first) == prefix_key(second) is not None
    other_document = chat(("system", SYSTEM), ("user", DOCUMENT.replace("monthly", "weekly")),
                          ("assistant", "Read it."), ("user", "Who pays rent?"))
    assert prefix_key(other_document) != prefix_key(first)
    # Request parameters are not part of the prompt.
    assert prefix_key(chat(("system", SYSTEM), ("user", "q"), temperature=0.2)) == prefix_key(
        chat(("system", SYSTEM), ("user", "other q")))


def test_key_is_the_leading_content_only() -> None:
    long_a = chat(("system", SYSTEM + "x" * 5000 + "a"), ("user", "q"))
    long_b = chat(("system", SYSTEM + "x" * 5000 + "b"), ("user", "q"))
    assert prefix_key(long_a) == prefix_key(long_b)  # they differ only past the byte budget
    assert prefix_key(long_a, budget_bytes=100_000) != prefix_key(long_b, budget_bytes=100_000)
    assert prefix_key(chat(("system", "one"), ("user", "q"))) != prefix_key(chat(("system", "two"), ("user", "q")))
    assert prefix_key(chat(("user", "q"), ("system", "one"))) != prefix_key(chat(("system", "one"), ("user", "q")))


def test_a_follow_up_turn_finds_the_previous_turns_full_prompt() -> None:
    turn1 = prefix_keys(chat(("system", "Be brief."), ("user", "Tell me about Rome.")))
    turn2 = prefix_keys(chat(("system", "Be brief."), ("user", "Tell me about Rome."), ("assistant", "An old city."),
                             ("user", "And Paris?")))
    assert turn1 is not None and turn2 is not None
    assert turn1.chain[0] in turn2.chain  # the first turn recorded it; the second looks it up


def test_completion_prompts_are_keyed_on_their_leading_blocks() -> None:
    document = "x" * (3 * BLOCK_BYTES)
    assert prefix_key(completion(document + "Question one?")) == prefix_key(completion(document + "Question two?"))
    assert prefix_key(completion("short prompt")) != prefix_key(completion("short prompts"))
    assert prefix_key(completion(["batched " + document, "second"])) == prefix_key(completion("batched " + document))
    assert prefix_key(completion([1, 2, 3])) == prefix_key(completion([1, 2, 3]))
    assert prefix_key(completion([1, 2, 3])) != prefix_key(completion([1, 2, 4]))


def test_content_parts_count_as_text_and_an_empty_prompt_has_no_key() -> None:
    parts = [{"type": "text", "text": "Describe"}, {"type": "image_url", "image_url": {"url": "data:image/png;AAA"}}]
    assert prefix_key(chat(("user", parts))) != prefix_key(chat(("user", [parts[0]])))
    assert prefix_key(RequestFeatures("chat", {"messages": []})) is None
    assert prefix_key(completion("")) is None
    assert prefix_key(RequestFeatures("embedding", {"input": "embed me"})) is not None


# -- ring and sticky table -------------------------------------------------------------------------


KEYS = [f"{i * 0x9E3779B97F4A7C15 % 2**64:016x}" for i in range(5000)]


def owners(ring: HashRing) -> dict[str, str | None]:
    return {key: ring.owner(key) for key in KEYS}


def test_ring_spreads_keys_and_removing_a_backend_moves_only_its_keys() -> None:
    full = owners(HashRing(["a", "b", "c", "d"]))
    shares = Counter(full.values())
    assert all(0.15 < n / len(KEYS) < 0.35 for n in shares.values()), shares
    without_c = owners(HashRing(["a", "b", "d"]))
    moved = [k for k in KEYS if full[k] != without_c[k]]
    assert moved and all(full[k] == "c" for k in moved)
    assert len(moved) == shares["c"]
    # Adding a backend takes keys only onto itself.
    with_e = owners(HashRing(["a", "b", "c", "d", "e"]))
    assert all(with_e[k] == "e" for k in KEYS if with_e[k] != full[k])


def test_ring_walk_visits_every_backend_once_owner_first() -> None:
    ring = HashRing(["a", "b", "c"])
    walk = list(ring.walk(KEYS[0]))
    assert sorted(walk) == ["a", "b", "c"] and walk[0] == ring.owner(KEYS[0])
    assert list(HashRing([]).walk(KEYS[0])) == []


def test_sticky_table_forgets_old_and_least_recently_used_prefixes() -> None:
    table = StickyTable(max_entries=2, ttl_s=60.0, half_life_s=10.0)
    table.put(["k1"], "a", now=0.0)
    table.put(["k1"], "a", now=10.0)
    home = table.get("k1", now=10.0)
    assert home is not None and home[0] == "a" and home[1] == 1.5  # one request decayed a half-life, plus one
    assert table.get("k1", now=71.0) is None  # unused past its TTL
    table.put(["k1", "k2"], "a", now=100.0)
    table.put(["k3"], "b", now=101.0)
    assert len(table) == 2 and table.get("k1", now=101.0) is None


# -- the policy ------------------------------------------------------------------------------------


BACKENDS = [make_backend(name) for name in ("a", "b", "c", "d")]


def first(policy: PrefixAffinityPolicy, request: RequestFeatures, stats: LoadStats,
          candidates: list[FakeBackend] = BACKENDS) -> tuple[str, str]:
    choice = policy.rank(candidates, request, stats)[0]  # type: ignore[arg-type]
    return choice.backend.name, choice.reason


def test_a_new_prefix_goes_to_its_ring_owner_then_stays_home() -> None:
    policy, stats = PrefixAffinityPolicy(clock=Clock()), LoadStats()
    request = chat(("system", SYSTEM), ("user", "q1"))
    key = prefix_key(request)
    assert key is not None
    owner = HashRing([b.name for b in BACKENDS]).owner(key)
    assert first(policy, request, stats) == (owner, f"prefix_affinity: new prefix {key[:6]}, ring owner")
    assert first(policy, chat(("system", SYSTEM), ("user", "q2")), stats) == (
        owner, f"prefix_affinity: home of prefix {key[:6]}")
    ranking = policy.rank(BACKENDS, request, stats)  # type: ignore[arg-type]
    assert [c.backend.name for c in ranking] == list(HashRing(["a", "b", "c", "d"]).walk(key))
    assert all(c.reason == "prefix_affinity fallback: next on ring" for c in ranking[1:])


def test_a_conversation_stays_where_its_previous_turn_ran() -> None:
    policy, stats = PrefixAffinityPolicy(clock=Clock()), LoadStats()
    homes = set()
    for topic in range(12):  # many conversations with one short system prompt
        question = f"Tell me about city number {topic}."
        home, _ = first(policy, chat(("system", "Be brief."), ("user", question)), stats)
        follow_up = chat(("system", "Be brief."), ("user", question), ("assistant", "It is old."),
                         ("user", "And its river?"))
        assert first(policy, follow_up, stats)[0] == home
        homes.add(home)
    assert len(homes) > 1  # the conversations themselves are spread


def test_a_full_ring_owner_is_skipped_for_a_new_prefix() -> None:
    policy, stats = PrefixAffinityPolicy(clock=Clock()), LoadStats()
    request = chat(("system", SYSTEM), ("user", "q"))
    walk = list(HashRing(["a", "b", "c", "d"]).walk(prefix_key(request) or ""))
    stats.loads = {walk[0]: 40.0, walk[1]: 2.0, walk[2]: 2.0, walk[3]: 2.0}  # owner over twice its share
    name, reason = first(policy, request, stats)
    assert name == walk[1] and reason.endswith("skipped 1 over their share on the ring")


def test_an_unavailable_home_re_places_the_prefix_and_the_move_sticks() -> None:
    policy, stats = PrefixAffinityPolicy(clock=Clock()), LoadStats()
    request = chat(("system", SYSTEM), ("user", "q"))
    home, _ = first(policy, request, stats)
    others = [b for b in BACKENDS if b.name != home]
    new_home, reason = first(policy, request, stats, others)
    key = prefix_key(request) or ""
    assert new_home != home and reason.startswith(f"prefix_affinity: home of prefix {key[:6]} unavailable, ")
    assert first(policy, request, stats)[0] == new_home  # the cache is there now


def test_an_overloaded_home_sheds_a_prefix_only_when_that_evens_the_load() -> None:
    policy, stats = PrefixAffinityPolicy(clock=Clock()), LoadStats()
    docs = [chat(("system", f"doc {i} " + SYSTEM), ("user", "q")) for i in range(2)]
    home = BACKENDS[0]
    for _ in range(60):  # both prefixes start on one backend (the only one available then)
        for doc in docs:
            policy.rank([home], doc, stats)  # type: ignore[list-item]
    # It is now far over its share of the load: moving one of its two prefixes evens things out.
    stats.loads = {b.name: (40.0 if b is home else 1.0) for b in BACKENDS}
    name, reason = first(policy, docs[1], stats)
    assert name != home.name and reason.endswith("re-homed to even out the load")
    assert first(policy, docs[0], stats)[0] == home.name  # one move was enough: the other prefix stays
    # A busy prefix alone on its home stays: moving it would only move the load.
    stats.loads = {b.name: (40.0 if b.name == name else 1.0) for b in BACKENDS}
    for _ in range(60):
        assert first(policy, docs[1], stats) == (name, first(policy, docs[1], stats)[1])
    assert first(policy, docs[1], stats)[1].endswith("(busy, but moving it would not even the load)")


def test_no_prompt_goes_to_the_least_loaded() -> None:
    policy, stats = PrefixAffinityPolicy(clock=Clock()), LoadStats()
    stats.loads = {"a": 5.0, "b": 1.0, "c": 3.0, "d": 9.0}
    ranking = policy.rank(BACKENDS, RequestFeatures("chat", {"messages": []}), stats)  # type: ignore[arg-type]
    assert [c.backend.name for c in ranking] == ["b", "c", "a", "d"]
    assert ranking[0].reason == "prefix_affinity: no prompt to key on, least loaded"


def test_new_prefixes_are_spread_evenly_by_count_and_capacity() -> None:
    policy, stats = PrefixAffinityPolicy(clock=Clock()), LoadStats()
    homes = Counter(first(policy, chat(("system", f"doc {i} " + SYSTEM), ("user", "q")), stats)[0] for i in range(8))
    assert sorted(homes.values()) == [2, 2, 2, 2]

    class Speeds(LoadStats):
        def get(self, backend: str) -> BackendStats:  # a decodes four times as fast as the others
            return BackendStats(tpot_s=0.01 if backend == "a" else 0.04, samples=10.0, output_tokens=100.0)

    policy = PrefixAffinityPolicy(clock=Clock())
    homes = Counter(first(policy, chat(("system", f"doc {i} " + SYSTEM), ("user", "q")), Speeds())[0]
                    for i in range(14))
    assert homes["a"] == 8 and sorted(homes[n] for n in "bcd") == [2, 2, 2]  # shares 4:1:1:1
