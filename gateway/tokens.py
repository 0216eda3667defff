"""Token counting for cost estimates, offline.

tiktoken downloads its BPE file on first use and these machines have no internet; litellm ships
the cl100k file (under its cache name) in ``litellm_core_utils/tokenizers``. ``load_cl100k`` builds
the encoding from that file, hash-checked, without importing litellm (seconds) and without setting
``TIKTOKEN_CACHE_DIR`` for the whole process.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import logging
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

import tiktoken

from router_core.conversation import message_text

log = logging.getLogger(__name__)

MESSAGE_OVERHEAD_TOKENS = 4  # role and separators per message in OpenAI's chat format
REPLY_PRIMING_TOKENS = 3
IMAGE_TOKENS = 765  # per image part: OpenAI's count for a 1024x1024 image in high detail (server.image_tokens)
FILE_TOKENS = 4000  # per file part (server.file_tokens): a PDF's pages go in as text plus an image each
# An audio part's length is bounded from its size: no format in use is smaller than 8 kbit/s (MP3's
# lowest bitrate), and Gemini documents 32 tokens per second of audio (OpenAI publishes no rate). A
# WAV says its own rate in its header (a 16 kHz 16-bit one is 32,000 bytes a second: the bound alone
# would count it 32x its length); other formats take the bound.
AUDIO_MIN_BYTES_PER_SECOND = 1000
AUDIO_TOKENS_PER_SECOND = 32
_WAV_HEAD_CHARS = 344  # base64 of the first 258 bytes: RIFF/WAVE, then the chunks up to "fmt "
_PCM_TAGS = (1, 3)  # WAVE_FORMAT_PCM, WAVE_FORMAT_IEEE_FLOAT: samples at a fixed rate
_WAVE_FORMAT_EXTENSIBLE = 0xFFFE

_CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
_CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
_CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
_CL100K_SPECIAL = {
    "<|endoftext|>": 100257,
    "<|fim_prefix|>": 100258,
    "<|fim_middle|>": 100259,
    "<|fim_suffix|>": 100260,
    "<|endofprompt|>": 100276,
}


def _bundled_cl100k() -> Path | None:
    """litellm ships tiktoken's cl100k file under its cache name (sha1 of the URL); find it
    without importing litellm (several seconds)."""
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return None
    name = hashlib.sha1(_CL100K_URL.encode()).hexdigest()
    path = Path(next(iter(spec.submodule_search_locations))) / "litellm_core_utils" / "tokenizers" / name
    return path if path.is_file() else None


def load_cl100k() -> tiktoken.Encoding:
    """tiktoken's ``cl100k_base`` without the network: built from litellm's bundled BPE file when it
    is there and its hash matches, else ``tiktoken.get_encoding`` (its cache, then a download).
    Builds the encoding directly rather than setting ``TIKTOKEN_CACHE_DIR`` for the whole process."""
    path = _bundled_cl100k()
    if path is not None:
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() == _CL100K_SHA256:
            ranks = {base64.b64decode(tok): int(rank) for tok, rank in (ln.split() for ln in data.splitlines() if ln)}
            return tiktoken.Encoding(
                name="cl100k_base", pat_str=_CL100K_PATTERN, mergeable_ranks=ranks, special_tokens=_CL100K_SPECIAL
            )
        log.warning("bundled cl100k file %s has the wrong hash; falling back to tiktoken", path)
    return tiktoken.get_encoding("cl100k_base")


@lru_cache(maxsize=1)
def encoding() -> tiktoken.Encoding:
    return load_cl100k()


def count_text(text: str) -> int:
    return len(encoding().encode(text, disallowed_special=()))


def wav_bytes_per_second(data: str) -> int | None:
    """The bytes per second of a base64 PCM WAV from its ``fmt `` chunk: the lower of its byte-rate
    field and sample rate x channels x bytes per sample (the lower counts the longer), or None when
    ``data`` does not start as a PCM WAV with a readable ``fmt `` chunk. A compressed format inside a
    WAV (MP3, ADPCM) is timed by its own frames, not by these fields: None, the caller's bound."""
    try:
        head = base64.b64decode(data[:_WAV_HEAD_CHARS], validate=True)
    except ValueError:
        return None
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    at = 12
    while at + 8 <= len(head):
        size = int.from_bytes(head[at + 4:at + 8], "little")
        if head[at:at + 4] == b"fmt " and at + 24 <= len(head):
            tag = int.from_bytes(head[at + 8:at + 10], "little")
            if tag == _WAVE_FORMAT_EXTENSIBLE and at + 34 <= len(head):
                tag = int.from_bytes(head[at + 32:at + 34], "little")  # the sub-format GUID's first two bytes
            if tag not in _PCM_TAGS:
                return None
            channels = int.from_bytes(head[at + 10:at + 12], "little")
            rate = int.from_bytes(head[at + 12:at + 16], "little")
            byte_rate = int.from_bytes(head[at + 16:at + 20], "little")
            bits = int.from_bytes(head[at + 22:at + 24], "little")
            played = rate * channels * bits // 8
            return min(byte_rate, played) if byte_rate > 0 and played > 0 else None
        at += 8 + size + (size & 1)  # chunks are padded to an even size
    return None


def audio_tokens(data: str) -> int:
    """Tokens of an ``input_audio`` part from its base64 ``data``: its length at the rate its WAV
    header gives (the provider plays it at that rate too, so that is the length it bills), else the
    longest it can be (8 kbit/s, the slowest format in use)."""
    size = len(data) * 3 / 4 - (2 if data.endswith("==") else 1 if data.endswith("=") else 0)  # decoded bytes
    rate = max(wav_bytes_per_second(data) or AUDIO_MIN_BYTES_PER_SECOND, AUDIO_MIN_BYTES_PER_SECOND)
    return math.ceil(size / rate * AUDIO_TOKENS_PER_SECOND)


def _part_tokens(part: Any, image_tokens: int, file_tokens: int) -> int:
    """Tokens of a content part that is not text (text parts are counted with the message's text)."""
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "image_url":
        return image_tokens
    if kind == "input_audio":
        audio = part.get("input_audio")
        return audio_tokens(audio["data"]) if isinstance(audio, dict) and isinstance(audio.get("data"), str) else 0
    if kind == "file":
        return file_tokens
    return 0


def count_messages(messages: list[dict[str, Any]], tools: Any = None, image_tokens: int = IMAGE_TOKENS,
                   file_tokens: int = FILE_TOKENS) -> int:
    """Prompt tokens of a chat request, as OpenAI counts them for its cl100k models (an estimate
    for other tokenizers: it only sizes a budget reservation, the bill uses the provider's usage).
    Tool definitions count as their JSON, an assistant's tool calls as theirs, every image part as
    ``image_tokens`` and every file part as ``file_tokens`` (the real counts depend on sizes and pages,
    unknown here), an audio part as the most its size can hold (``audio_tokens``)."""
    total = REPLY_PRIMING_TOKENS
    for m in messages:
        total += MESSAGE_OVERHEAD_TOKENS + count_text(message_text(m))
        content = m.get("content")
        if isinstance(content, list):
            total += sum(_part_tokens(p, image_tokens, file_tokens) for p in content)
        if m.get("tool_calls"):
            total += count_text(json.dumps(m["tool_calls"], separators=(",", ":")))
    if tools:
        total += count_text(json.dumps(tools, separators=(",", ":")))
    return total
