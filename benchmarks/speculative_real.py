"""The real CPU pair through the gateway (`benchmarks/speculative.py --real`): Qwen2.5-Coder-1.5B alone
vs speculative with the n-gram drafter and with Qwen2.5-Coder-0.5B drafting, both llama.cpp servers
launched by the gateway from configs/speculative.yaml, requests one at a time with the openai SDK.

Each prompt goes to the three routes of that config (coder-plain, coder-ngram, coder) at temperature 0;
the texts must be identical (exit 2 otherwise). Reported per mode: output tokens/s and end-to-end
latency as the client sees them, acceptance, tokens per target call (from the `x_speculative` field).
On two CPU cores the draft model is slow next to the target and the verify batch is compute bound,
which the numbers show; the emulated GPU target (`benchmarks/speculative.py`) is where the cost model
favours speculation.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import yaml
from procs import free_port, spawn, stop, tail, wait_until

ROOT = Path(__file__).resolve().parents[1]

CODE = '''def total_price(items, tax_rate):
    total = 0
    for item in items:
        price = item["price"] * item["quantity"]
        if item.get("discount"):
            price = price - price * item["discount"]
        total = total + price
    total = total + total * tax_rate
    return round(total, 2)
'''
PROSE = ("The river town woke slowly. Fishermen pushed their boats into the grey water while the baker "
         "set out the first loaves, and the school bell rang twice before the children came running "
         "down the hill, late as always, with their satchels bouncing behind them.")
PROMPTS: list[tuple[str, list[dict[str, str]]]] = [
    ("code refactor (grounded)", [{"role": "user", "content": "Rename the variable `total` to `amount` in this "
                                   f"function and change nothing else. Reply with the code only.\n\n{CODE}"}]),
    ("prose copy-edit (grounded)", [{"role": "user", "content": "Repeat this paragraph exactly, but in the "
                                     f"present tense:\n\n{PROSE}"}]),
    ("open-ended", [{"role": "user", "content": "Write a short Python function that checks whether a string "
                     "is a palindrome, with a docstring."}]),
]
MODES = (("target alone", "coder-plain"), ("spec, n-gram draft", "coder-ngram"), ("spec, 0.5B model draft", "coder"),
         ("spec, n-gram, k=4 fixed", "coder-ngram-k4"), ("spec, 0.5B draft, k=4 fixed", "coder-k4"))


def bench_config(directory: Path) -> Path:
    """configs/speculative.yaml plus two routes that always speculate with k = 4, to show what a round
    costs on this machine (the adaptive routes mostly decide not to)."""
    config = yaml.safe_load((ROOT / "configs" / "speculative.yaml").read_text())
    for route in list(config["routes"]):
        spec = route.get("speculative")
        if spec is not None:
            config["routes"].append({**route, "model": route["model"] + "-k4", "speculative": {**spec, "k": 4}})
    path = directory / "speculative-bench.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@dataclass
class ModeTotals:
    seconds: list[float] = field(default_factory=list)
    tokens: int = 0
    drafted: int = 0
    accepted: int = 0
    target_calls: int = 0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / sum(self.seconds) if self.seconds else 0.0


def ask(client: openai.OpenAI, model: str, messages: list[dict[str, str]], max_tokens: int) -> tuple[str, float, Any]:
    started = time.perf_counter()
    # The response cache would answer the repeated greedy request: every run decodes.
    raw = client.chat.completions.with_raw_response.create(model=model, messages=messages,  # type: ignore[arg-type]
                                                           temperature=0, max_tokens=max_tokens,
                                                           extra_headers={"cache-control": "no-cache, no-store"})
    seconds = time.perf_counter() - started
    body = raw.http_response.json()
    return body["choices"][0]["message"]["content"], seconds, body


def run_real(args: argparse.Namespace) -> int:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="bench-spec-real-") as logs:
        argv = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(bench_config(Path(logs))),
                "--port", str(port)]
        proc = spawn(argv, cpu=None, log_dir=Path(logs), name="gateway", cwd=ROOT)
        try:
            def ready() -> bool:
                try:
                    pairs = httpx.get(url + "/admin/speculative", timeout=2).json()["pairs"]
                    return all(p["state"] != "probing" for p in pairs)
                except (httpx.HTTPError, ValueError, KeyError):
                    return False

            if not wait_until(ready, 600):
                print(f"the gateway did not start:\n{tail(Path(logs) / 'gateway.stderr')}")
                return 1
            for pair in httpx.get(url + "/admin/speculative").json()["pairs"]:
                print(f"pair {pair['pair']}: {pair['state']} {pair['reason'] or ''}")
            return _measure(openai.OpenAI(base_url=url + "/v1", api_key="none", timeout=900), args, url)
        finally:
            stop(proc)


def _first_difference(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def _measure(client: openai.OpenAI, args: argparse.Namespace, url: str) -> int:
    print(f"target: Qwen2.5-Coder-1.5B Q4_K_M on llama.cpp (2 threads); draft: Qwen2.5-Coder-0.5B (2 threads); "
          f"{args.real_max_tokens} tokens max, requests one at a time, greedy; each prompt asked twice per mode, "
          "the second (warm prompt cache, learned costs) timed")
    totals = {mode: ModeTotals() for mode, _ in MODES}
    differ = 0
    print(f"{'prompt / mode':<36} {'tokens':>6} {'tok/s':>7} {'e2e s':>7} {'accept':>7} {'tok/call':>9}")
    for title, messages in PROMPTS:
        texts: dict[str, list[str]] = {mode: [] for mode, _ in MODES}
        print(f"-- {title}")
        for rep in range(2):
            for mode, model in MODES:
                text, seconds, body = ask(client, model, messages, args.real_max_tokens)
                texts[mode].append(text)
                if rep == 0:
                    continue
                tokens = body["usage"]["completion_tokens"]
                spec = body.get("x_speculative") or {}
                t = totals[mode]
                t.seconds.append(seconds)
                t.tokens += tokens
                t.drafted += spec.get("drafted", 0)
                t.accepted += spec.get("accepted", 0)
                t.target_calls += spec.get("target_calls", 0) or 1
                accept = f"{spec['accepted'] / spec['drafted']:.2f}" if spec.get("drafted") else "-"
                per_call = f"{tokens / spec['target_calls']:.2f}" if spec.get("target_calls") else f"{tokens:.0f}"
                print(f"  {mode:<34} {tokens:>6} {tokens / seconds:>7.2f} {seconds:>7.2f} {accept:>7} {per_call:>9}")
        reference = texts[MODES[0][0]][-1]
        notes = []
        alone_first, alone_second = texts[MODES[0][0]]
        if alone_first != alone_second:
            at = _first_difference(alone_first, alone_second)
            notes.append(f"the target alone itself changed between its two runs at char {at}")
        for mode, _ in MODES[1:]:
            for text in texts[mode]:
                if text != reference:
                    differ += 1
                    notes.append(f"{mode} differs from the target alone at char {_first_difference(text, reference)}")
        print(f"   outputs: {'IDENTICAL' if not notes else '; '.join(notes)}")
    base = totals[MODES[0][0]]
    print("-- all prompts (second runs)")
    for mode, _ in MODES:
        t = totals[mode]
        accept = f"{t.accepted / t.drafted:.2f}" if t.drafted else "-"
        print(f"  {mode:<34} {t.tokens:>6} {t.tokens_per_s:>7.2f} {statistics.median(t.seconds):>7.2f} {accept:>7} "
              f"{t.tokens / t.target_calls:>9.2f}  {t.tokens_per_s / base.tokens_per_s:.2f}x")
    for pair in httpx.get(url + "/admin/speculative").json()["pairs"]:
        print(f"pair {pair['pair']}: learned {pair['learned']}, k chosen {pair['k_chosen']}, "
              f"fallbacks {pair['fallbacks']}")
    if differ:
        # llama.cpp on a CPU is not reproducible across batch shapes for this Q4_K model (near-tie flips;
        # tests/backends/test_speculative_pair_real.py checks each such flip is one): reported, not failed.
        print(f"[NOTE] {differ} speculative answer(s) differ from the target alone's: llama.cpp numerics "
              "(see tests/backends/test_speculative_pair_real.py)")
    return 0
