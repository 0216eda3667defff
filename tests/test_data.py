"""Loaders on the real shared data: shapes, splits, no NaN, the documented split rules."""

from __future__ import annotations

import numpy as np
import pytest

from router_core.data import Benchmark, load_benchmark, mmlu_pro_prompt, unseen_model_split

pytestmark = pytest.mark.usefixtures("benchmark_data_dir")  # skipped, with the reason, without the data


@pytest.fixture(scope="module")
def routerbench() -> Benchmark:
    return load_benchmark("routerbench")


@pytest.fixture(scope="module")
def mmlu() -> Benchmark:
    return load_benchmark("mmlu_pro")


def _check_arrays(b: Benchmark) -> None:
    assert not np.isnan(b.quality).any() and not np.isnan(b.cost).any()
    assert ((b.quality >= 0) & (b.quality <= 1)).all()
    assert (b.cost > 0).all()
    assert len(set(b.prompt_ids)) == len(b)
    assert b.missing is not None and b.missing.dtype == bool


def test_routerbench_shapes_and_split(routerbench: Benchmark) -> None:
    b = routerbench
    assert b.quality.shape == (3178, 11) and len(b.models) == 11
    _check_arrays(b)
    assert (b.split == "train").sum() == 2225 and (b.split == "test").sum() == 953
    best = b.models[int(b.quality.mean(0).argmax())]
    assert best == "gpt-4-1106-preview"
    assert set(b.extra["task"]) == {"arc-challenge", "winogrande", "mbpp"}
    assert "routerbench_subset.parquet" in b.versions


def test_mmlu_pro_shapes_split_and_missing(mmlu: Benchmark) -> None:
    b = mmlu
    assert b.quality.shape == (10032, 31)
    _check_arrays(b)
    test = b.split == "test"
    assert test.sum() == 2000 and set(np.unique(b.split)) == {"train", "test"}
    assert not (test & b.extra["probe"]).any()  # descriptors never saw a test question
    assert b.missing is not None and 0 < b.missing.sum() < 0.05 * b.missing.size
    assert (b.quality[b.missing] == 0).all()  # documented: missing counts as wrong
    assert b.prompts[0].startswith("The following are multiple choice questions")
    assert len(b.versions) == 4


def test_mmlu_pro_split_is_seeded(mmlu: Benchmark) -> None:
    again = load_benchmark("mmlu_pro", seed=0)
    other = load_benchmark("mmlu_pro", seed=1)
    assert (again.split == mmlu.split).all()
    assert (other.split != mmlu.split).any()


def test_mmlu_pro_ood_split() -> None:
    b = load_benchmark("mmlu_pro", split="ood")
    train_cats = set(b.extra["category"][b.split == "train"])
    test_cats = set(b.extra["category"][b.split == "test"])
    assert train_cats == {"biology", "chemistry", "computer science", "engineering", "math", "physics"}
    assert not train_cats & test_cats


def test_subset_and_models_subset(routerbench: Benchmark) -> None:
    test = routerbench.split_of("test")
    assert len(test) == 953 and (test.split == "test").all()
    picked = routerbench.subset([5, 1])
    assert picked.prompt_ids == [routerbench.prompt_ids[5], routerbench.prompt_ids[1]]
    two = routerbench.models_subset(["gpt-4-1106-preview", "claude-v2"])
    assert two.quality.shape == (3178, 2)
    np.testing.assert_array_equal(two.cost[:, 1], routerbench.cost[:, routerbench.models.index("claude-v2")])
    with pytest.raises(KeyError):
        routerbench.models_subset(["nope"])


def test_unseen_model_split_partitions() -> None:
    models = [f"m{i}" for i in range(31)]
    seen, unseen = unseen_model_split(models, seed=0)
    assert len(seen) == 21 and len(unseen) == 10 and not set(seen) & set(unseen)
    assert unseen_model_split(models, seed=0) == (seen, unseen)


def test_prompt_format_letters() -> None:
    text = mmlu_pro_prompt("2+2?", ["3", "4"], "math")
    assert "Question: 2+2?\nOptions:\nA. 3\nB. 4\nAnswer: Let's think step by step." in text


def test_unknown_benchmark() -> None:
    with pytest.raises(ValueError):
        load_benchmark("nope")
