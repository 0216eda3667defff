"""What the router reads of a chat request: the user's own words. Pure functions over OpenAI chat
messages (dicts), shared by the gateway (``gateway.wire``) and ``cscr calibrate``, so a prompts file
is read as the gateway reads the same requests."""

from __future__ import annotations

from typing import Any

CONTEXT_CHARS = 200  # a last user message shorter than this is read with the user turns before it


def message_text(message: Any) -> str:
    """The text of a message: its string content, or its text parts joined by newlines ("" for
    anything else: callers such as the replay upstream read bodies nobody has validated)."""
    if not isinstance(message, dict):
        return ""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def routing_prompt(messages: list[dict[str, Any]]) -> str:
    """The user's own words, most recent last.

    System prompts are left out (often long and shared by every request of an application, they say
    little about which model this request needs), and so are the model's answers. The last user
    message alone is enough when it says what is asked; a short one ("Are you sure?", "Now add
    tests.") is a follow-up that means nothing without the question before it, so earlier user
    turns are read back until there are ``CONTEXT_CHARS`` characters. They are stripped, turns
    without text (an image alone) are skipped, and the rest are joined by single newlines, so
    ``routing_text``'s tail (the last paragraph) holds the end of the earlier question and the
    follow-up together. A conversation without a user turn is read by its last message."""
    turns: list[str] = []
    size = 0
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user":
            text = message_text(m).strip()
            if not text:
                continue
            turns.append(text)
            size += len(text)
            if size >= CONTEXT_CHARS:
                break
    if not turns:
        return message_text(messages[-1])
    return "\n".join(reversed(turns))
