"""What the local upstream answers: recorded RouterBench answers, with prices and token counts that
reproduce their recorded cost, or labelled synthetic ones (MMLU-Pro: ``gateway.replay_mmlu``).

The recorded ``<model>|total_cost`` of every row is exactly
``(prompt_tokens * in_price + completion_tokens * out_price) / 1e6`` with tiktoken ``cl100k_base``
counts of ``prompt_text`` and of the recorded answer (the string inside the stored list repr
``"['A']"``) and the models' list prices below: the residual is float rounding (< 3e-16 relative)
on all 3,178 × 11 cells. So a replayed answer's usage, billed at ``REPLAY_PRICES``, reproduces the
recorded cost.

The package ships those columns for every row as ``gateway/data/routerbench_replay.parquet``
(``BUNDLED_REPLAY``, ~1.2 MB, built by ``cscr replay-set``), so the upstream needs no benchmark data.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import tiktoken

from gateway.tokens import load_cl100k
from router_core.conversation import message_text
from router_core.data import unwrap_recorded

logger = logging.getLogger(__name__)

# USD per 1M (input, output) tokens: provider list prices at RouterBench's recording time (open
# models at Together's serverless price). A non-negative least-squares fit on the data recovers them
# exactly; see the module docstring.
REPLAY_PRICES: dict[str, tuple[float, float]] = {
    "WizardLM/WizardLM-13B-V1.2": (0.3, 0.3),
    "claude-instant-v1": (0.8, 2.4),
    "claude-v1": (8.0, 24.0),
    "claude-v2": (8.0, 24.0),
    "gpt-3.5-turbo-1106": (1.0, 2.0),
    "gpt-4-1106-preview": (10.0, 30.0),
    "meta/code-llama-instruct-34b-chat": (0.776, 0.776),
    "meta/llama-2-70b-chat": (0.9, 0.9),
    "mistralai/mistral-7b-chat": (0.2, 0.2),
    "mistralai/mixtral-8x7b-chat": (0.6, 0.6),
    "zero-one-ai/Yi-34B-Chat": (0.8, 0.8),
}
REPLAY_MODELS: tuple[str, ...] = tuple(REPLAY_PRICES)

# Every recorded answer and cost of the 11 models, with the prompt, its id, task and split: what the
# upstream replays and the tests pick prompts from. Rebuilt from the full data by ``cscr replay-set``.
BUNDLED_REPLAY = Path(__file__).resolve().parent / "data" / "routerbench_replay.parquet"

SYNTHETIC_TAG = "[synthetic reply from replay upstream: {reason}]"

_SYNTHETIC_WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar "
    "papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu"
).split()


def replay_columns(extra: tuple[str, ...] = ()) -> list[str]:
    """The columns replay reads: ``sample_id``, ``prompt_text``, ``extra``, then each model's
    ``|model_response`` and ``|total_cost``."""
    names = ["sample_id", "prompt_text", *extra]
    for m in REPLAY_MODELS:
        names += [f"{m}|model_response", f"{m}|total_cost"]
    return names


def normalise_prompt(text: str) -> str:
    """The lookup key of a prompt: the text with surrounding whitespace stripped."""
    return text.strip()


def model_candidates(model: str) -> list[str]:
    """``model`` then the same name with leading ``provider/`` segments stripped one at a time, so
    ``openai/gpt-4-1106-preview`` and ``together_ai/meta/llama-2-70b-chat`` find their columns."""
    parts = model.split("/")
    return ["/".join(parts[i:]) for i in range(len(parts))]


def resolve_model(model: str) -> str | None:
    """The RouterBench column a request's model name selects, or None."""
    return next((m for m in model_candidates(model) if m in REPLAY_PRICES), None)


def recorded_completion_tokens(cost: float, prompt_tokens: int, prices: tuple[float, float], least: int = 1) -> int:
    """Completion tokens that make ``prompt_tokens`` and the result, billed at ``prices``, cost
    ``cost`` (at least ``least``: MMLU-Pro records empty answers)."""
    in_price, out_price = prices
    if out_price <= 0:
        return least
    return max(least, round((cost * 1e6 - prompt_tokens * in_price) / out_price))


@dataclass(frozen=True)
class Recorded:
    """One recorded answer of a benchmark model (or, ``stand_in``, its recorded length only)."""

    sample_id: str
    model: str
    content: str
    cost_usd: float
    prompt_tokens: int  # tokens of the recorded prompt, as billed
    completion_tokens: int  # derived from the recorded cost (RouterBench: equal to the answer's token count)
    stand_in: bool = False  # True: the data has the answer's length but not its text; ``content`` says so
    chars: int | None = None  # the recorded answer's length in characters, where the data states it


class ReplaySource(Protocol):
    """What ``compose_reply`` reads: a benchmark's recorded answers, looked up by prompt and model."""

    label: str  # named in synthetic replies: "prompt not in <label>"
    encoding: tiktoken.Encoding

    def __len__(self) -> int: ...

    def models(self) -> list[str]:
        """The model columns it can answer for, as ``GET /v1/models`` lists them."""
        ...

    def resolve(self, model: str) -> str | None:
        """The column a request's model name selects, or None."""
        ...

    def lookup(self, prompt: str, model: str) -> Recorded | None:
        """The answer of column ``model`` to ``prompt``, or None for a prompt it does not hold."""
        ...


class ReplayTable:
    """Recorded RouterBench answers keyed by normalised prompt text. Answers are parsed on lookup."""

    label = "RouterBench subset"

    def __init__(
        self,
        rows: dict[str, int],
        sample_ids: list[str],
        columns: dict[str, tuple[list[str], list[float]]],
        encoding: tiktoken.Encoding,
    ) -> None:
        self._rows = rows
        self._sample_ids = sample_ids
        self._columns = columns  # model -> (raw responses, costs)
        self.encoding = encoding

    @classmethod
    def load(cls, parquet: Path, encoding: tiktoken.Encoding | None = None) -> ReplayTable:
        """Read ``BUNDLED_REPLAY`` or the full RouterBench subset parquet
        (``<data>/routerbench_subset/routerbench_subset.parquet``): both hold ``replay_columns()``."""
        import pandas as pd

        frame = pd.read_parquet(parquet, columns=replay_columns())
        rows: dict[str, int] = {}
        for i, text in enumerate(frame["prompt_text"].tolist()):
            rows.setdefault(normalise_prompt(text), i)  # two prompts repeat; the first row wins
        columns = {
            m: (frame[f"{m}|model_response"].tolist(), [float(c) for c in frame[f"{m}|total_cost"]])
            for m in REPLAY_MODELS
        }
        logger.info("replay: %d prompts x %d models from %s", len(rows), len(columns), parquet)
        return cls(rows, [str(s) for s in frame["sample_id"]], columns, encoding or load_cl100k())

    def __len__(self) -> int:
        return len(self._rows)

    def models(self) -> list[str]:
        return list(REPLAY_MODELS)

    def resolve(self, model: str) -> str | None:
        return resolve_model(model)

    def prompts(self) -> list[str]:
        """Every lookup key (normalised prompt text), in row order."""
        return list(self._rows)

    def count(self, text: str) -> int:
        return len(self.encoding.encode(text, disallowed_special=()))

    def lookup(self, prompt: str, model: str) -> Recorded | None:
        """The recorded answer of column ``model`` (exact column name) to ``prompt``, or None."""
        key = normalise_prompt(prompt)
        row = self._rows.get(key)
        if row is None or model not in self._columns:
            return None
        responses, costs = self._columns[model]
        content = _parse_response(responses[row])
        prompt_tokens = self.count(key)
        cost = costs[row]
        return Recorded(
            sample_id=self._sample_ids[row],
            model=model,
            content=content,
            cost_usd=cost,
            prompt_tokens=prompt_tokens,
            completion_tokens=recorded_completion_tokens(cost, prompt_tokens, REPLAY_PRICES[model]),
        )


def _parse_response(raw: Any) -> str:
    """RouterBench stores each answer as the repr of a one-element list: ``"['A']"``; items are
    joined with "" (what the recorded cost counted)."""
    text = unwrap_recorded(raw, "")
    return str(raw) if text is None else text


@dataclass(frozen=True)
class Reply:
    """One answer, before it is shaped into a completion or a stream."""

    content: str | None
    tool_call: dict[str, Any] | None
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int  # per choice
    headers: dict[str, str]


def compose_reply(table: ReplaySource | None, encoding: tiktoken.Encoding, body: dict[str, Any], model: str) -> Reply:
    """The answer to a validated request: recorded (or a labelled stand-in of the recorded length)
    if the last user message is a prompt of ``table`` and ``model`` names a column, else synthetic;
    then tools, ``stop`` and the token limit.
    ``body`` must be a validated chat request (``messages`` a list)."""

    def count(text: str) -> int:
        return len(encoding.encode(text, disallowed_special=()))

    messages: list[Any] = body["messages"]
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    prompt = message_text(users[-1]) if users else ""
    column = table.resolve(model) if table is not None else None
    recorded = table.lookup(prompt, column) if table is not None and column else None
    others = sum(count(message_text(m)) for m in messages if not (users and m is users[-1]))
    headers: dict[str, str] = {}
    if recorded is not None:
        content: str = recorded.content
        prompt_tokens = recorded.prompt_tokens + others
        completion_tokens = recorded.completion_tokens
        headers = {
            "x-replay": "stand-in" if recorded.stand_in else "recorded",
            "x-replay-model": recorded.model,
            "x-replay-sample-id": recorded.sample_id,
            "x-replay-cost-usd": repr(recorded.cost_usd),
        }
        if recorded.chars is not None:
            headers["x-replay-chars"] = str(recorded.chars)
    else:
        if table is None:
            reason = "replay disabled"
        elif column is None:
            reason = f"model {model!r} not in {table.label}"
        else:
            reason = f"prompt not in {table.label}"
        content = synthetic_content(prompt, model, reason)
        prompt_tokens = (count(prompt) if users else 0) + others
        completion_tokens = count(content)
        headers = {"x-replay": "synthetic", "x-replay-reason": reason}

    tool_name = forced_tool(body)
    if tool_name is not None:
        call_id = "call_" + hashlib.sha256(f"{model}{prompt}{tool_name}".encode()).hexdigest()[:24]
        call = {"id": call_id, "type": "function", "function": {"name": tool_name, "arguments": "{}"}}
        return Reply(None, call, "tool_calls", prompt_tokens, count(tool_name) + 1, headers)

    finish = "stop"
    stops = body.get("stop")
    stops = [stops] if isinstance(stops, str) else [s for s in stops or [] if isinstance(s, str) and s]
    cut_at = min((i for i in (content.find(s) for s in stops) if i >= 0), default=-1)
    if cut_at >= 0:
        content = content[:cut_at]
        completion_tokens = count(content)
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if isinstance(limit, int) and 0 < limit < completion_tokens:
        content = encoding.decode(encoding.encode(content, disallowed_special=())[:limit])
        completion_tokens, finish = limit, "length"
    return Reply(content, None, finish, prompt_tokens, completion_tokens, headers)


def forced_tool(body: dict[str, Any]) -> str | None:
    """The function name ``tool_choice`` forces (a named function, or ``required``: the first tool)."""
    tools = body.get("tools")
    if not isinstance(tools, list) or not tools:
        return None
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        return str(name) if name else None
    if choice == "required":
        first = tools[0] if isinstance(tools[0], dict) else {}
        return str((first.get("function") or {}).get("name") or "tool")
    return None


def synthetic_content(prompt: str, model: str, reason: str) -> str:
    """A clearly labelled, deterministic stand-in answer (same prompt and model, same text)."""
    words = synthetic_words(f"{model}\n{prompt}", 12)
    return f"{SYNTHETIC_TAG.format(reason=reason)} {model} says: {words}."


def synthetic_words(seed: str, n: int) -> str:
    """``n`` filler words chosen by a hash of ``seed`` (deterministic)."""
    digest = hashlib.sha256(seed.encode()).digest()
    return " ".join(_SYNTHETIC_WORDS[b % len(_SYNTHETIC_WORDS)] for b in digest[:n])
