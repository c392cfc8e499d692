"""Gateway speculation (n-gram drafter, adaptive k, V-B batched verify) against target-alone decoding
on an emulated GPU-like vLLM target (issue 7), side by side in one run.

The vLLM emulator serves token-id prompts with a deterministic input-grounded model: it reproduces
a given document with edits (`edit_rate` of positions insert a token), at GPU-like costs: 4 ms per
call, 25 ms per decoded token, 0.5 ms per extra sequence of a batched verify. Each prompt is a
300-600-token document followed by an instruction that makes the model copy it (an edit or refactor
task), or, for the open-ended row, a prompt with nothing to copy. Every speculative output must equal
the target-alone output token for token (exit 2 otherwise).

Speculation runs under a `SpeculationPolicy`: after `--max-empty-drafts` empty drafts in a row (no
n-gram match: open-ended text) the next `--plain-burst` tokens stream from one target call (doubling
while drafts stay empty), so a request with nothing to copy is not charged a target round trip per
token. `--no-policy` runs the bare coordinator instead (one plain call per empty draft).

Usage (from the repo root)::

    python benchmarks/speculative.py
    python benchmarks/speculative.py --prompts 8 --max-tokens 200 --seed 3
    python benchmarks/speculative.py --no-policy
    python benchmarks/speculative.py --gateway  # the emulated target end to end through a gateway process
    python benchmarks/speculative.py --real     # the real CPU pair through the gateway (scripts/setup --spec)
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import httpx  # noqa: E402
from procs import free_port, spawn, stop, wait_until  # noqa: E402

from gateway.speculative.adaptive_k import AdaptiveK, SpeculationPrior  # noqa: E402
from gateway.speculative.coordinator import SpeculativeDecoder  # noqa: E402
from gateway.speculative.interfaces import RoundResult  # noqa: E402
from gateway.speculative.ngram import NgramDrafter  # noqa: E402
from gateway.speculative.pair import TimedTarget  # noqa: E402
from gateway.speculative.policy import SpeculationPolicy  # noqa: E402
from gateway.speculative.vllm_target import VllmTokenTarget  # noqa: E402

MODEL = "emulated-gpu"
RTT_MS, DECODE_MS, VERIFY_TOKEN_MS = 4.0, 25.0, 0.5
EOS = 2
DOC_OPEN, DOC_CLOSE = 3, 4  # control ids (below the emulator's SPECIAL_IDS)
INSTRUCTION = [5, 6, 7, 8]  # "rewrite the text above, fixing what needs fixing:"
TARGET_SPEEDUP = 1.8
OPEN_ENDED_FLOOR = 0.98  # with nothing to copy, speculation should cost (almost) nothing


def grounded_prompt(rng: random.Random) -> list[int]:
    """A document of 300-600 ids from a 5k vocabulary, then the instruction, then the opening token
    again (as "Text:" would be repeated before the answer): the model starts copying the document."""
    doc = [rng.randrange(10, 5000) for _ in range(rng.randrange(300, 601))]
    return [DOC_OPEN, *doc, DOC_CLOSE, *INSTRUCTION, DOC_OPEN]


def open_prompt(rng: random.Random) -> list[int]:
    """A short question with nothing to copy from: the model writes new text."""
    return [*INSTRUCTION, *(rng.randrange(10, 32_000) for _ in range(40))]


@dataclass
class ModeStats:
    """One mode's measurements over a scenario's prompts."""

    outputs: list[list[int]] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    drafted: int = 0
    accepted: int = 0
    rounds: int = 0
    target_calls: int = 0
    plain_bursts: int = 0

    @property
    def tokens(self) -> int:
        return sum(len(out) for out in self.outputs)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / sum(self.seconds) if self.seconds else 0.0

    def row(self, mode: str, baseline: ModeStats) -> str:
        acceptance = f"{self.accepted / self.drafted:.2f}" if self.drafted else "-"
        mean_k = f"{self.drafted / self.rounds:.1f}" if self.rounds else "-"
        per_call = self.tokens / self.target_calls if self.target_calls else 0.0
        speedup = self.tokens_per_s / baseline.tokens_per_s if baseline.tokens_per_s else 0.0
        p50 = statistics.median(self.seconds) * 1000
        return (f"{mode:<36} {self.tokens_per_s:>8.1f} {p50:>9.0f} {acceptance:>7} {per_call:>9.2f} "
                f"{mean_k:>6} {self.plain_bursts:>7} {speedup:>7.2f}x")


def set_knobs(url: str, changes: dict[str, float]) -> None:
    httpx.post(url + "/__emulator/knobs", json=changes, timeout=10).raise_for_status()


async def target_alone(target: VllmTokenTarget, prompts: list[list[int]], max_tokens: int) -> ModeStats:
    stats = ModeStats()
    for prompt in prompts:
        started = time.perf_counter()
        out = [token async for token in target.generate(prompt, max_tokens)]
        stats.seconds.append(time.perf_counter() - started)
        stats.outputs.append(out)
        stats.target_calls += 1
    return stats


async def speculative(target: VllmTokenTarget, prompts: list[list[int]], max_tokens: int,
                      args: argparse.Namespace) -> ModeStats:
    stats = ModeStats()
    prior = SpeculationPrior(target_token_s=DECODE_MS / 1000, target_call_s=RTT_MS / 1000,
                             verify_token_s=VERIFY_TOKEN_MS / 1000)
    for prompt in prompts:
        adaptive = AdaptiveK(prior)  # one per request: acceptance is a property of the task at hand

        def on_round(result: RoundResult, draft_s: float, verify_s: float, adaptive: AdaptiveK = adaptive) -> None:
            adaptive.observe_round(result.drafted, result.accepted, draft_s, verify_s, censored=result.tie)

        timed = TimedTarget(target, adaptive, RTT_MS / 1000)
        if args.no_policy:
            decoder = SpeculativeDecoder(NgramDrafter(), timed, choose_k=adaptive.choose, eos_ids=frozenset({EOS}),
                                         on_round=on_round)
        else:
            policy = SpeculationPolicy(adaptive, max_empty_drafts=args.max_empty_drafts, plain_burst=args.plain_burst,
                                       max_plain_burst=max(args.max_plain_burst, args.plain_burst))
            decoder = SpeculativeDecoder(NgramDrafter(), timed, policy=policy, eos_ids=frozenset({EOS}),
                                         on_round=on_round)
        started = time.perf_counter()
        out = [token async for event in decoder.run(prompt, max_tokens) for token in event.tokens]
        stats.seconds.append(time.perf_counter() - started)
        stats.outputs.append(out)
        stats.drafted += decoder.drafted
        stats.accepted += decoder.accepted
        stats.rounds += decoder.rounds
        stats.target_calls += decoder.target_calls
        stats.plain_bursts += decoder.plain_bursts
    return stats


async def run(args: argparse.Namespace, url: str) -> int:
    rng = random.Random(args.seed)
    scenarios = [
        ("input-grounded, edit_rate 0.1", 0.1, [grounded_prompt(rng) for _ in range(args.prompts)]),
        ("input-grounded, edit_rate 0.3", 0.3, [grounded_prompt(rng) for _ in range(args.prompts)]),
        ("open-ended (no document)", 0.1, [open_prompt(rng) for _ in range(max(args.prompts // 2, 1))]),
    ]
    exact = True
    headline: float | None = None
    open_ended: float | None = None
    mode = ("spec, bare (plain call per miss)" if args.no_policy
            else f"spec, policy ({args.max_empty_drafts} misses->burst)")
    print(f"target: vLLM emulator, rtt {RTT_MS} ms, decode {DECODE_MS} ms/token, verify +{VERIFY_TOKEN_MS} ms/"
          f"extra prefix; {args.max_tokens} tokens per request, requests one at a time")
    print(f"{'mode':<36} {'tok/s':>8} {'p50 ms':>9} {'accept':>7} {'tok/call':>9} {'k/rnd':>6} {'bursts':>7} "
          f"{'speedup':>8}")
    target = VllmTokenTarget(url, MODEL)
    try:
        for title, edit_rate, prompts in scenarios:
            await asyncio.to_thread(set_knobs, url, {"edit_rate": edit_rate})
            alone = await target_alone(target, prompts, args.max_tokens)
            spec = await speculative(target, prompts, args.max_tokens, args)
            same = all(a == s for a, s in zip(alone.outputs, spec.outputs, strict=True))
            exact &= same
            print(f"-- {title}: {len(prompts)} prompts, outputs {'EXACT' if same else 'DIFFER'}")
            print(alone.row("  target alone (stream)", alone))
            print(spec.row(f"  {mode}", alone))
            ratio = spec.tokens_per_s / alone.tokens_per_s
            if edit_rate == 0.1 and headline is None:
                headline = ratio
            if title.startswith("open-ended"):
                open_ended = ratio
    finally:
        await target.aclose()
    if headline is not None:
        verdict = "PASS" if headline >= TARGET_SPEEDUP else "FAIL"
        print(f"[{verdict}] input-grounded edit_rate 0.1: {headline:.2f}x tokens/s over target alone "
              f"(target >= {TARGET_SPEEDUP}x)")
    if open_ended is not None:
        verdict = "PASS" if open_ended >= OPEN_ENDED_FLOOR else "FAIL"
        print(f"[{verdict}] open-ended: {open_ended:.2f}x tokens/s over target alone (target >= {OPEN_ENDED_FLOOR}x)")
    if not exact:
        print("[FAIL] a speculative output differs from the target-alone output")
        return 2
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=4, help="prompts per input-grounded scenario")
    parser.add_argument("--max-tokens", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-policy", action="store_true",
                        help="the bare coordinator: one plain target call per empty draft, no bursts")
    parser.add_argument("--max-empty-drafts", type=int, default=4,
                        help="empty drafts in a row before a plain burst (policy only)")
    parser.add_argument("--plain-burst", type=int, default=16,
                        help="tokens in the first plain burst, doubled while drafts stay empty (policy only)")
    parser.add_argument("--max-plain-burst", type=int, default=128, help="the longest plain burst (policy only)")
    parser.add_argument("--real", action="store_true",
                        help="instead: Qwen2.5-Coder-1.5B with the n-gram and the 0.5B drafter through the gateway "
                             "(configs/speculative.yaml; needs scripts/setup --spec)")
    parser.add_argument("--real-max-tokens", type=int, default=96, help="tokens per request in --real")
    parser.add_argument("--gateway", action="store_true",
                        help="instead: the emulated target through a gateway process (chat API, SSE)")
    parser.add_argument("--edit-rate", type=float, default=0.1, help="the emulated model's edit rate in --gateway")
    args = parser.parse_args()
    if args.gateway:
        from speculative_gateway import run_gateway

        return run_gateway(args)
    if args.real:
        from speculative_real import run_real

        return run_real(args)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "plugins.vllm.emulator", "--port", str(port), "--served-model-name", MODEL,
            "--rtt-ms", str(RTT_MS), "--decode-ms", str(DECODE_MS), "--verify-token-ms", str(VERIFY_TOKEN_MS),
            "--eos-token-id", str(EOS)]
    with tempfile.TemporaryDirectory(prefix="bench-spec-") as logs:
        proc = spawn(argv, cpu=None, log_dir=Path(logs), name="vllm-emulator", cwd=ROOT)
        try:
            def ready() -> bool:
                try:
                    return httpx.get(url + "/health", timeout=1).status_code == 200
                except httpx.HTTPError:
                    return False

            if not wait_until(ready, 30):
                print(f"the emulator did not start:\n{(Path(logs) / 'vllm-emulator.stderr').read_text()}")
                return 1
            return asyncio.run(run(args, url))
        finally:
            stop(proc)


if __name__ == "__main__":
    sys.exit(main())
