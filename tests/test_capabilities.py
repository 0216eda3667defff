"""Capability filter: providers declare (or litellm's map states) their context window, vision, audio,
PDF and tool support; ``auto`` ranks only the providers that can serve a request, a named one that cannot is
a 400 naming why, and a provider's own context-length 400 falls back to the next provider. A real
gateway over real sockets, the real replay upstream and the official ``openai`` client."""

from __future__ import annotations

import base64
import io
import wave
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from gateway.config import ConfigError, parse_config
from gateway.tokens import audio_tokens, count_messages
from gateway.upstream import start_upstream
from tests.gateway_fixture import provider, start_gateway

pytestmark = pytest.mark.integration

IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}]
LONG = "Summarise the history of the printing press in Europe. " * 60  # ~600 tokens
AUDIO = {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}
PDF = {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"}}


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    base, stop = start_upstream(faults={"short": "context:200"})  # rejects prompts over 200 tokens
    yield base
    stop()


def _gateway(up: str, *providers: dict[str, Any]) -> tuple[str, Any]:
    return start_gateway({"router": {"artifact": "none"}, "server": {"max_attempts": 3, "deadline_s": 20},
                          "providers": list(providers)})


def _ask(*parts: Any) -> list[Any]:
    """One user message of ``parts`` (as list[Any]: the openai client's TypedDicts cannot tell them apart)."""
    return [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, *parts]}]


def _post(base: str, content: Any, model: str = "auto", **extra: Any) -> httpx.Response:
    return httpx.post(base + "/v1/chat/completions", timeout=30,
                      json={"model": model, "messages": [{"role": "user", "content": content}], **extra})


def test_auto_skips_providers_without_vision_or_tools(upstream: str) -> None:
    # cost-only routing puts the cheap text-only provider first; a request it cannot take skips it
    base, stop = _gateway(upstream,
                          provider("text-only", "openai/mistralai/mistral-7b-chat", upstream, (0.1, 0.1),
                                   supports_vision=False, supports_tools=False),
                          provider("gpt-4", "openai/gpt-4-1106-preview", upstream, (10.0, 30.0),
                                   supports_vision=True))
    try:
        plain = _post(base, "What is 2 + 2?")
        assert plain.status_code == 200 and plain.headers["x-cscr-provider"] == "text-only", plain.text
        image = _post(base, [{"type": "text", "text": "What is in this picture?"}, IMAGE])
        assert image.status_code == 200 and image.headers["x-cscr-provider"] == "gpt-4", image.text
        assert image.headers["x-cscr-tried"] == "gpt-4"  # filtered before routing, not tried and failed
        tools = _post(base, "Look it up.", tools=TOOLS)
        assert tools.status_code == 200 and tools.headers["x-cscr-provider"] == "gpt-4", tools.text
    finally:
        stop()


def test_named_provider_that_cannot_serve_is_400_naming_why(upstream: str) -> None:
    base, stop = _gateway(upstream,
                          provider("text-only", "openai/mistralai/mistral-7b-chat", upstream, (0.1, 0.1),
                                   supports_vision=False, supports_tools=False, context_window=100),
                          provider("gpt-4", "openai/gpt-4-1106-preview", upstream, (10.0, 30.0)))
    client = openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0)
    try:
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model="text-only", messages=_ask(IMAGE))
        assert "supports_vision: false" in info.value.message and "text-only" in info.value.message
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model="text-only", messages=[{"role": "user", "content": "hi"}],
                                           tools=TOOLS)  # type: ignore[arg-type]
        assert "supports_tools: false" in info.value.message and info.value.param == "tools"
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model="text-only", messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=500)
        assert info.value.code == "context_length_exceeded" and "context window of 100" in info.value.message
    finally:
        stop()


def test_no_provider_can_serve_is_400_naming_the_capability(upstream: str) -> None:
    base, stop = _gateway(upstream,
                          provider("a", "openai/mistralai/mistral-7b-chat", upstream, (0.1, 0.1),
                                   supports_vision=False),
                          provider("b", "openai/gpt-4-1106-preview", upstream, (10.0, 30.0), supports_vision=False))
    try:
        r = _post(base, [{"type": "text", "text": "What is this?"}, IMAGE])
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert "no provider can serve this request (missing: vision)" in error["message"]
        assert "'a'" in error["message"] and "'b'" in error["message"]
    finally:
        stop()


def test_declared_window_routes_long_prompts_past_small_models(upstream: str) -> None:
    base, stop = _gateway(upstream,
                          provider("small", "openai/mistralai/mistral-7b-chat", upstream, (0.1, 0.1),
                                   context_window=300),
                          provider("gpt-4", "openai/gpt-4-1106-preview", upstream, (10.0, 30.0)))
    try:
        assert _post(base, "hi", max_tokens=16).headers["x-cscr-provider"] == "small"
        r = _post(base, "hi", max_tokens=400)  # the window counts max_tokens too
        assert r.status_code == 200 and r.headers["x-cscr-provider"] == "gpt-4", r.text
        r = _post(base, LONG)
        assert r.status_code == 200 and r.headers["x-cscr-tried"] == "gpt-4", r.text
    finally:
        stop()


def test_provider_context_length_error_falls_back(upstream: str) -> None:
    # "short" declares nothing (unknown: allowed), is cheapest, and its upstream rejects the long prompt
    base, stop = _gateway(upstream,
                          provider("short", "openai/short", upstream, (0.01, 0.01)),
                          provider("gpt-4", "openai/gpt-4-1106-preview", upstream, (10.0, 30.0)))
    client = openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0)
    try:
        assert _post(base, "hi").headers["x-cscr-provider"] == "short"
        r = _post(base, LONG)
        assert r.status_code == 200, r.text
        assert r.headers["x-cscr-tried"] == "short,gpt-4" and r.headers["x-cscr-provider"] == "gpt-4"
        assert 'cscr_fallbacks_total{provider="short"} 1.0' in httpx.get(base + "/metrics").text
        # named, there is no next provider: the provider's own 400, as it said it
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model="short", messages=[{"role": "user", "content": LONG}])
        assert info.value.code == "context_length_exceeded" and "maximum context length" in info.value.message
    finally:
        stop()


def test_capability_fields_parse_and_fall_back_to_litellm() -> None:
    def cfg(**extra: Any) -> Any:
        return parse_config({"providers": [provider("p", "openai/gpt-4o", "http://x/v1", **extra)]}).providers[0]

    listed = cfg()  # litellm's map: gpt-4o has a 128k window, vision and tools
    assert (listed.context_window, listed.supports_vision, listed.supports_tools) == (128000, True, True)
    declared = cfg(context_window=8192, supports_vision=False)
    assert (declared.context_window, declared.supports_vision, declared.supports_tools) == (8192, False, True)
    unknown = parse_config({"providers": [provider("q", "openai/no-such-model", "http://x/v1")]}).providers[0]
    assert (unknown.context_window, unknown.supports_vision, unknown.supports_tools) == (None, None, None)
    with pytest.raises(ConfigError, match="context_window"):
        cfg(context_window=0)
    with pytest.raises(ConfigError, match="supports_vision"):
        cfg(supports_vision="yes")


def test_auto_skips_providers_without_audio_or_pdf_input(upstream: str) -> None:
    """Audio and file parts were not looked at: the cheapest provider got them, audio or not."""
    base, stop = _gateway(upstream,
                          provider("text-only", "openai/mistralai/mistral-7b-chat", upstream, (0.1, 0.1),
                                   supports_audio_input=False, supports_pdf_input=False),
                          provider("gpt-4", "openai/gpt-4-1106-preview", upstream, (10.0, 30.0),
                                   supports_audio_input=True, supports_pdf_input=True))
    try:
        for part in (AUDIO, PDF):
            r = _post(base, [{"type": "text", "text": "What is in this?"}, part])
            assert r.status_code == 200 and r.headers["x-cscr-tried"] == "gpt-4", r.text
        assert _post(base, "What is 2 + 2?").headers["x-cscr-provider"] == "text-only"
    finally:
        stop()


def test_named_provider_without_audio_or_pdf_input_is_400_naming_why(upstream: str) -> None:
    base, stop = _gateway(upstream,
                          provider("text-only", "openai/mistralai/mistral-7b-chat", upstream, (0.1, 0.1),
                                   supports_audio_input=False, supports_pdf_input=False),
                          provider("gpt-4", "openai/gpt-4-1106-preview", upstream, (10.0, 30.0)))
    client = openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0)
    try:
        for part, field in ((AUDIO, "supports_audio_input: false"), (PDF, "supports_pdf_input: false")):
            with pytest.raises(openai.BadRequestError) as info:
                client.chat.completions.create(model="text-only", messages=_ask(part))
            assert field in info.value.message and "text-only" in info.value.message
            assert info.value.param == "messages" and info.value.code == "model_not_supported"
        r = client.chat.completions.create(model="gpt-4", messages=_ask(AUDIO))  # unknown allows it
        assert r.choices
    finally:
        stop()


def test_no_provider_takes_audio_or_pdf_is_400_naming_the_capability(upstream: str) -> None:
    base, stop = _gateway(upstream,
                          provider("a", "openai/mistralai/mistral-7b-chat", upstream, (0.1, 0.1),
                                   supports_audio_input=False, supports_pdf_input=False),
                          provider("b", "openai/gpt-4-1106-preview", upstream, (10.0, 30.0),
                                   supports_audio_input=False, supports_pdf_input=False))
    try:
        for part, missing in ((AUDIO, "audio"), (PDF, "files")):
            r = _post(base, [{"type": "text", "text": "What is this?"}, part])
            assert r.status_code == 400, r.text
            error = r.json()["error"]
            assert f"no provider can serve this request (missing: {missing})" in error["message"], error
            assert "'a'" in error["message"] and "'b'" in error["message"]
    finally:
        stop()


def test_audio_and_files_count_toward_the_prompt(upstream: str) -> None:
    """They counted 0 tokens: a request with a minute of audio or a PDF fit any window, and reserved
    only its text. Audio counts the most its size can hold (8 kbit/s, 32 tokens a second); a file
    ``server.file_tokens``."""
    text_only = count_messages([{"role": "user", "content": [{"type": "text", "text": "hi"}]}])
    audio = {"type": "input_audio", "input_audio": {"data": "A" * 40_000, "format": "mp3"}}  # 30 KB: 30 s at most
    assert count_messages([{"role": "user", "content": [{"type": "text", "text": "hi"}, audio]}]) == text_only + 960
    assert count_messages([{"role": "user", "content": [{"type": "text", "text": "hi"}, PDF]}],
                          file_tokens=1234) == text_only + 1234
    base, stop = _gateway(upstream,
                          provider("small", "openai/mistralai/mistral-7b-chat", upstream, (0.1, 0.1),
                                   context_window=500),
                          provider("gpt-4", "openai/gpt-4-1106-preview", upstream, (10.0, 30.0)))
    client = openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0)
    try:
        assert _post(base, [{"type": "text", "text": "hi"}, AUDIO]).headers["x-cscr-provider"] == "small"
        for part in (audio, PDF):  # 960 and 4000 tokens: past small's window
            r = _post(base, [{"type": "text", "text": "What is this?"}, part])
            assert r.status_code == 200 and r.headers["x-cscr-tried"] == "gpt-4", r.text
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model="small", messages=_ask(PDF))
        assert info.value.code == "context_length_exceeded" and "context window of 500" in info.value.message
    finally:
        stop()


def _wav(seconds: int, rate: int = 16000, channels: int = 1) -> str:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\0\0" * rate * channels * seconds)
    return base64.b64encode(buf.getvalue()).decode()


def test_a_wav_counts_its_own_length() -> None:
    """A WAV's header gives its rate: 10 s of 16 kHz 16-bit audio is 320 tokens, not the 10,240 the
    8 kbit/s bound gives its 320 KB (which pushed it past small windows and over-reserved budgets)."""
    assert audio_tokens(_wav(10)) == 321  # 10 s and its 44-byte header, at 32 tokens a second
    assert audio_tokens(_wav(10, 48000, 2)) == 321
    headerless = base64.b64encode(b"\xff\xfb" * 16000).decode()  # 32 KB that is no WAV: the bound
    assert audio_tokens(headerless) == 1024
    assert audio_tokens("not base64 at all!") == audio_tokens("x" * 18)
    lying = bytearray(base64.b64decode(_wav(10)))
    lying[28:32] = (10**9).to_bytes(4, "little")  # byte-rate field: the lower of it and the sample format's counts
    assert audio_tokens(base64.b64encode(bytes(lying)).decode()) == 321
    # MP3 inside a WAV (format tag 0x55) is timed by its frames, not by the header: the bound, as for MP3
    mpeg = bytearray(base64.b64decode(_wav(10)))
    mpeg[20:22] = (0x55).to_bytes(2, "little")
    assert audio_tokens(base64.b64encode(bytes(mpeg)).decode()) == audio_tokens("x" * len(_wav(10)))
    no_channels = bytearray(base64.b64decode(_wav(10)))
    no_channels[22:24] = (0).to_bytes(2, "little")
    assert audio_tokens(base64.b64encode(bytes(no_channels)).decode()) == audio_tokens("x" * len(_wav(10)))


def test_audio_and_pdf_fields_parse_and_fall_back_to_litellm() -> None:
    def cfg(model: str = "gemini/gemini-2.5-flash-image", **extra: Any) -> Any:
        return parse_config({"providers": [provider("p", model, "http://x/v1", **extra)]}).providers[0]

    listed = cfg()  # litellm's map: no audio, PDFs
    assert (listed.supports_audio_input, listed.supports_pdf_input) == (False, True)
    declared = cfg(supports_audio_input=True, supports_pdf_input=False)
    assert (declared.supports_audio_input, declared.supports_pdf_input) == (True, False)
    unknown = cfg("openai/no-such-model")
    assert (unknown.supports_audio_input, unknown.supports_pdf_input) == (None, None)
    for bad in ({"supports_audio_input": "yes"}, {"supports_pdf_input": 1}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            cfg(**bad)
    assert parse_config({"server": {"file_tokens": 900}}).server.file_tokens == 900
    for bad_tokens in (-1, "many", 2.5):
        with pytest.raises(ConfigError, match="file_tokens"):
            parse_config({"server": {"file_tokens": bad_tokens}})


def test_a_metered_file_request_reserves_the_providers_whole_window(upstream: str) -> None:
    """A file's tokens are not counted here (``file_tokens`` is a guess, not a bound): a provider
    billed 90,000 prompt tokens for a PDF estimated at 4,000, and a $0.50 key paid for $10.80 of
    answers before it was refused. A metered request with a file (or a part type the gateway does not
    know) now reserves the most the provider can bill: its whole context window as the prompt."""
    import hashlib

    key = {"name": "k", "secret_sha256": hashlib.sha256(b"sk-files").hexdigest(), "budget_usd": 5.0}
    base, stop = start_gateway({"router": {"artifact": "none"}, "keys": [key], "providers": [
        provider("pdfy", "openai/gpt-4-1106-preview", upstream, (10.0, 30.0), supports_pdf_input=True,
                 context_window=20_000)]})
    auth = {"authorization": "Bearer sk-files"}
    try:
        def reserved(*parts: Any) -> float:
            r = httpx.post(base + "/v1/chat/completions", timeout=30, headers=auth,
                           json={"model": "pdfy", "max_tokens": 5, "messages": _ask(*parts)})
            assert r.status_code == 200, r.text
            return float(r.headers["x-cscr-cost-reserved-usd"])

        assert reserved() < 0.001  # text alone: its count
        window = 20_000 * 10.0 / 1e6 + 5 * 30.0 / 1e6
        assert reserved(PDF) == pytest.approx(window)
        assert reserved({"type": "video_url", "video_url": {"url": "data:,"}}) == pytest.approx(window)
    finally:
        stop()


def test_a_tool_call_history_needs_a_tool_model_without_tools_sent(upstream: str) -> None:
    """A conversation that holds tool calls and their results needs tool calling even when this turn
    sends no ``tools``: it went to a model declared without it, whose server has no template for them."""
    base, stop = _gateway(upstream,
                          provider("text-only", "openai/mistralai/mistral-7b-chat", upstream, (0.1, 0.1),
                                   supports_tools=False),
                          provider("gpt-4", "openai/gpt-4-1106-preview", upstream, (10.0, 30.0), supports_tools=True))
    history = [{"role": "user", "content": "Weather in Paris?"},
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]},
               {"role": "tool", "tool_call_id": "c1", "content": "18C, sunny"}]
    try:
        r = httpx.post(base + "/v1/chat/completions", timeout=30, json={"model": "auto", "messages": history})
        assert r.status_code == 200 and r.headers["x-cscr-provider"] == "gpt-4", r.text
        assert _post(base, "What is 2 + 2?").headers["x-cscr-provider"] == "text-only"
    finally:
        stop()
