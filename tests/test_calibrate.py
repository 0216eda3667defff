"""``cscr calibrate``: spend and model mix per trade-off on a user's own prompts, through the real CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from gateway.cli import main as cscr
from router_core.calibrate import calibrate, read_requests, tradeoff_for_spend
from router_core.conversation import routing_prompt
from router_core.kernel_policy import load_policy
from router_core.pricing import LIST_PRICES
from router_core.router import default_artifact_path
from router_core.types import Candidate

CHAT = ["What is the capital of France?", "Write a python function that merges two sorted lists.",
        "Explain the causes of the French revolution in detail.", "Say hi",
        "Which gas do plants absorb?\nA) O2\nB) CO2\nAnswer:"]


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def _requests(tmp_path: Path) -> Path:
    docs = [{"messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": p}]}
            for p in CHAT]
    docs.append({"messages": [{"role": "user", "content": [{"type": "text", "text": "Summarise this."}]}]})
    return _write(tmp_path / "prompts.jsonl", [json.dumps(d) for d in docs] + [""])


def test_rows_and_target_on_hand_made_arrays() -> None:
    p_hat = np.array([[0.9, 0.8], [0.9, 0.2]])  # (N, M): model 0 dear, model 1 cheap
    cost = np.array([[1.0, 0.01], [1.0, 0.01]])
    rows = calibrate(p_hat, cost, ["dear", "cheap"], lambda t: 10.0 * t, tradeoffs=[0.0, 0.02, 1.0])
    assert rows[0].mix == {"dear": 1.0} and rows[0].spend_per_1k == pytest.approx(1000.0)
    assert rows[1].mix == {"dear": 0.5, "cheap": 0.5}  # λ = 0.2: only the prompt the cheap one handles moves
    assert rows[2].mix == {"cheap": 1.0} and rows[2].spend_per_1k == pytest.approx(10.0)
    assert tradeoff_for_spend(rows, 600.0) is rows[1]
    assert tradeoff_for_spend(rows, 5.0) is None


@pytest.mark.slow  # loads the static encoder
def test_cli_prints_spend_and_mix_per_tradeoff_and_the_target(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert cscr(["calibrate", "--prompts", str(_requests(tmp_path)), "--target-spend-per-1k", "1.0"]) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"auto@(\d\.\d)\s+\$\s*([\d.]+)\s+(.+)", out)
    assert [t for t, _, _ in rows] == [f"{t / 10:.1f}" for t in range(11)]
    spend = [float(s) for _, s, _ in rows]
    assert all(a >= b for a, b in zip(spend, spend[1:], strict=False)) and spend[0] > 10 * spend[-1]
    assert "gpt-4-1106-preview 100%" in rows[0][2] and "mistralai/mistral-7b-chat 100%" in rows[-1][2]
    assert "6 requests" in out
    target = re.search(r"target \$1 per 1,000: use auto@(\d\.\d) \(\$([\d.]+)\)", out)
    assert target is not None and float(target.group(2)) <= 1.0
    assert float(target.group(1)) == min(float(t) for t, s, _ in rows if float(s) <= 1.0)


def _candidates(experts: list[str], chars: int, cap: int | None, n: int) -> list[Candidate]:
    """The candidates as the gateway hands them to ``rank``, priced like ``gateway.policy.expected_cost``
    at list prices (prompt tokens: ~chars / 4, as calibrate counts them)."""
    def at(e: str) -> object:
        return lambda t: (chars / 4 * LIST_PRICES[e][0] + min(t, cap or np.inf) * n * LIST_PRICES[e][1]) / 1e6

    return [Candidate(e, e, (chars / 4 * LIST_PRICES[e][0] + 512 * n * LIST_PRICES[e][1]) / 1e6, at(e))  # type: ignore[arg-type]
            for e in experts]


@pytest.mark.slow  # loads the static encoder
def test_spend_and_mix_are_those_of_the_served_decisions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """calibrate prices what ``rank`` ranks on when serving: expected answer lengths (capped at
    max_tokens, times n), not the artifact's by-prompt-length cost model."""
    docs = [{"messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": p}]}
            for p in CHAT]
    docs += [{"messages": [{"role": "user", "content": "Write a long essay on the history of Rome."}], "max_tokens": 3},
             {"messages": [{"role": "user", "content": "List ten prime numbers."}], "n": 2}]
    path = _write(tmp_path / "prompts.jsonl", [json.dumps(d) for d in docs])
    assert cscr(["calibrate", "--prompts", str(path)]) == 0
    rows = {float(t): (float(s), m) for t, s, m in
            re.findall(r"auto@(\d\.\d)\s+\$\s*([\d.]+)\s+(.+)", capsys.readouterr().out)}
    policy = load_policy(default_artifact_path())
    requests = read_requests(path)
    for t in (0.0, 0.3, 0.6, 1.0):
        served = [policy.rank(r.prompt, _candidates(policy.experts, r.chars, r.max_output_tokens, r.n), t).order[0]
                  for r in requests]
        spend = 1000 * float(np.mean([s.cost for s in served]))
        assert rows[t][0] == pytest.approx(spend, abs=6e-5)  # printed with 4 decimals
        names = [s.name for s in served]
        printed = dict(part.rsplit(" ", 1) for part in rows[t][1].split(", "))
        assert printed == {m: f"{names.count(m) / len(names):.0%}" for m in set(names)}


@pytest.mark.parametrize(("line", "why"), [
    ("{not json", "not JSON"),
    ('{"prompt": "hi"}', "expected"),
    ('{"messages": []}', "expected"),
    ('{"messages": [{"role": "user", "content": 3}]}', "no text"),
    ('{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}', "positive integer"),
    ('{"messages": [{"role": "user", "content": "hi"}], "n": "2"}', "positive integer"),
    ('{"messages": [{"role": "user", "content": "\\ud800 hi"}]}', "surrogate"),
])
def test_malformed_line_is_named_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str,
                                        why: str) -> None:
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}]})
    path = _write(tmp_path / "bad.jsonl", [good, "", line, good])
    assert cscr(["calibrate", "--prompts", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:3:" in err and why in err


def test_a_line_that_is_not_utf8_is_named_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(good + b"\n" + b'{"messages": [{"role": "user", "content": "caf\xe9"}]}\n')
    assert cscr(["calibrate", "--prompts", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:2: not UTF-8" in err


def test_missing_file_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cscr(["calibrate", "--prompts", str(tmp_path / "nope.jsonl")]) == 2
    assert "nope.jsonl" in capsys.readouterr().err


def test_a_follow_up_is_read_with_its_question_as_the_gateway_reads_it(tmp_path: Path) -> None:
    question = "Prove that the square root of two is irrational, step by step, citing each lemma you use. " * 2
    conversation = [{"role": "system", "content": "be brief"}, {"role": "user", "content": question},
                    {"role": "assistant", "content": "Suppose it were p/q..."}, {"role": "user", "content": "Why?"}]
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"messages": conversation}) + "\n" + json.dumps({"messages": conversation[:2]}) + "\n")
    follow_up, alone = read_requests(path)
    assert follow_up.prompt == question.strip() + "\nWhy?" == routing_prompt(conversation)
    assert alone.prompt == question.strip()
