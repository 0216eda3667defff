"""Graded probes: the router's probe prompts that have a reference answer, and the grader.

A kernel-shrink router's descriptor of a model is its graded answers on the router's probe prompts
(1 / 0, NaN where it was not asked). A model the router has never seen gets one by answering a
seeded, stratified subset of the probes that can be graded automatically: multiple-choice prompts
whose answer is a letter. The artifact ships those probes (``graded_probes.json.gz``: per probe its
row in the artifact, task, gold letter and the full prompt as sent), so onboarding needs no
benchmark data at serving time.

Which probes have a reference answer. In the RouterBench subset, ``arc-challenge`` (choices A–D)
and ``winogrande`` (A–B) ask for one letter; ``mbpp`` (code, graded by running tests) and AlpacaEval
(open chat, graded by a judge model) have no answer a gateway could check. The data carries no gold
column, so the gold letter is recovered from the recorded, graded answers of the 11 models: the
letter every model graded correct gave (they never disagree: 0 conflicts; 2,732 prompts have a gold letter), or, when
none was correct, the only choice no model gave wrongly. 2,707 of the default artifact's 3,937 probe
prompts have one; grading the recorded answers with ``grade`` then agrees with the recorded grades
on 99.5 % of (prompt, model) cells.

Grader (``letter-v1``, as the MMLU-Pro evaluation extracts answers): ``answer is (X)``, then
``Answer: X``, then the first standalone letter among the task's choices. No letter: wrong, and
counted as ungradable (``GradeReport``).

    python -m router_core.graded --artifact router_core/artifacts/default-kernel-shrink
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from router_core.paths import write_atomic
from router_core.types import DESCRIPTOR_VERSION, DescriptorSpec

log = logging.getLogger(__name__)

GRADER = "letter-v1"
GRADED_PROBES_FILE = "graded_probes.json.gz"
GRADED_FORMAT = 1
DEFAULT_N_PROBES = 200
# RouterBench tasks whose prompts ask for one letter, and the letters they offer.
LETTER_TASKS: dict[str, str] = {"arc-challenge": "ABCD", "winogrande": "AB"}


def extract_letter(text: str | None, choices: str = "ABCDEFGHIJ") -> str | None:
    """The answer letter of ``text`` (module docstring), or None when it has none."""
    if not text:
        return None
    letters = f"[{re.escape(choices)}]"
    for pattern in (rf"answer is \(?({letters})\)?", rf"[aA]nswer:\s*\(?({letters})\b", rf"\b({letters})\b"):
        m = re.search(pattern, text)
        if m:
            return m.group(1)
    return None


@dataclass
class GradeReport:
    """What grading a model's answers found: asked, answered, correct, ungradable (no letter)."""

    asked: int = 0
    answered: int = 0
    correct: int = 0
    ungradable: int = 0
    ungradable_ids: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        return {"asked": self.asked, "answered": self.answered, "correct": self.correct,
                "ungradable": self.ungradable, "ungradable_ids": self.ungradable_ids[:20],
                "accuracy": round(self.correct / self.answered, 4) if self.answered else None}


@dataclass(frozen=True)
class GradedProbes:
    """The gradable probe prompts of one router artifact (the file the artifact ships)."""

    artifact_probes: int  # length of the descriptor vector: all probe prompts of the artifact
    rows: tuple[int, ...]  # each gradable probe's row among them
    ids: tuple[str, ...]
    tasks: tuple[str, ...]
    gold: tuple[str, ...]
    prompts: tuple[str, ...]  # the full prompt, as the recorded answers answered it
    formats: dict[str, str] = field(default_factory=dict)  # task -> answer choices

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def id(self) -> str:
        """``graded-n<N>-<12 hex>`` over everything that defines the set."""
        blob = json.dumps([GRADED_FORMAT, GRADER, self.artifact_probes, self.rows, self.ids, self.tasks, self.gold,
                           self.prompts, sorted(self.formats.items())], ensure_ascii=True)
        return f"graded-n{len(self)}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"

    def spec(self, probes_file: str | None = None) -> DescriptorSpec:
        return DescriptorSpec("graded", self.id, GRADER, DESCRIPTOR_VERSION,
                              {"answer_format": "letter", "probes": self.artifact_probes}, probes_file)

    def select(self, n: int, seed: int) -> list[int]:
        """A seeded draw of ``n`` probes (indices into this set), stratified by task (largest
        remainder), in a seeded random order: a run stopped by a cost cap still holds a random subset."""
        rng = np.random.default_rng(seed)
        n = min(n, len(self))
        tasks = sorted(set(self.tasks))
        members = {t: np.flatnonzero(np.array(self.tasks) == t) for t in tasks}
        share = np.array([len(members[t]) for t in tasks], dtype=np.float64) * n / len(self)
        take = np.floor(share).astype(int)
        for i in np.argsort(-(share - take), kind="stable")[: n - int(take.sum())]:
            take[i] += 1
        chosen = np.concatenate([rng.choice(members[t], size=k, replace=False)
                                 for t, k in zip(tasks, take, strict=True)])
        return [int(i) for i in rng.permutation(chosen)]

    def grade(self, picks: Sequence[int], answers: Sequence[str | None]) -> tuple[list[float], GradeReport]:
        """The graded descriptor vector (``artifact_probes`` long, NaN where not asked or not
        answered) from the answers to ``picks``. An answer without a letter is wrong (0)."""
        vector = [float("nan")] * self.artifact_probes
        report = GradeReport(asked=len(picks))
        for i, text in zip(picks, answers, strict=True):
            if text is None:
                continue
            report.answered += 1
            letter = extract_letter(text, self.formats.get(self.tasks[i], "ABCDEFGHIJ"))
            if letter is None:
                report.ungradable += 1
                report.ungradable_ids.append(self.ids[i])
            ok = letter == self.gold[i]
            report.correct += ok
            vector[self.rows[i]] = 1.0 if ok else 0.0
        return vector, report

    def save(self, path: str | Path) -> None:
        doc = {"format": GRADED_FORMAT, "id": self.id, "grader": GRADER, "artifact_probes": self.artifact_probes,
               "formats": self.formats, "rows": list(self.rows), "ids": list(self.ids), "tasks": list(self.tasks),
               "gold": list(self.gold), "prompts": list(self.prompts)}
        write_atomic(path, gzip.compress(json.dumps(doc, ensure_ascii=False).encode(), 9, mtime=0))

    @classmethod
    def load(cls, path: str | Path) -> GradedProbes:
        raw = json.loads(gzip.decompress(Path(path).read_bytes()))
        if raw.get("format") != GRADED_FORMAT or raw.get("grader") != GRADER:
            raise ValueError(f"graded probes {path}: format {raw.get('format')} / grader {raw.get('grader')}; "
                             f"this code reads {GRADED_FORMAT} / {GRADER}")
        out = cls(int(raw["artifact_probes"]), tuple(raw["rows"]), tuple(raw["ids"]), tuple(raw["tasks"]),
                  tuple(raw["gold"]), tuple(raw["prompts"]), dict(raw["formats"]))
        if out.id != raw["id"]:
            raise ValueError(f"graded probes {path}: content does not match its id {raw['id']}")
        return out


def routerbench_gold(data_dir: Path | None = None) -> dict[str, tuple[str, str, str]]:
    """prompt id -> (task, gold letter, prompt) for the RouterBench prompts whose gold letter the
    recorded grades determine (module docstring)."""
    import pandas as pd

    from router_core.data import _unique_ids, unwrap_recorded
    from router_core.paths import default_data_dir

    df = pd.read_parquet((data_dir or default_data_dir()) / "routerbench_subset" / "routerbench_subset.parquet")
    models = sorted(c[: -len("|total_cost")] for c in df.columns if c.endswith("|total_cost"))
    out: dict[str, tuple[str, str, str]] = {}
    conflicts = 0
    for pid, (_, row) in zip(_unique_ids(df["sample_id"].astype(str).tolist()), df.iterrows(), strict=True):
        choices = LETTER_TASKS.get(str(row["eval_name"]))
        if choices is None:
            continue
        right: Counter[str] = Counter()
        wrong: set[str] = set()
        for m in models:
            letter = extract_letter(unwrap_recorded(row[f"{m}|model_response"], ""), choices)
            if letter is not None and row[m] == 1:
                right[letter] += 1
            elif letter is not None and row[m] == 0:
                wrong.add(letter)
        conflicts += len(right) > 1
        rest = [c for c in choices if c not in wrong]
        gold = right.most_common(1)[0][0] if right else (rest[0] if len(rest) == 1 else None)
        if gold is not None:
            out[pid] = (str(row["eval_name"]), gold, str(row["prompt_text"]))
    log.info("gold letters for %d RouterBench prompts (%d with conflicting correct answers)", len(out), conflicts)
    return out


def build_graded_probes(probe_ids: Sequence[str], data_dir: Path | None = None) -> GradedProbes:
    """The gradable probes among an artifact's ``probe_ids``."""
    gold = routerbench_gold(data_dir)
    rows = [i for i, pid in enumerate(probe_ids) if pid in gold]
    return GradedProbes(len(probe_ids), tuple(rows), tuple(probe_ids[i] for i in rows),
                        tuple(gold[probe_ids[i]][0] for i in rows), tuple(gold[probe_ids[i]][1] for i in rows),
                        tuple(gold[probe_ids[i]][2] for i in rows), dict(LETTER_TASKS))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Add the graded probe file to a kernel-shrink artifact.")
    parser.add_argument("--artifact", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = json.loads((args.artifact / "config.json").read_text())
    probes = build_graded_probes(config["probe_ids"], args.data)
    probes.save(args.artifact / GRADED_PROBES_FILE)
    log.info("%s: %d graded probes (%s)", args.artifact / GRADED_PROBES_FILE, len(probes), probes.id)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
