"""CPU cost of the nesting check ``gateway.wire`` runs on every body before ``json.loads``, next to
``json.loads`` itself, on typical bodies and on a deeply nested attack (best of 5, same process).

    .venv/bin/python bench/json_depth_bench.py
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from gateway.wire import MAX_JSON_DEPTH, _depth_exceeds, _no_constant

WORDS = "the quick brown fox jumps over the lazy dog [see note] {draft} "


def _chat(messages: list[dict[str, object]], **extra: object) -> bytes:
    return json.dumps({"model": "auto", "messages": messages, **extra}, separators=(",", ":")).encode()


def _schema(i: int) -> dict[str, object]:
    item = {"type": "object", "properties": {f"f{j}": {"type": "string", "description": WORDS[:30]} for j in range(4)},
            "required": ["f0", "f1"]}
    return {"type": "function", "function": {"name": f"tool_{i}", "description": WORDS,
                                             "parameters": {"type": "object", "properties": {
                                                 "items": {"type": "array", "items": item},
                                                 "mode": {"type": "string", "enum": ["a", "b", "c"]}}}}}


def bodies() -> dict[str, bytes]:
    text = WORDS * 32  # ~2 KB, brackets inside strings included
    return {
        "1 KB chat": _chat([{"role": "system", "content": WORDS * 6}, {"role": "user", "content": WORDS * 8}]),
        "100 KB, 50 messages": _chat([{"role": ("user", "assistant")[i % 2], "content": text} for i in range(50)]),
        "100 KB tools+schema": _chat([{"role": "user", "content": "hi"}], tools=[_schema(i) for i in range(170)]),
        "100 KB, 4000 text parts": _chat([{"role": "user", "content": [
            {"type": "text", "text": f"{i}"} for i in range(4000)]}]),
        "1 MB nested attack": b'{"model":"auto","messages":' + b'[{"a":' * 130_000 + b"1" + b"}]" * 130_000 + b"}",
    }


def best_of(fn: Callable[[], object], runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    print(f"{'body':26} {'bytes':>9} {'depth check':>12} {'json.loads':>11}")
    for name, raw in bodies().items():
        check = best_of(lambda: _depth_exceeds(raw, MAX_JSON_DEPTH))  # noqa: B023 (used at once)
        deep = _depth_exceeds(raw, MAX_JSON_DEPTH)
        parse = "refused" if deep else f"{best_of(lambda: json.loads(raw, parse_constant=_no_constant)) * 1e3:8.3f} ms"  # noqa: B023
        print(f"{name:26} {len(raw):9} {check * 1e3:9.3f} ms {parse:>11}")


if __name__ == "__main__":
    main()
