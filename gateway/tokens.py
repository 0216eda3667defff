"""Token counting for cost estimates, with tiktoken's BPE files taken from litellm's package.

tiktoken downloads its BPE file on first use; this machine class has no internet, and litellm
ships the cl100k/o200k files in ``litellm_core_utils/tokenizers``. Pointing ``TIKTOKEN_CACHE_DIR``
there (unless the operator set it) makes counting work offline without importing litellm.
"""

from __future__ import annotations

import importlib.util
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from gateway.wire import message_text

MESSAGE_OVERHEAD_TOKENS = 4  # role and separators per message in OpenAI's chat format
REPLY_PRIMING_TOKENS = 3


def _litellm_tokenizer_dir() -> Path | None:
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "litellm_core_utils" / "tokenizers"
    return path if path.is_dir() else None


@lru_cache(maxsize=1)
def encoding() -> Any:
    import tiktoken

    if "TIKTOKEN_CACHE_DIR" not in os.environ:
        local = _litellm_tokenizer_dir()
        if local is not None:
            os.environ["TIKTOKEN_CACHE_DIR"] = str(local)
    return tiktoken.get_encoding("cl100k_base")


def count_text(text: str) -> int:
    return len(encoding().encode(text, disallowed_special=()))


def count_messages(messages: list[dict[str, Any]]) -> int:
    """Prompt tokens of a chat request, as OpenAI counts them for its cl100k models (an estimate
    for other tokenizers: it only sizes a budget reservation, the bill uses the provider's usage)."""
    total = REPLY_PRIMING_TOKENS
    for m in messages:
        total += MESSAGE_OVERHEAD_TOKENS + count_text(message_text(m))
    return total
