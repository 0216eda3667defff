"""A cheating reference that bounds what knowing a test item's difficulty would buy.

``cscr eval --reference-models`` moves a seeded third of the models out of the routing pool (the
same third as the unseen-models split). They are never routed to; they serve as *references*:
their grades on each test prompt are shown to the ``reference-oracle-*`` routers, and to no other.
Every router, cheating or not, then routes among the remaining models on the same prompts and the
same cost grid, so the rows of one table compare directly.

A reference model's grade on the very prompt being routed is information no real router has
before the call. It carries what the prompt embedding does not: how hard *this* item is (not its
task or subject) and which kind of model gets it right. The reference oracle therefore answers
"what would perfect item-difficulty knowledge buy over the best prompt router", which is what the
router bar of issue 3 asks of prompt routers.

p̂_ij for pool model j is a per-model classifier fitted on the training prompts, whose features are

    [logit of our router's p̂_ij (``variants.KernelShrinkRouter``), the reference models' grades on
     prompt i, one-hot task / subject of prompt i]

Our router's p̂ on the training prompts is cross-fitted (4 folds), so the classifier learns how
much to trust it from honest, held-out predictions. Two learners: ``lr`` (logistic regression,
smooth and well calibrated) and ``gbm`` (gradient-boosted trees, interactions between grades and
task). Costs are our router's per-prompt estimate (``variants.LengthCostModel``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from router_core.evaluate import Setup

LEARNERS = ("lr", "gbm")
CROSS_FOLDS = 4


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-3, 1 - 1e-3)
    return np.log(p / (1 - p))


def _onehot(groups: np.ndarray, names: np.ndarray) -> np.ndarray:
    return (groups[:, None] == names[None, :]).astype(np.float64)


def _classifier(learner: str, seed: int) -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    if learner == "lr":
        return LogisticRegression(max_iter=2000)
    if learner == "gbm":
        return HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, random_state=seed)
    raise ValueError(f"unknown learner {learner!r}; expected one of {LEARNERS}")


def cross_fitted(s: Setup, hp: dict[str, float], seed: int) -> np.ndarray:
    """Our router's p̂ on the training prompts, each fold predicted by a router fitted on the others."""
    from router_core.variants import KernelShrinkRouter, random_folds

    fold = random_folds(len(s.train), CROSS_FOLDS, seed)
    out = np.zeros(s.train.quality.shape)
    for f in range(CROSS_FOLDS):
        r = KernelShrinkRouter.from_hyperparams(hp, seed)
        r.fit(s.train_emb[fold != f], s.train.quality[fold != f])
        out[fold == f] = r.predict(s.train_emb[fold == f])
    return out


def reference_oracle(
    s: Setup, learner: str, ours_train: np.ndarray, ours_test: np.ndarray, seed: int = 0
) -> np.ndarray:
    """p̂ (N_test, M) of the pool models from the reference models' grades on each prompt (cheats)."""
    if s.reference_train is None or s.reference_test is None:
        raise ValueError("the reference oracle needs --reference-models")
    names = np.unique(s.bench.task_groups())
    shared_tr = np.hstack([s.reference_train, _onehot(s.train.task_groups(), names)])
    shared_te = np.hstack([s.reference_test, _onehot(s.test.task_groups(), names)])
    out = np.zeros((len(s.test), len(s.bench.models)))
    for j in range(len(s.bench.models)):
        y = s.train.quality[:, j] > 0.5
        if y.all() or not y.any():  # one class in training: nothing to learn
            out[:, j] = float(y.mean())
            continue
        x_tr = np.hstack([_logit(ours_train[:, [j]]), shared_tr])
        x_te = np.hstack([_logit(ours_test[:, [j]]), shared_te])
        out[:, j] = _classifier(learner, seed).fit(x_tr, y).predict_proba(x_te)[:, 1]
    return out
