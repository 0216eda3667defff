"""Routing benchmarks in memory: prompts, per-model quality and cost, and splits.

Two loaders, one type. Everything here is plain numpy/pandas; nothing is embedded or trained.

RouterBench subset
    ``<data>/routerbench_subset/routerbench_subset.parquet``: 3,178 prompts x 11 models, 0/1
    correctness per model, ``<model>|total_cost`` in USD, and the RouterDC ``split`` column
    (train 2,225 / test 953), which is used as is.

MMLU-Pro
    ``<data>/mmlu_pro/questions.parquet`` + ``correctness.csv`` (question x model: 1, 0, or empty
    where the model has no record) + ``costs.csv`` (USD per answer). 10,032 questions x 31 models.

    Prompt text: the question as the TIGER-AI-Lab 5-shot CoT evaluation presents it (subject
    header, ``Question:``, ``Options:`` with lettered choices, ``Answer: Let's think step by
    step.``), without the five shots: the shots are the same for every question of a subject, so
    they carry no routing signal beyond the subject named in the header.

    Missing labels (about 1.6% of cells, mostly DeepSeek-Coder-V2) count as wrong (quality 0), as
    in ``ANCHORS.md``; ``Benchmark.missing`` keeps the mask so a caller can choose otherwise.

    Split. ANCHORS scored MMLU-Pro on "2,000 questions that are not shared": the 2,000 questions
    MMLU-Pro's publishers keep back have no labels in this data, so that set cannot be rebuilt.
    Instead: the 2,026 questions of the probe pool (``responses.parquet``, from which model
    descriptors are computed) are always ``train``, so no test question has been seen by a
    descriptor; of the remaining 8,006 questions a seeded draw of 2,000 (seed 0) is ``test`` and
    the rest ``train``. ``split="ood"`` instead trains on the STEM subjects and tests on every
    non-probe question of the other subjects.

AlpacaEval
    ``<data>/alpacaeval/alpacaeval.parquet``: 805 open-ended chat prompts answered by six models of
    the RouterBench pool, graded 1 / 0.5 / 0 against a reference answer (empty: no verdict), split
    train 581 / test 224. Columns are named as in RouterBench, so ``routerbench+alpacaeval`` stacks
    the two over the RouterBench pool's 11 models. The five models AlpacaEval did not run, and the
    few ungraded cells, are **missing** (``Benchmark.missing``), never wrong: routers read labels
    only where they were observed. Their cost is imputed (``_impute_costs``) so every prompt has a
    price for every model; nothing else is.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from router_core.paths import default_data_dir
from router_core.pricing import answer_tokens, list_prices, prompt_tokens, request_costs

logger = logging.getLogger(__name__)

BENCHMARKS = ("routerbench", "mmlu_pro", "alpacaeval", "routerbench+alpacaeval")
MMLU_STEM = frozenset({"biology", "chemistry", "computer science", "engineering", "math", "physics"})
MMLU_TEST_SIZE = 2000

_LETTERS = "ABCDEFGHIJKLMNOP"


@dataclass(frozen=True)
class Benchmark:
    """N prompts x M models. Row order is the loader's and stable across runs."""

    name: str
    prompt_ids: list[str]
    prompts: list[str]  # full prompt text as sent to the model
    models: list[str]
    quality: np.ndarray  # (N, M) float in [0, 1]
    cost: np.ndarray  # (N, M) USD per call
    split: np.ndarray  # (N,) str: "train" | "test" (| "val")
    missing: np.ndarray | None = None  # (N, M) bool: True where quality was not recorded
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # per-prompt arrays, e.g. "category"
    versions: dict[str, str] = field(default_factory=dict)  # data file name -> sha256

    def __post_init__(self) -> None:
        n, m = len(self.prompt_ids), len(self.models)
        if len(self.prompts) != n or self.split.shape != (n,):
            raise ValueError(f"{self.name}: prompts/split do not match {n} prompt ids")
        if self.quality.shape != (n, m) or self.cost.shape != (n, m):
            raise ValueError(f"{self.name}: quality {self.quality.shape} / cost {self.cost.shape} != {(n, m)}")
        if self.missing is not None and self.missing.shape != (n, m):
            raise ValueError(f"{self.name}: missing mask shape {self.missing.shape} != {(n, m)}")
        for key, arr in self.extra.items():
            if len(arr) != n:
                raise ValueError(f"{self.name}: extra[{key!r}] has {len(arr)} rows, expected {n}")

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def subset(self, mask_or_idx: np.ndarray | Sequence[int]) -> Benchmark:
        """Rows selected by a boolean mask or an index array (order follows the index)."""
        idx = np.asarray(mask_or_idx)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise ValueError(f"mask of shape {idx.shape} for {len(self)} prompts")
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64)
        return replace(
            self,
            prompt_ids=[self.prompt_ids[i] for i in idx],
            prompts=[self.prompts[i] for i in idx],
            quality=self.quality[idx],
            cost=self.cost[idx],
            split=self.split[idx],
            missing=None if self.missing is None else self.missing[idx],
            extra={k: v[idx] for k, v in self.extra.items()},
        )

    def models_subset(self, models: Sequence[str]) -> Benchmark:
        """Columns for the named models, in the order given."""
        pos = {m: j for j, m in enumerate(self.models)}
        unknown = [m for m in models if m not in pos]
        if unknown:
            raise KeyError(f"{self.name}: unknown models {unknown}")
        cols = np.array([pos[m] for m in models], dtype=np.int64)
        return replace(
            self,
            models=list(models),
            quality=self.quality[:, cols],
            cost=self.cost[:, cols],
            missing=None if self.missing is None else self.missing[:, cols],
        )

    def scored(self, rows: np.ndarray, missing_as_wrong: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(row indices, model columns) to score ``rows`` (a boolean mask) on: the models with a verdict
        on any of them, and the prompts among them with a verdict from every one of those models (an
        unlabelled pair is missing, not wrong). ``missing_as_wrong``: every row and model, unrecorded
        answers scored as wrong (MMLU-Pro's convention)."""
        if self.missing is None or missing_as_wrong:
            return np.flatnonzero(rows), np.arange(len(self.models))
        cols = np.flatnonzero(~self.missing[rows].all(axis=0))
        return np.flatnonzero(rows & ~self.missing[:, cols].any(axis=1)), cols

    def task_groups(self) -> np.ndarray:
        """(N,) the task family of each prompt: RouterBench ``task``, MMLU-Pro ``category``."""
        return self.extra["task"] if "task" in self.extra else self.extra["category"]

    def split_of(self, name: str) -> Benchmark:
        """Rows whose split equals ``name``."""
        return self.subset(self.split == name)


def load_benchmark(name: str, data_dir: Path | None = None, **opts: Any) -> Benchmark:
    """Load ``routerbench`` or ``mmlu_pro`` from ``data_dir`` (default: the shared data).

    Options for ``mmlu_pro``: ``split`` ("in-dist" | "ood"), ``test_size`` (2000), ``seed`` (0),
    ``missing_as`` (0.0; the quality given to unrecorded cells).
    """
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    if name == "routerbench":
        return _load_routerbench(root, **opts)
    if name == "mmlu_pro":
        return _load_mmlu_pro(root, **opts)
    if name == "alpacaeval":
        return _load_alpacaeval(root, **opts)
    if name == "routerbench+alpacaeval":
        return stack(_load_routerbench(root, **opts), _load_alpacaeval(root, **opts), "routerbench+alpacaeval")
    raise ValueError(f"unknown benchmark {name!r}; expected one of {BENCHMARKS}")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _unique_ids(ids: Sequence[str]) -> list[str]:
    """RouterBench repeats a few sample ids; the second occurrence becomes ``id#1`` and so on."""
    seen: dict[str, int] = {}
    out = []
    for raw in ids:
        k = seen.get(raw, 0)
        seen[raw] = k + 1
        out.append(raw if k == 0 else f"{raw}#{k}")
    return out


def _load_routerbench(root: Path, **opts: Any) -> Benchmark:
    if opts:
        raise TypeError(f"routerbench takes no options, got {sorted(opts)}")
    path = root / "routerbench_subset" / "routerbench_subset.parquet"
    df = pd.read_parquet(path)
    models = [c[: -len("|total_cost")] for c in df.columns if c.endswith("|total_cost")]
    models.sort()
    quality = df[models].to_numpy(dtype=np.float64)
    cost = df[[f"{m}|total_cost" for m in models]].to_numpy(dtype=np.float64)
    missing = np.isnan(quality)
    quality = np.where(missing, 0.0, quality)
    split = df["split"].astype(str).to_numpy()
    return Benchmark(
        name="routerbench",
        prompt_ids=_unique_ids(df["sample_id"].astype(str).tolist()),
        prompts=df["prompt_text"].astype(str).tolist(),
        models=models,
        quality=quality,
        cost=cost,
        split=split,
        missing=missing,
        extra={"task": df["eval_name"].astype(str).to_numpy()},
        versions={path.name: file_sha256(path)},
    )


def _load_alpacaeval(root: Path, **opts: Any) -> Benchmark:
    if opts:
        raise TypeError(f"alpacaeval takes no options, got {sorted(opts)}")
    path = root / "alpacaeval" / "alpacaeval.parquet"
    df = pd.read_parquet(path)
    models = sorted(c[: -len("|total_cost")] for c in df.columns if c.endswith("|total_cost"))
    raw = df[models].to_numpy(dtype=np.float64)
    missing = np.isnan(raw)
    prompts = df["prompt_text"].astype(str).tolist()
    cost = _impute_costs(prompts, models, df[[f"{m}|total_cost" for m in models]].to_numpy(dtype=np.float64))
    return Benchmark(
        name="alpacaeval",
        prompt_ids=_unique_ids(df["sample_id"].astype(str).tolist()),
        prompts=prompts,
        models=models,
        quality=np.where(missing, 0.0, raw),
        cost=cost,
        split=df["split"].astype(str).to_numpy(),
        missing=missing,
        extra={"task": np.full(len(df), "alpacaeval", dtype=object).astype(str)},
        versions={path.name: file_sha256(path)},
    )


def _impute_costs(prompts: Sequence[str], models: Sequence[str], cost: np.ndarray) -> np.ndarray:
    """(N, M) USD with every NaN filled: the prompt's tokens (≈ characters / 4) at the model's list
    input price plus the answer length the recorded models imply for that prompt (their median) at
    its output price. Only models in ``pricing.LIST_PRICES`` can be imputed."""
    out_tok = answer_tokens(prompts, cost, *list_prices(models))  # (N, M), NaN where unrecorded
    typical = np.nan_to_num(np.nanmedian(out_tok, axis=1), nan=256.0)  # (N,)
    return np.where(np.isfinite(cost), cost, request_costs(prompt_tokens(prompts), typical[:, None], models))


def stack(a: Benchmark, b: Benchmark, name: str) -> Benchmark:
    """Rows of ``a`` then ``b`` over ``a``'s models. A model of ``a`` that ``b`` lacks is missing on
    ``b``'s rows, with its cost imputed from list prices; ``b`` may not have models ``a`` lacks."""
    extra_models = [m for m in b.models if m not in a.models]
    if extra_models:
        raise ValueError(f"{b.name} has models {extra_models} that {a.name} lacks")
    n_b = len(b)
    cols = {m: j for j, m in enumerate(b.models)}
    quality = np.zeros((n_b, len(a.models)))
    cost = np.full((n_b, len(a.models)), np.nan)
    missing = np.ones((n_b, len(a.models)), dtype=bool)
    b_missing = b.missing if b.missing is not None else np.zeros(b.quality.shape, dtype=bool)
    for j, m in enumerate(a.models):
        if m in cols:
            quality[:, j], cost[:, j], missing[:, j] = b.quality[:, cols[m]], b.cost[:, cols[m]], b_missing[:, cols[m]]
    cost = _impute_costs(b.prompts, a.models, cost)
    a_missing = a.missing if a.missing is not None else np.zeros(a.quality.shape, dtype=bool)
    return Benchmark(
        name=name,
        prompt_ids=[*a.prompt_ids, *b.prompt_ids],
        prompts=[*a.prompts, *b.prompts],
        models=list(a.models),
        quality=np.concatenate([a.quality, quality]),
        cost=np.concatenate([a.cost, cost]),
        split=np.concatenate([a.split, b.split]).astype(str),
        missing=np.concatenate([a_missing, missing]),
        extra={"task": np.concatenate([a.task_groups(), b.task_groups()]).astype(str),
               "source": np.array([a.name] * len(a) + [b.name] * n_b)},
        versions={**{f"{a.name}/{k}": v for k, v in a.versions.items()},
                  **{f"{b.name}/{k}": v for k, v in b.versions.items()}},
    )


def mmlu_pro_prompt(question: str, options: Sequence[str], category: str) -> str:
    """The question as the MMLU-Pro 5-shot CoT evaluation sends it, minus the shots."""
    lines = [
        f"The following are multiple choice questions (with answers) about {category}. Think step by"
        ' step and then finish your answer with "the answer is (X)" where X is the correct letter choice.',
        "",
        f"Question: {question}",
        "Options:",
    ]
    lines += [f"{_LETTERS[i]}. {opt}" for i, opt in enumerate(options)]
    lines.append("Answer: Let's think step by step.")
    return "\n".join(lines)


def _load_mmlu_pro(
    root: Path,
    split: str = "in-dist",
    test_size: int = MMLU_TEST_SIZE,
    seed: int = 0,
    missing_as: float = 0.0,
) -> Benchmark:
    base = root / "mmlu_pro"
    files = {n: base / n for n in ("questions.parquet", "correctness.csv", "costs.csv", "responses.parquet")}
    q = pd.read_parquet(files["questions.parquet"])
    corr = pd.read_csv(files["correctness.csv"]).set_index("question_id")
    costs = pd.read_csv(files["costs.csv"]).set_index("question_id")
    probe_ids = set(pd.read_parquet(files["responses.parquet"], columns=["question_id"])["question_id"])

    models = sorted(corr.columns)
    qids = q["question_id"].to_numpy()
    corr = corr.reindex(index=qids, columns=models)
    costs = costs.reindex(index=qids, columns=models)
    raw = corr.to_numpy(dtype=np.float64)
    missing = np.isnan(raw)
    quality = np.where(missing, missing_as, raw)
    cost = costs.to_numpy(dtype=np.float64)
    if np.isnan(cost).any():
        raise ValueError(f"{files['costs.csv']}: {int(np.isnan(cost).sum())} missing costs")

    category = q["category"].astype(str).to_numpy()
    is_probe = np.array([i in probe_ids for i in qids])
    split_arr = _mmlu_split(category, is_probe, split, test_size, seed)

    prompts = [
        mmlu_pro_prompt(str(qq), json.loads(opts), str(cat))
        for qq, opts, cat in zip(q["question"], q["options"], q["category"], strict=True)
    ]
    return Benchmark(
        name="mmlu_pro",
        prompt_ids=[str(i) for i in qids],
        prompts=prompts,
        models=models,
        quality=quality,
        cost=cost,
        split=split_arr,
        missing=missing,
        extra={"category": category, "probe": is_probe},
        versions={n: file_sha256(p) for n, p in files.items()},
    )


def _mmlu_split(category: np.ndarray, is_probe: np.ndarray, split: str, test_size: int, seed: int) -> np.ndarray:
    n = len(category)
    out = np.full(n, "train", dtype=object)
    if split == "in-dist":
        pool = np.flatnonzero(~is_probe)
        if test_size > len(pool):
            raise ValueError(f"test_size {test_size} > {len(pool)} non-probe questions")
        rng = np.random.default_rng(seed)
        out[rng.choice(pool, size=test_size, replace=False)] = "test"
    elif split == "ood":
        stem = np.isin(category, list(MMLU_STEM))
        out[~stem & ~is_probe] = "test"
        out[~stem & is_probe] = "probe"  # neither trained on (not STEM) nor scored (seen by descriptors)
    else:
        raise ValueError(f"unknown MMLU-Pro split {split!r}; expected 'in-dist' or 'ood'")
    return out.astype(str)


def unseen_model_split(models: Sequence[str], frac_seen: float = 2 / 3, seed: int = 0) -> tuple[list[str], list[str]]:
    """Seeded partition of model names into (seen, unseen); seen gets round(frac_seen * M)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(models))
    k = int(round(frac_seen * len(models)))
    seen = sorted(models[i] for i in order[:k])
    unseen = sorted(models[i] for i in order[k:])
    return seen, unseen


def versions_of(bench: Benchmark) -> dict[str, str]:
    """Data versions for an artifact: ``{benchmark/file: sha256}``."""
    return {f"{bench.name}/{k}": v for k, v in bench.versions.items()}


def unwrap_recorded(raw: Any, sep: str = "\n") -> str | None:
    """A recorded answer as text. RouterBench stores the repr of a list (``"['A']"``): unwrapped,
    items joined by ``sep`` (the replay upstream joins with "" — what the recorded costs counted —
    descriptors with newlines). None / NaN -> None; text that is not a list literal is returned as is."""
    if raw is None or (isinstance(raw, float) and raw != raw):
        return None
    text = str(raw)
    if text.startswith("[") and text.endswith("]"):
        import ast

        try:
            items = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text
        if isinstance(items, list):
            return sep.join(str(x) for x in items)
    return text
