"""The replay upstream, served for real by uvicorn and driven by the real ``openai`` client."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from gateway.replay import (
    BUNDLED_REPLAY,
    REPLAY_MODELS,
    REPLAY_PRICES,
    ReplayTable,
    model_candidates,
    resolve_model,
)
from gateway.upstream import (
    Fault,
    FaultSpecError,
    fault_rules,
    main,
    parse_fault,
    routerbench_parquet,
    split_model,
    split_words,
    start_upstream,
)

pytestmark = pytest.mark.integration

COST_REL_TOL = 1e-9  # usage x REPLAY_PRICES vs the recorded cost: exact up to float rounding


@pytest.fixture(scope="session")
def table() -> ReplayTable:
    return ReplayTable.load(BUNDLED_REPLAY)  # ships in the package: no benchmark data needed


@pytest.fixture(scope="session")
def base_url(table: ReplayTable) -> Iterator[str]:
    url, stop = start_upstream(table=table, faults={"broken": "status:503", "slow": "timeout:30", "cutter": "cut:2"})
    yield url
    stop()


@pytest.fixture(scope="session")
def root(base_url: str) -> str:
    return base_url.removesuffix("/v1")


@pytest.fixture(scope="session")
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key="test-key", max_retries=0, timeout=5)


@pytest.fixture
def aclient(base_url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url, api_key="test-key", max_retries=0, timeout=5)


@pytest.fixture(scope="session")
def prompts(table: ReplayTable) -> list[str]:
    return table.prompts()


@pytest.fixture(scope="session")
def long_prompt(table: ReplayTable, prompts: list[str]) -> str:
    """An mbpp prompt whose recorded gpt-4 and mixtral answers are both over 50 tokens."""
    models = ("gpt-4-1106-preview", "mistralai/mixtral-8x7b-chat")
    return next(
        p
        for p in prompts
        if all((rec := table.lookup(p, m)) is not None and rec.completion_tokens > 50 for m in models)
    )


def user(text: str) -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": text}]


def cost_of(model: str, prompt_tokens: int, completion_tokens: int) -> float:
    in_price, out_price = REPLAY_PRICES[model]
    return (prompt_tokens * in_price + completion_tokens * out_price) / 1e6


# --- pure parts --------------------------------------------------------------------------------


def test_prices_reproduce_recorded_costs(table: ReplayTable, prompts: list[str]) -> None:
    worst = 0.0
    for prompt in prompts[::40]:  # 80 prompts from every eval, all 11 models
        for model in REPLAY_MODELS:
            rec = table.lookup(prompt, model)
            assert rec is not None
            assert rec.completion_tokens == table.count(rec.content)  # the fit is exact, not forced
            rel = abs(cost_of(model, rec.prompt_tokens, rec.completion_tokens) - rec.cost_usd) / rec.cost_usd
            worst = max(worst, rel)
    assert worst < COST_REL_TOL


def test_recorded_answers_are_unwrapped(table: ReplayTable, prompts: list[str]) -> None:
    rec = table.lookup(prompts[0], "gpt-4-1106-preview")
    assert rec is not None and rec.content in "ABCD" and not rec.content.startswith("[")
    assert table.lookup("  " + prompts[0] + "\n", "gpt-4-1106-preview") == rec
    assert table.lookup(prompts[0], "no-such-model") is None
    assert table.lookup("not a routerbench prompt", "claude-v2") is None


def test_model_names_resolve_with_provider_prefixes() -> None:
    assert resolve_model("openai/gpt-4-1106-preview") == "gpt-4-1106-preview"
    assert resolve_model("together_ai/meta/llama-2-70b-chat") == "meta/llama-2-70b-chat"
    assert resolve_model("meta/llama-2-70b-chat") == "meta/llama-2-70b-chat"
    assert resolve_model("gpt-4o") is None
    assert model_candidates("a/b/c") == ["a/b/c", "b/c", "c"]


def test_parse_fault() -> None:
    assert parse_fault("status:503") == Fault(status=503)
    assert parse_fault("status=429, retry_after=2") == Fault(status=429, retry_after_s=2.0)
    assert parse_fault("503") == Fault(status=503)
    assert parse_fault("timeout") == Fault(timeout_s=600.0)
    assert parse_fault("cut") == Fault(cut_after=3)
    assert parse_fault("cut:5,chunk_delay:10") == Fault(cut_after=5, chunk_delay_ms=10.0)
    assert parse_fault("latency=250,status:500,rate:0.5,times:2") == Fault(
        status=500, latency_ms=250.0, rate=0.5, times=2
    )
    assert parse_fault("") is None and parse_fault("none") is None
    for bad in ("status:200", "explode", "rate:2", "latency:soon"):
        with pytest.raises(FaultSpecError):
            parse_fault(bad)


def test_model_suffix_and_rules() -> None:
    assert split_model("gpt-4-1106-preview#fault=status:503") == ("gpt-4-1106-preview", "status:503")
    assert split_model("claude-v2") == ("claude-v2", None)
    with pytest.raises(FaultSpecError):
        split_model("claude-v2#oops")
    assert fault_rules(["broken=status:503", "slow=timeout"], fail_rate=0.1) == (
        ("broken", "status:503"),
        ("slow", "timeout"),
        ("*", "status:503,rate:0.1"),
    )
    with pytest.raises(FaultSpecError):
        fault_rules(["no-equals-sign"])
    assert main(["--fault", "broken=status:999"]) == 2


def test_split_words_reassembles() -> None:
    for text in ("", "A", "one two three four five", "  lead and trail  ", "a\n\nb\tc d\n"):
        pieces = split_words(text, 3)
        assert "".join(pieces) == text
        assert all(len(p.split()) <= 3 for p in pieces)


# --- over the wire -----------------------------------------------------------------------------


def test_replayed_prompt_returns_recorded_answer(client: openai.OpenAI, table: ReplayTable, prompts: list[str]) -> None:
    prompt = prompts[1500]
    for requested, column in (("claude-v2", "claude-v2"), ("openai/gpt-4-1106-preview", "gpt-4-1106-preview")):
        raw = client.chat.completions.with_raw_response.create(model=requested, messages=user(prompt))
        reply = raw.parse()
        rec = table.lookup(prompt, column)
        assert rec is not None
        assert raw.headers["x-replay"] == "recorded" and raw.headers["x-replay-sample-id"] == rec.sample_id
        assert reply.id.startswith("chatcmpl-") and reply.object == "chat.completion" and reply.model == requested
        assert reply.system_fingerprint
        choice = reply.choices[0]
        assert (choice.index, choice.message.role, choice.finish_reason) == (0, "assistant", "stop")
        assert choice.message.content == rec.content
        assert reply.usage is not None
        assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
        recorded = float(raw.headers["x-replay-cost-usd"])
        billed = cost_of(column, reply.usage.prompt_tokens, reply.usage.completion_tokens)
        assert abs(billed - recorded) <= COST_REL_TOL * recorded


def test_unknown_prompt_and_model_are_labelled_synthetic(client: openai.OpenAI, prompts: list[str]) -> None:
    messages = user("What is the capital of Atlantis?")
    raw = client.chat.completions.with_raw_response.create(model="gpt-4-1106-preview", messages=messages)
    first = raw.parse()
    content = first.choices[0].message.content or ""
    assert content.startswith("[synthetic reply from replay upstream: prompt not in RouterBench subset]")
    assert raw.headers["x-replay"] == "synthetic" and "x-replay-cost-usd" not in raw.headers
    assert first.usage is not None and first.usage.prompt_tokens > 0 and first.usage.completion_tokens > 0
    again = client.chat.completions.create(model="gpt-4-1106-preview", messages=messages)
    assert again.choices[0].message.content == content  # deterministic

    other = client.chat.completions.with_raw_response.create(
        model="my-private-model", messages=[{"role": "user", "content": prompts[0]}]
    )
    assert other.headers["x-replay"] == "synthetic" and "not in RouterBench" in other.headers["x-replay-reason"]
    assert (other.parse().choices[0].message.content or "").startswith("[synthetic reply")


def test_n_stop_and_max_tokens(client: openai.OpenAI, long_prompt: str) -> None:
    mbpp = long_prompt
    full = client.chat.completions.create(model="gpt-4-1106-preview", messages=user(mbpp))
    text = full.choices[0].message.content or ""
    short = client.chat.completions.create(model="gpt-4-1106-preview", messages=user(mbpp), max_tokens=10, n=2)
    assert [c.index for c in short.choices] == [0, 1]
    assert all(c.finish_reason == "length" for c in short.choices)
    assert text.startswith(short.choices[0].message.content or "<none>")
    assert short.usage is not None and short.usage.completion_tokens == 20  # 10 per choice
    word = text.split()[3]
    stopped = client.chat.completions.create(model="gpt-4-1106-preview", messages=user(mbpp), stop=[word])
    assert stopped.choices[0].message.content == text[: text.index(word)]
    assert stopped.choices[0].finish_reason == "stop"


def test_forced_tool_call_and_pass_through(client: openai.OpenAI, root: str) -> None:
    tools: Any = [
        {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}
    ]
    reply = client.chat.completions.create(
        model="tool-probe",
        messages=user("call it"),
        tools=tools,
        tool_choice={"type": "function", "function": {"name": "lookup"}},
        temperature=0.3,
        max_tokens=77,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    call = choice.message.tool_calls[0]
    assert call.type == "function"
    assert call.function.name == "lookup" and call.function.arguments == "{}"
    last = httpx.get(f"{root}/_stats").json()["last_request"]["tool-probe"]
    assert last["tools"] == tools and last["temperature"] == 0.3 and last["max_tokens"] == 77


def test_streamed_tool_call(client: openai.OpenAI) -> None:
    tools: Any = [{"type": "function", "function": {"name": "first"}}, {"type": "function", "function": {"name": "x"}}]
    stream = client.chat.completions.create(
        model="claude-v2", messages=user("use a tool"), tools=tools, tool_choice="required", stream=True
    )
    chunks = list(stream)
    calls = [c.choices[0].delta.tool_calls[0] for c in chunks if c.choices[0].delta.tool_calls]
    assert calls[0].function is not None and calls[0].function.name == "first" and calls[0].id
    assert "".join((c.function.arguments or "") if c.function else "" for c in calls) == "{}"
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_stream_reassembles_with_usage(aclient: openai.AsyncOpenAI, long_prompt: str) -> None:
    messages = user(long_prompt)
    whole = await aclient.chat.completions.create(model="mistralai/mixtral-8x7b-chat", messages=messages)
    stream = await aclient.chat.completions.create(
        model="mistralai/mixtral-8x7b-chat",
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len(pieces) > 3 and "".join(pieces) == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


def test_sync_stream_without_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model="claude-v1", messages=user("hello there"), stream=True)
    chunks = list(stream)
    assert all(c.usage is None and c.choices for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks).startswith("[synthetic reply")


def test_status_faults(client: openai.OpenAI) -> None:
    messages = user("hi")
    cases: list[tuple[dict[str, Any], int]] = [
        ({"model": "broken"}, 503),  # --fault rule
        ({"model": "claude-v2#fault=status:500"}, 500),  # model suffix
        ({"model": "claude-v2", "extra_headers": {"x-upstream-fault": "status=429"}}, 429),  # header
        ({"model": "claude-v2", "extra_headers": {"x-upstream-fault": "400"}}, 400),
    ]
    for kwargs, status in cases:
        with pytest.raises(openai.APIStatusError) as info:
            client.chat.completions.create(messages=messages, **kwargs)
        assert info.value.status_code == status
        assert isinstance(info.value.body, dict) and "injected fault" in info.value.body["message"]
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(
            model="x",
            messages=messages,
            extra_headers={"x-upstream-fault": "status:429"},
        )


def test_timeout_fault(client: openai.OpenAI) -> None:
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        client.with_options(timeout=0.5).chat.completions.create(model="slow", messages=user("hi"))
    assert time.monotonic() - started < 10  # the client gave up, long before the 30 s answer


async def test_cut_fault(aclient: openai.AsyncOpenAI, client: openai.OpenAI) -> None:
    stream = await aclient.chat.completions.create(model="cutter", messages=user("a b c d e f g h i j"), stream=True)
    received = []
    with pytest.raises((httpx.RemoteProtocolError, openai.APIError)):
        async for chunk in stream:
            received.append(chunk)
    assert len(received) == 2
    with pytest.raises(openai.APIConnectionError):  # non-stream: half a body, then the drop
        client.chat.completions.create(model="claude-v2#fault=cut", messages=user("hi"))


def test_latency_fault(client: openai.OpenAI) -> None:
    started = time.monotonic()
    client.chat.completions.create(
        model="claude-v2",
        messages=user("hi"),
        extra_headers={"x-upstream-fault": "latency=300"},
    )
    assert time.monotonic() - started >= 0.3


def test_admin_faults_flip_a_model(client: openai.OpenAI, root: str) -> None:
    messages = user("hi")
    client.chat.completions.create(model="flipper", messages=messages)
    assert httpx.post(f"{root}/_faults", json={"model": "flipper", "spec": "status:502"}).json()["flipper"] == {
        "status": 502,
        "rate": 1.0,
    }
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="flipper", messages=messages)
    httpx.post(f"{root}/_faults", json={"model": "flipper", "spec": "status:503,times:1"})
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="flipper", messages=messages)
    client.chat.completions.create(model="flipper", messages=messages)  # healed
    assert "flipper" not in httpx.get(f"{root}/_faults").json()
    assert httpx.post(f"{root}/_faults", json={"model": "flipper", "spec": "status:7"}).status_code == 400


def test_stats_models_health_and_validation(client: openai.OpenAI, root: str) -> None:
    for _ in range(2):
        client.chat.completions.create(model="stats-probe", messages=user("count me"))
    stats = httpx.get(f"{root}/_stats").json()
    assert stats["requests"]["stats-probe"] == 2
    assert stats["last_request"]["stats-probe"]["messages"][0]["content"] == "count me"
    assert stats["last_headers"]["stats-probe"]["authorization"] == "Bearer test-key"

    assert httpx.delete(f"{root}/_stats").json()["total"] == 0

    ids = [m.id for m in client.models.list()]
    assert set(REPLAY_MODELS) <= set(ids) and {"broken", "slow", "cutter"} <= set(ids)
    assert httpx.get(f"{root}/health").json()["prompts"] > 3000

    for body in (b"not json", b'{"model": "x"}', b'{"messages": [{"role": "user", "content": "x"}]}'):
        response = httpx.post(f"{root}/v1/chat/completions", content=body)
        assert response.status_code == 400
        assert response.json()["error"]["type"] == "invalid_request_error"


def test_server_wide_fail_rate_and_no_replay() -> None:
    url, stop = start_upstream(replay="none", fail_rate=0.5, fail_status=502, seed=1)
    try:
        client = openai.OpenAI(base_url=url, api_key="k", max_retries=0, timeout=5)
        outcomes = []
        for _ in range(30):
            try:
                reply = client.chat.completions.create(model="gpt-4-1106-preview", messages=user("hi"))
                assert (reply.choices[0].message.content or "").startswith(
                    "[synthetic reply from replay upstream: replay disabled]"
                )
                outcomes.append(200)
            except openai.APIStatusError as exc:
                outcomes.append(exc.status_code)
        assert set(outcomes) == {200, 502} and 5 < outcomes.count(502) < 25
    finally:
        stop()


# --- where the replayed answers come from --------------------------------------------------------


def test_bundled_set_is_the_default_and_a_chosen_data_folder_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CSCR_DATA_DIR", raising=False)
    assert routerbench_parquet(None) == BUNDLED_REPLAY and BUNDLED_REPLAY.stat().st_size < 3_000_000
    full = tmp_path / "routerbench_subset" / "routerbench_subset.parquet"
    full.parent.mkdir()
    full.write_bytes(b"")
    assert routerbench_parquet(tmp_path) == full
    monkeypatch.setenv("CSCR_DATA_DIR", str(tmp_path))
    assert routerbench_parquet(None) == full
    monkeypatch.setenv("CSCR_DATA_DIR", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="RouterBench subset not found"):
        routerbench_parquet(None)
    assert main(["--port", "0"]) == 2  # a chosen folder without the data: one line, exit 2


def test_bundled_set_holds_every_recorded_answer_and_cost(table: ReplayTable, benchmark_data_dir: Path) -> None:
    from gateway.replay_set import SOURCE, differences

    assert differences(benchmark_data_dir / SOURCE, BUNDLED_REPLAY) == []  # `cscr replay-set --check`
    assert len(table) == 3176  # 3,178 rows, two prompts repeat


def test_no_benchmark_data_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.cli import main as cscr
    from router_core import paths

    monkeypatch.delenv("CSCR_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(paths, "_PACKAGE_DIR", tmp_path / "pkg")
    with pytest.raises(paths.DataNotFoundError, match="CSCR_DATA_DIR is unset and no shared/data above"):
        paths.default_data_dir()
    monkeypatch.setenv("CSCR_DATA_DIR", str(tmp_path / "nowhere"))
    assert cscr(["train", "--benchmark", "routerbench", "--out", str(tmp_path / "a"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cscr train: benchmark data not found" in err[0] and "CSCR_DATA_DIR" in err[0]


def test_lone_surrogates_are_a_400_not_a_500(root: str) -> None:
    """Text with a lone UTF-16 surrogate cannot be hashed or tokenised: a clear 400, as the gateway
    answers, on chat completions and embeddings (it was a 500 with a traceback)."""
    chat = b'{"model": "gpt-4-1106-preview", "messages": [{"role": "user", "content": "\\ud800 hi"}]}'
    emb = b'{"model": "x", "input": "\\ud800"}'
    for path, body in (("/v1/chat/completions", chat), ("/v1/embeddings", emb)):
        r = httpx.post(f"{root}{path}", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400, (path, r.status_code, r.text)
        assert "surrogate" in r.json()["error"]["message"]


@pytest.mark.parametrize(("extra", "param"), [
    ({"stream": "yes"}, "stream"),
    ({"stream": 1}, "stream"),
    ({"stream": True, "stream_options": "usage"}, "stream_options"),
    ({"stream": True, "stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
])
def test_stream_flags_must_be_booleans(root: str, extra: dict[str, Any], param: str) -> None:
    """As OpenAI answers: "stream": "yes" was taken as true here, so a client bug that OpenAI refuses
    passed every test run against this upstream."""
    body = {"model": "gpt-4-1106-preview", "messages": user("hi"), **extra}
    r = httpx.post(f"{root}/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param and r.json()["error"]["type"] == "invalid_request_error"
    ok = httpx.post(f"{root}/v1/chat/completions", json={**body, "stream": None, "stream_options": None})
    assert ok.status_code == 200, ok.text
