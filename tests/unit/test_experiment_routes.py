"""Experiments in the request path, on the real ASGI app with fake backends: arms chosen by the sticky key
and the weights, said in `x-gateway-experiment`, served only by their own backends, recorded per arm;
feedback joined to the arm; shadow traffic that never changes what the user gets; auto-stop."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from gateway.errors import GatewayError
from gateway.experiments.arm_totals import ArmObservation
from gateway.experiments.srm import goodness_of_fit

from .asgi_post import post
from .conftest import GatewayUnderTest, running_gateway
from .fakes import DONE, ScriptedStream, assert_error_shape, chat_completion_json, chunk_event

BACKENDS = [{"name": "big", "plugin": "fake", "model": "m"}, {"name": "small", "plugin": "fake", "model": "m"}]


def config(experiment: dict[str, Any] | None = None, shadow: dict[str, Any] | None = None,
           **extra: Any) -> dict[str, Any]:
    route: dict[str, Any] = {"model": "chat", "backends": ["big"], "cache": {"mode": "off"}}
    if experiment is not None:
        route["experiment"] = {"name": "ab", "arms": {"control": "big", "candidate": "small"}, **experiment}
    if shadow is not None:
        route["shadow"] = {"name": "mirror", "target": "small", **shadow}
    return {"backends": BACKENDS, "routes": [route], **extra}


def chat(user: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], **extra}
    if user is not None:
        body["user"] = user
    return body


def arm_of(headers: dict[str, str]) -> str:
    name, _, arm = headers["x-gateway-experiment"].partition("=")
    assert name == "ab"
    return arm


async def report(gw: GatewayUnderTest, name: str = "ab") -> dict[str, Any]:
    response = await gw.client.get(f"/admin/experiments/{name}")
    assert response.status_code == 200, response.text
    return msgspec.json.decode(response.content)


def answers_with(gw: GatewayUnderTest) -> None:
    gw.backend("big").reply = chat_completion_json("from big")
    gw.backend("small").reply = chat_completion_json("from small")


async def test_every_user_sticks_to_one_arm_served_only_by_its_backend() -> None:
    async with running_gateway(config({"sticky_by": "user"})) as gw:
        answers_with(gw)
        first: dict[str, str] = {}
        for round_ in range(3):
            for i in range(40):
                response = await post(gw, chat(f"user-{i}"))
                assert response.status_code == 200
                arm = arm_of(response.headers)
                first.setdefault(f"user-{i}", arm)
                assert arm == first[f"user-{i}"], f"user-{i} moved arms in round {round_}"
                expected = {"control": ("big", "from big"), "candidate": ("small", "from small")}[arm]
                assert response.headers["x-gateway-backend"] == expected[0]
                assert response.json()["choices"][0]["message"]["content"] == expected[1]
        assert set(first.values()) == {"control", "candidate"}
        body = await report(gw)
        for arm in ("control", "candidate"):
            n = sum(1 for a in first.values() if a == arm) * 3
            assert body["arms"][arm]["assigned"] == n
            assert body["arms"][arm]["requests"] == n
            assert body["arms"][arm]["latency"]["e2e"]["n"] == n


async def test_weighted_assignment_through_the_gateway_fits_the_design() -> None:
    async with running_gateway(config({"weights": {"control": 3, "candidate": 1}})) as gw:
        counts = {"control": 0, "candidate": 0}
        for i in range(800):
            response = await post(gw, chat(f"u{i}"))
            counts[arm_of(response.headers)] += 1
        _, p_value = goodness_of_fit([counts["control"], counts["candidate"]], [0.75, 0.25])
        assert p_value > 0.001, counts
        srm = (await report(gw))["srm"]
        assert srm["alarm"] is False


async def test_requests_without_a_sticky_key_are_still_assigned_and_counted() -> None:
    async with running_gateway(config({"sticky_by": "header:x-session"})) as gw:
        arms = {arm_of((await post(gw, chat())).headers) for _ in range(60)}
        assert arms == {"control", "candidate"}  # random, not all on one arm
        same = {arm_of((await post(gw, chat(), headers={"x-session": "s-1"})).headers) for _ in range(10)}
        assert len(same) == 1


async def test_a_failing_candidate_is_counted_against_it_and_never_falls_back_to_control() -> None:
    async with running_gateway(config({})) as gw:
        answers_with(gw)
        gw.backend("small").reply = GatewayError(503, "candidate down", type="api_error", code="down")
        seen = {"control": 0, "candidate": 0}
        for i in range(60):
            response = await post(gw, chat(f"u{i}"))
            arm = arm_of(response.headers)
            seen[arm] += 1
            assert response.status_code == (200 if arm == "control" else 503)
        assert all(call[0] == "chat" for call in gw.backend("big").calls)
        assert len(gw.backend("big").calls) == seen["control"]
        body = await report(gw)
        assert body["arms"]["candidate"]["errors"] == seen["candidate"]
        assert body["arms"]["control"]["errors"] == 0
        assert body["comparisons"]["candidate"]["error_rate"]["difference"] == pytest.approx(1.0)


async def test_streams_record_time_to_first_token_and_tokens_per_arm() -> None:
    async with running_gateway(config({})) as gw:
        for name in ("big", "small"):
            gw.backend(name).stream_factory = lambda: ScriptedStream(
                [chunk_event("a"), chunk_event("b"), chunk_event("c"), DONE], delay_s=0.01)
        for i in range(20):
            response = await post(gw, chat(f"u{i}", stream=True))
            assert response.status_code == 200 and b"[DONE]" in response.content
        body = await report(gw)
        for arm in ("control", "candidate"):
            stats = body["arms"][arm]
            if stats["requests"]:
                assert stats["latency"]["ttft"]["n"] == stats["requests"]
                assert stats["latency"]["tpot"]["n"] == stats["requests"]
                assert stats["output_tokens"] == 3 * stats["requests"]
                assert stats["latency"]["e2e"]["mean"] >= stats["latency"]["ttft"]["mean"]


async def test_each_arm_keeps_its_own_cache_entries() -> None:
    raw = config({"sticky_by": "user"})
    raw["routes"][0]["cache"] = {"mode": "deterministic"}
    async with running_gateway(raw) as gw:
        answers_with(gw)
        users: dict[str, str] = {}
        per_arm = {"control": 0, "candidate": 0}
        for i in range(30):
            arm = arm_of((await post(gw, chat(f"u{i}", temperature=0))).headers)
            users.setdefault(arm, f"u{i}")
            per_arm[arm] += 1
        assert set(users) == {"control", "candidate"}
        # `user` is not in the cache key: one backend call per arm, the arm's other users hit its entry.
        assert len(gw.backend("big").calls) == 1 and len(gw.backend("small").calls) == 1
        for arm, user in users.items():
            again = await post(gw, chat(user, temperature=0))
            assert again.headers["x-gateway-cache"] == "hit"
            assert arm_of(again.headers) == arm
            want = "from big" if arm == "control" else "from small"
            assert again.json()["choices"][0]["message"]["content"] == want  # never the other arm's entry
        body = await report(gw)
        for arm, n in per_arm.items():
            assert body["arms"][arm]["cache_hits"] == n  # n - 1 in the loop, then the one above
            assert body["arms"][arm]["requests"] == 1


async def test_feedback_joins_the_arm_that_served_the_request_once_and_only_for_its_caller() -> None:
    async with running_gateway(config({})) as gw:
        arms = {}
        for i in range(30):
            response = await post(gw, chat(f"u{i}"), headers={"x-request-id": f"req-{i}",
                                                           "authorization": "Bearer key-a"})
            assert response.headers["x-request-id"] == f"req-{i}"
            arms[f"req-{i}"] = arm_of(response.headers)
        scores = {"control": [], "candidate": []}
        for i, (request_id, arm) in enumerate(arms.items()):
            score = 1.0 if arm == "candidate" else float(i % 2)
            answer = await gw.client.post("/v1/feedback", json={"request_id": request_id, "score": score,
                                                                "label": "thumbs"},
                                          headers={"authorization": "Bearer key-a"})
            assert answer.status_code == 200, answer.text
            assert answer.json()["arm"] == arm and answer.json()["experiment"] == "ab"
            scores[arm].append(score)
        body = await report(gw)
        for arm, given in scores.items():
            feedback = body["arms"][arm]["feedback"]
            assert feedback["n"] == len(given)
            assert feedback["labels"] == ({"thumbs": len(given)} if given else {})
            if given:
                assert feedback["score_mean"] == pytest.approx(sum(given) / len(given))
        again = await gw.client.post("/v1/feedback", json={"request_id": "req-0", "score": 1},
                                     headers={"authorization": "Bearer key-a"})
        assert again.status_code == 409 and assert_error_shape(again.json())["code"] == "feedback_exists"
        # Another caller cannot see or spend key-a's requests.
        other = await gw.client.post("/v1/feedback", json={"request_id": "req-1", "score": 1},
                                     headers={"authorization": "Bearer key-b"})
        assert other.status_code == 404 and assert_error_shape(other.json())["param"] == "request_id"
        mine = await gw.client.post("/v1/feedback", json={"request_id": "req-1", "label": "late"},
                                    headers={"authorization": "Bearer key-a"})
        assert mine.status_code == 409  # req-1 got its feedback above


@pytest.mark.parametrize("body, param", [
    ({"score": 1}, "request_id"),
    ({"request_id": "r"}, "score"),
    ({"request_id": "r", "score": "high"}, "score"),
    ({"request_id": "r", "score": True}, "score"),
    ({"request_id": "r", "label": ""}, "label"),
    ({"request_id": "r", "label": 5}, "label"),
    ({"request_id": "r", "score": 1, "extra": 1}, "extra"),
])
async def test_bad_feedback_is_a_400_naming_the_field(body: dict[str, Any], param: str) -> None:
    async with running_gateway(config({})) as gw:
        answer = await gw.client.post("/v1/feedback", json=body)
        assert answer.status_code == 400
        assert assert_error_shape(answer.json())["param"] == param
        broken = await gw.client.post("/v1/feedback", content=b"{not json")
        assert broken.status_code == 400
        unknown = await gw.client.post("/v1/feedback", json={"request_id": "never-seen", "score": 1})
        assert unknown.status_code == 404


async def test_shadow_never_changes_the_served_response() -> None:
    async with running_gateway(config(shadow={"sample": 1.0})) as gw:
        answers_with(gw)
        candidate_done = asyncio.Event()
        release = asyncio.Event()
        small = gw.backend("small")

        async def slow_candidate(body: dict[str, Any]) -> bytes:
            small.calls.append(("chat", body))
            await release.wait()  # the user's answer must not wait for this
            candidate_done.set()
            return chat_completion_json("from small")

        small.chat = slow_candidate  # type: ignore[method-assign]
        plain = await post(gw, chat("u1"))
        assert plain.status_code == 200 and not candidate_done.is_set()
        assert plain.json()["choices"][0]["message"]["content"] == "from big"
        assert plain.headers["x-gateway-backend"] == "big" and "x-gateway-experiment" not in plain.headers
        release.set()
        await asyncio.wait_for(candidate_done.wait(), 5)
        # A candidate that fails changes nothing either.
        small.chat = None  # type: ignore[assignment,method-assign]
        small.reply = GatewayError(500, "candidate broke", type="api_error", code="boom")
        del small.chat
        failing = await post(gw, chat("u2"))
        assert failing.status_code == 200 and failing.content.replace(b'"', b"") == plain.content.replace(b'"', b"")
        await _mirrors_done(gw)
        body = await report(gw, "mirror")
        candidate = body["arms"]["candidate"]
        assert candidate["requests"] == 2 and candidate["errors"] == 1
        assert candidate["agreement"]["n"] == 1 and candidate["agreement"]["exact_rate"] == 0.0
        assert body["arms"]["served"]["requests"] == 2 and body["srm"] is None


async def test_shadow_agreement_on_streams_and_identical_answers() -> None:
    async with running_gateway(config(shadow={"sample": 1.0})) as gw:
        for name in ("big", "small"):
            gw.backend(name).stream_factory = lambda: ScriptedStream([chunk_event("same "), chunk_event("text"), DONE])
        for i in range(5):
            response = await post(gw, chat(f"u{i}", stream=True))
            assert response.status_code == 200
        await _mirrors_done(gw)
        agreement = (await report(gw, "mirror"))["arms"]["candidate"]["agreement"]
        assert agreement["n"] == 5 and agreement["exact_rate"] == 1.0 and agreement["similarity_mean"] == 1.0


async def test_a_full_shadow_skips_rather_than_piling_up() -> None:
    async with running_gateway(config(shadow={"sample": 1.0, "max_in_flight": 2})) as gw:
        release = asyncio.Event()
        small = gw.backend("small")

        async def stuck(body: dict[str, Any]) -> bytes:
            small.calls.append(("chat", body))
            await release.wait()
            return chat_completion_json("late")

        small.chat = stuck  # type: ignore[method-assign]
        for i in range(6):
            assert (await post(gw, chat(f"u{i}"))).status_code == 200
        for _ in range(100):  # the two mirrors reach the candidate on their own schedule
            if len(small.calls) == 2:
                break
            await asyncio.sleep(0.01)
        assert len(small.calls) == 2 and gw.state.experiments.shadows["mirror"].in_flight == 2
        release.set()
        await _mirrors_done(gw)
        body = await report(gw, "mirror")
        assert body["arms"]["candidate"]["skipped"] == 4 and body["arms"]["candidate"]["requests"] == 2


async def test_auto_stop_serves_the_control_once_conclusive_and_says_so() -> None:
    async with running_gateway(config({"auto_stop": True, "min_samples": 50, "metric": "e2e"})) as gw:
        service = gw.state.experiments
        for i in range(400):  # the candidate twice as slow: conclusive long before 400
            for arm, e2e in (("control", 0.1 + (i % 7) * 0.001), ("candidate", 0.2 + (i % 5) * 0.001)):
                service.store.record(ArmObservation("ab", arm, True, ttft_s=None, tpot_s=None, e2e_s=e2e,
                                                    input_tokens=1, output_tokens=1, cost_usd=0.0))
        await service.check()
        for i in range(20):
            response = await post(gw, chat(f"u{i}"))
            assert response.headers["x-gateway-experiment"] == "ab=control; stopped"
            assert response.headers["x-gateway-backend"] == "big"
        body = await report(gw)
        assert body["stopped"]["serve"] == "control" and body["active"] is False
        assert body["comparisons"]["candidate"]["e2e"]["winner"] == "control"
        assert len(body["history"]) == 1
        listed = (await gw.client.get("/admin/experiments")).json()["experiments"]
        assert listed == [{"name": "ab", "kind": "live", "route": "chat", "active": False,
                           "stopped": body["stopped"]["reason"]}]
        reset = await gw.client.delete("/admin/experiments/ab")
        assert reset.status_code == 200
        assert arm_of((await post(gw, chat("u1"))).headers) in ("control", "candidate")
        assert (await report(gw))["arms"]["control"]["requests"] <= 1


async def test_outside_start_and_stop_the_route_serves_as_usual() -> None:
    async with running_gateway(config({"start": "2000-01-01T00:00:00Z", "stop": "2000-01-02T00:00:00Z"})) as gw:
        answers_with(gw)
        for i in range(10):
            response = await post(gw, chat(f"u{i}"))
            assert "x-gateway-experiment" not in response.headers and response.headers["x-gateway-backend"] == "big"


async def test_unknown_experiment_report_is_a_404_naming_the_known_ones() -> None:
    async with running_gateway(config({})) as gw:
        response = await gw.client.get("/admin/experiments/nope")
        assert response.status_code == 404
        assert "ab" in assert_error_shape(response.json())["message"]


async def _mirrors_done(gw: GatewayUnderTest) -> None:
    pending = list(gw.state.experiments._mirrors)
    if pending:
        await asyncio.wait_for(asyncio.gather(*pending), 5)


async def test_assignments_during_a_ramp_are_kept_apart_from_the_sample_ratio_check() -> None:
    ramp = {"start": "2020-01-01T00:00:00Z", "ramp": {"from_share": 0.2, "to_share": 0.5, "duration_s": 1e10}}
    async with running_gateway(config(ramp)) as gw:
        for i in range(300):
            assert (await post(gw, chat(f"u{i}"))).status_code == 200
        body = await report(gw)
        during = {arm: body["arms"][arm]["assigned_during_ramp"] for arm in ("control", "candidate")}
        assert sum(during.values()) == 300 and during["candidate"] > 0
        assert body["arms"]["control"]["assigned"] == body["arms"]["candidate"]["assigned"] == 0
        assert body["srm"]["alarm"] is False  # a moving split is never compared with today's shares


async def test_an_arm_can_be_another_route_with_its_own_backends() -> None:
    raw = config({"arms": {"control": "big", "candidate": "route:small-fleet"}})
    raw["routes"].append({"model": "small-fleet", "backends": ["small"], "cache": {"mode": "off"}})
    async with running_gateway(raw) as gw:
        answers_with(gw)
        seen = set()
        for i in range(40):
            response = await post(gw, chat(f"u{i}"))
            arm = arm_of(response.headers)
            seen.add(arm)
            assert response.headers["x-gateway-backend"] == {"control": "big", "candidate": "small"}[arm]
        assert seen == {"control", "candidate"}
        assert (await report(gw))["arms"]["candidate"]["target"] == "route small-fleet"
