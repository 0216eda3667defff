"""Render the generated blocks of README.md and docs/*.md from the result files in docs/results/.

    python bench/render_docs.py           # rewrite every stale block in place
    python bench/render_docs.py --check   # exit 1 and name the stale blocks; write nothing

A block is the text between two markers, which stay in the file:

    <!-- generated: NAME (from docs/results/...json; regenerate: python bench/render_docs.py) -->
    ...Markdown rendered by RENDERERS[NAME]...
    <!-- end generated: NAME -->

A number in a generated block therefore always matches its result file; the file is written by the
benchmark or evaluation command its caption names. tests/test_docs_fresh.py runs the check so a
hand edit of a block, or a new result file without a re-render, fails CI.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = Path("docs/results")
BLOCK = re.compile(r"(<!-- generated: (?P<name>[\w-]+)[^>]*-->\n)(?P<body>.*?)(<!-- end generated: (?P=name) -->)",
                   re.DOTALL)


class RenderError(Exception):
    """A marker names no renderer, or a result file is missing or lacks a field."""


def load(root: Path, rel: str) -> dict[str, Any]:
    path = root / RESULTS / rel
    if not path.exists():
        raise RenderError(f"{path}: result file missing")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def num(x: float, digits: int = 1) -> str:
    return "—" if x != x else f"{x:,.{digits}f}"


def machine_caption(results: dict[str, Any]) -> str:
    m = results.get("machine", {})
    text = f"{m.get('cpus', '?')} CPU cores"
    if "load_avg_at_end" in m:  # measured on a shared box: the reader must know how loaded it was
        return text + f", load average {m['load_avg_at_end'][0]:.1f} at the end of the run (other jobs running)"
    return text + ", load average not recorded"


# --- gateway overhead (bench/gateway_bench.py) -----------------------------------------------

GATEWAY_RESULT = "gateway_bench_redis_budget.json"
LABELS = {"direct": "direct to the upstream", "gateway-named": "our gateway, named provider",
          "gateway-auto": "our gateway, `auto`", "litellm-proxy": "LiteLLM proxy 1.106.2"}


def perf_table(root: Path) -> str:
    r = load(root, GATEWAY_RESULT)
    by_key = {(s["target"], s["stream"], s["concurrency"]): s for s in r["scenarios"]}
    rows = ["| path | mode, clients | req/s | added latency p50 / p99 | server CPU per request | peak RSS |",
            "|---|---|---|---|---|---|"]
    for s in r["scenarios"]:
        d = by_key.get(("direct", s["stream"], s["concurrency"]))
        added = "" if d is None or s["target"] == "direct" else (
            f"+{num(s['p50_ms'] - d['p50_ms'])} / +{num(s['p99_ms'] - d['p99_ms'])} ms")
        label = LABELS.get(s["target"], s["target"])
        if s["target"] == "gateway-auto":
            label += f" ({r['router']['policy']} router)"
        rows.append(f"| {label} | {'stream' if s['stream'] else 'json'}, {s['concurrency']} | {num(s['rps'], 0)} | "
                    f"{added} | {num(s['cpu_ms_per_req'])} ms | {num(s['peak_rss_mb'], 0)} MB |")
    caption = (f"`{r['command']}`: one run, {r['duration_s']:g} s per scenario, store `{r['store']}`, "
               f"bench key budget ${r['budget_usd']:,.0f} (every request reserves and settles); "
               f"{machine_caption(r)}. {ratios(by_key)}")
    return "\n".join(rows) + "\n\n" + caption + "\n"


def ratios(by_key: dict[tuple[str, bool, int], dict[str, Any]]) -> str:
    """Ours against LiteLLM's proxy in the same run: the stable part of a run on a busy box."""
    parts = []
    for (target, stream, conc), s in sorted(by_key.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0][-1])):
        lite = by_key.get(("litellm-proxy", stream, conc))
        if lite is None or not target.startswith("gateway-"):
            continue
        parts.append(f"{target.removeprefix('gateway-')} {'stream' if stream else 'json'} c={conc}: "
                     f"{s['rps'] / lite['rps']:.1f}× the requests/s, "
                     f"1/{lite['cpu_ms_per_req'] / s['cpu_ms_per_req']:.1f} the CPU per request")
    return ("Against LiteLLM's proxy in the same run: " + "; ".join(parts) + ".") if parts else ""


def gateway_bench_full(root: Path) -> str:
    """The whole run as gateway_bench.py prints it (its own ``markdown``), so the two cannot differ."""
    if str(BENCH) not in sys.path:  # bench scripts import each other as files, not as a package
        sys.path.insert(0, str(BENCH))
    module = importlib.import_module("gateway_bench")
    r = load(root, GATEWAY_RESULT)
    return f"`{r['command']}`; {machine_caption(r)}:\n\n{module.markdown(r)}\n"


# --- scale (bench/scale_bench.py) ------------------------------------------------------------

def errors(d: dict[str, Any]) -> str:
    errs = d.get("errors") or {}
    total = sum(errs.values())
    return "0" if not total else f"{total:,} ({', '.join(f'{k} {v:,}' for k, v in sorted(errs.items()))})"


def scale_table(root: Path) -> str:
    r = load(root, "scale_bench.json")
    b, s, w = r["burst"], r["streams"], r["workers"]
    bg, sg = b["gateway"], s["gateway"]
    rows = [
        "| scenario | completed | errors | added latency | other |",
        "|---|---|---|---|---|",
        f"| burst, {b['concurrency']:,} clients, json | {bg['ok']:,} | {errors(bg)} | "
        f"p99 +{num(bg['added_p99_ms'], 0)} ms | spend ${b['spend_usd']:.2f} of a ${b['budget_usd']:,.0f} budget |",
        f"| {s['concurrency']:,} concurrent streams (upstream TTFT {s['ttft_ms']:g} ms) | {sg['ok']:,} | "
        f"{errors(sg)} | TTFB p99 +{num(sg['added_ttfb_p99_ms'], 0)} ms | |",
        f"| `--workers 2` vs 1, json | {w['two']['ok']:,} vs {w['one']['ok']:,} | "
        f"{errors(w['two'])} / {errors(w['one'])} | | req/s ratio {w['ratio']:.2f} "
        f"({num(w['two']['req_s'], 0)} vs {num(w['one']['req_s'], 0)}) |",
    ]
    caption = f"`{r['command']}`, router `{r['router']['policy']}`; {machine_caption(r)}."
    return "\n".join(rows) + "\n\n" + caption + "\n"


# --- routing quality (cscr eval, router_core.default_eval) -------------------------------------

ROUTERS = [("oracle", "oracle"),
           ("group-oracle", "group-oracle (cheats: each model's test accuracy per task/subject)"),
           ("knn", "k-NN over training prompts"),
           ("kmeans", "UniRoute-style K-means (best baseline)"), ("cscr", "CSCR, faithful (cost-band InfoNCE)"),
           ("infonce", "plain InfoNCE, descriptor keys (the former bundled CSCR artifact's recipe)"),
           ("ours", "ours (kernel-shrink: neighbours' graded answers shrunk to cluster and model priors)")]


def interval(m: dict[str, float], bold: bool = False) -> str:
    value = f"**{m['value']:.3f}**" if bold else f"{m['value']:.3f}"
    if m["value"] == m["lo"] == m["hi"] or math.isinf(m["hi"]):
        return value
    return f"{value} [{m['lo']:.3f}, {m['hi']:.3f}]"


def test_size(root: Path, rel: str) -> str:
    """Prompt count from the results.md the same eval wrote (results.json does not carry it)."""
    md = root / RESULTS / rel / "results.md"
    found = re.search(r"(\d[\d,]*) test prompts", md.read_text()) if md.exists() else None
    return f"{int(found.group(1).replace(',', '')):,} prompts, " if found else ""


def routing_table(root: Path) -> str:
    sets = {"routerbench": "RouterBench", "mmlu_pro": "MMLU-Pro"}
    data = {k: load(root, f"{k}/results.json") for k in sets}
    head = [f"{label} ({test_size(root, k)}{sum(n.startswith('single:') for n in data[k]['results'])} models)"
            for k, label in sets.items()]
    best = {k: max(v["results"][n]["audc"]["value"] for n, _ in ROUTERS[2:]) for k, v in data.items()}
    rows = ["| router | " + " | ".join(head) + " |", "|---|" + "---|" * len(sets)]
    for name, label in ROUTERS:
        cells = [interval(data[k]["results"][name]["audc"], "oracle" not in name
                          and data[k]["results"][name]["audc"]["value"] == best[k]) for k in sets]
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    commands = "; ".join(f"`{data[k]['command']}`" for k in sets)
    return "\n".join(rows) + f"\n\nTest-split AUDC, {data['routerbench']['encoder']} encoder: {commands}.\n"


DEFAULT_ROUTERS = [("ours", "default `auto`: kernel-shrink, train-split twin of `default-kernel-shrink`"),
                   ("ours-rb", "kernel-shrink trained on RouterBench only"), ("kmeans", "K-means, same data"),
                   ("kmeans-rb", "K-means, RouterBench only"), ("cscr-bundled", "the former default (CSCR artifact)")]


def default_router_table(root: Path) -> str:
    r = load(root, "default-router/results.json")
    sets = r["sets"]
    head = [f"{k} test ({v['prompts']:,} prompts, {len(v['models'])} models)" for k, v in sets.items()]
    rows = ["| router | " + " | ".join(head) + " |", "|---|" + "---|" * len(sets)]
    for name, label in DEFAULT_ROUTERS:
        rows.append(f"| {label} | " + " | ".join(interval(v["results"][name]["audc"]) for v in sets.values()) + " |")
    paired = "; ".join(f"{k} {pair}: {d['value']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]"
                       for k, v in sets.items() for pair, d in v["paired_audc"].items()
                       if pair in ("ours - kmeans", "ours - cscr-bundled"))
    return ("\n".join(rows) + f"\n\nAUDC, {r['encoder']} encoder; paired differences: {paired}. "
            f"`{r['command']}`.\n")


def _signed(x: float, digits: int = 2) -> str:
    return f"{x:+.{digits}%}".replace("-", "−").replace("%", " %")


def graded_onboarding_table(root: Path) -> str:
    """docs/DESCRIPTORS.md: unseen MMLU-Pro models onboarded by graded probes (router_core.onboarding_eval)."""
    r = load(root, "mmlu_pro-graded-onboarding/results.json")
    ablation = load(root, "mmlu_pro-graded-onboarding-no-peer-fill/results.json")
    base = "in-distribution (full labels)"
    bar = r["results"][base]["audc"]

    def cells(data: dict[str, Any], n: int) -> tuple[str, str]:
        tags = [f"N={n}" + (f", draw {d}" if len(data["draws"]) > 1 else "") for d in data["draws"]]
        audc = [data["results"][f"onboarded, graded on {t}"]["audc"] for t in tags]
        rel = [data["paired_vs_in_distribution"][f"onboarded, graded on {t}"][0] / data["results"][base]["audc"]
               for t in tags]
        if len(set(audc)) == 1:  # the whole pool: every draw is the same
            return f"{audc[0]:.4f}", _signed(rel[0])
        return " / ".join(f"{a:.4f}" for a in audc), " / ".join(_signed(x) for x in rel)

    draws = " / ".join(str(d) for d in r["draws"])
    rows = [f"| keys of the unseen models | AUDC (draws {draws}) | vs in-distribution (paired) |", "|---|---|---|"]
    for n in r["ns"]:
        audc, rel = cells(r, n)
        label = f"graded on N = {n}" if n < r["probe_pool"] else f"graded on the whole probe pool ({n:,})"
        if n == 200:
            label, audc, rel = f"**{label}** (the gateway's default)", f"**{audc}**", f"**{rel}**"
        rows.append(f"| {label} | {audc} | {rel} |")
    first = r["draws"][0]
    for name, label in (("K-means (full labels)", "K-means, full labels"),
                        ("K-means (unseen models graded on N=200)",
                         f"K-means, unseen models graded on N = 200 (draw {first})")):
        if name in r["results"]:
            rows.append(f"| {label} | {r['results'][name]['audc']:.4f} | "
                        f"{_signed(r['paired_vs_in_distribution'][name][0] / bar)} |")
    grading = [g for g in r["grading"].values()]
    agree = [100 * g["agreement_with_recorded_grades"] for g in grading]
    no_letter = [100 * g["ungradable"] / g["graded"] for g in grading]
    d200 = r["paired_vs_in_distribution"].get(f"onboarded, graded on N=200, draw {first}")
    example = "" if d200 is None else (f" N = 200, draw {first}: {d200[0]:+.4f} [{d200[1]:+.4f}, "
                                       f"{d200[2]:+.4f}].").replace("-", "−")
    audc, rel = cells(ablation, 200)
    return ("\n".join(rows) + f"\n\nIn-distribution AUDC {bar:.4f}; {r['train_prompts']:,} train / "
            f"{r['test_prompts']:,} test prompts, {r['models']} models, {r['bootstrap']} shared bootstrap resamples."
            f"{example} Grading the recorded answers agrees with the recorded grades on {min(agree):.1f}–"
            f"{max(agree):.1f} % of them; {min(no_letter):.0f}–{max(no_letter):.0f} % have no letter and count as "
            f"wrong. Without `peer_fill`, N = 200, draws {' / '.join(map(str, ablation['draws']))}: {audc} ({rel}). "
            f"`{r['command']}`; `{ablation['command']}`.\n")


# --- out of distribution (router_core/ood_eval.py) ---------------------------------------------

OOD_ROUTERS = [("oracle", "oracle"), ("kernel-shrink", "kernel-shrink (recipe before)"),
               ("kernel-shrink+fallback", "+ distance-aware prior"), ("kernel-shrink+task-cv", "+ leave-task-out CV"),
               ("kmeans", "K-means"), ("knn", "k-NN"), ("single-frontier", "always one model")]


def _diff(d: dict[str, float]) -> str:
    mark = "**" if d["lo"] > 0 or d["hi"] < 0 else ""  # the interval excludes 0
    return f"{mark}{d['value']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]{mark}"


def ood_table(root: Path) -> str:
    r = load(root, "ood/results.json")
    shifts = r["shifts"]
    rows = ["| shift (train → test) | test prompts, models | " + " | ".join(label for _, label in OOD_ROUTERS)
            + " |", "|---|---|" + "---|" * len(OOD_ROUTERS)]
    for name, s in shifts.items():
        cells = [interval(s["results"][k]["audc"]) if k.startswith("kernel-shrink") or k == "kmeans"
                 else f"{s['results'][k]['audc']['value']:.3f}" for k, _ in OOD_ROUTERS]
        rows.append(f"| `{name}` {s['description']} | {s['test_prompts']:,}, {s['models']} | "
                    + " | ".join(cells) + " |")
    pairs = list(next(iter(shifts.values()))["paired_audc"])
    rows += ["", "Paired AUDC differences, 95% bootstrap intervals (bold: the interval excludes 0):", "",
             "| shift | " + " | ".join(p.replace(" - ", " − ") for p in pairs) + " |", "|---|" + "---|" * len(pairs)]
    rows += [f"| `{name}` | " + " | ".join(_diff(s["paired_audc"][p]) for p in pairs) + " |"
             for name, s in shifts.items()]
    keys = list(next(iter(shifts.values()))["diagnostics"])
    rows += ["", "Why (kernel-shrink as before; the served rule on each ingredient of p̂ alone):", "",
             "| shift | median top-1 similarity | median kernel share W/(W+m) | AUDC: kernel only | cluster prior only "
             "| overall accuracy only | k, h, m chosen by CV |", "|---|---|---|---|---|---|---|"]
    for name, s in shifts.items():
        d, hp = s["diagnostics"], s["hyperparameters kernel-shrink"]
        rows.append(f"| `{name}` | " + " | ".join(f"{d[k]:.3f}" for k in keys)
                    + f" | {hp['k']:g}, {hp['bandwidth']:g}, {hp['prior_strength']:g} |")
    rows += ["", "Selection rule (shifts a–c and the in-distribution sets outside MMLU-Pro; MMLU-Pro's d "
             "shifts only confirm):", ""]
    for v in r["verdicts"]:
        rows.append(f"- `{v['candidate']}`: **{'wins' if v['wins'] else 'does not win'}**. Mean difference to "
                    f"kernel-shrink {v['mean_ood_difference']:+.4f} out of distribution, "
                    f"{v['mean_id_difference']:+.4f} in distribution; intervals above 0 on "
                    f"{', '.join(v['significantly_better']) or 'none'}, below 0 on "
                    f"{', '.join(v['significantly_worse']) or 'none'}. Confirmation on MMLU-Pro's held-out "
                    f"categories (d): mean "
                    f"{v['confirmation_mean_ood_difference']:+.4f}, above 0 on "
                    f"{', '.join(v['confirmation_significantly_better']) or 'none'}, below 0 on "
                    f"{', '.join(v['confirmation_significantly_worse']) or 'none'}.")
    return ("\n".join(rows) + f"\n\nAUDC, {r['encoder']} encoder, {r['bootstrap']} bootstrap resamples; default "
            f"recipe now: `{r['default_recipe']}`. `{r['command']}`.\n")


def ood_summary(root: Path) -> str:
    r = load(root, "ood/results.json")
    shifts = {n: s for n, s in r["shifts"].items() if s["kind"] == "ood"}
    new = r["default_recipe"]
    rows = ["| shift (train → test) | kernel-shrink (before) | default now | K-means | always one model |",
            "|---|---|---|---|---|"]
    for name, s in shifts.items():
        a = {k: s["results"][k]["audc"]["value"] for k in ("kernel-shrink", new, "kmeans", "single-frontier")}
        label = re.split(r":|, \d+ (?:shared )?models", s["description"])[0]
        rows.append(f"| `{name}` {label} | {a['kernel-shrink']:.3f} | {a[new]:.3f} | "
                    f"{a['kmeans']:.3f} | {a['single-frontier']:.3f} |")
    return "\n".join(rows) + f"\n\nAUDC on prompts unlike the training set; default recipe now: `{new}`.\n"


RENDERERS: dict[str, Callable[[Path], str]] = {
    "perf": perf_table, "gateway-bench": gateway_bench_full, "scale": scale_table,
    "routing": routing_table, "default-router": default_router_table, "graded-onboarding": graded_onboarding_table,
    "ood": ood_table, "ood-summary": ood_summary,
}


# --- files -----------------------------------------------------------------------------------

def doc_files(root: Path) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def render_text(text: str, root: Path) -> tuple[str, list[str]]:
    """The text with every block re-rendered, and the names of the blocks that changed."""
    stale: list[str] = []

    def replace(m: re.Match[str]) -> str:
        name = m.group("name")
        if name not in RENDERERS:
            raise RenderError(f"no renderer for generated block {name!r} (known: {', '.join(RENDERERS)})")
        body = RENDERERS[name](root)
        if body != m.group("body"):
            stale.append(name)
        return m.group(1) + body + m.group(4)

    return BLOCK.sub(replace, text), stale


def run(root: Path, write: bool) -> list[str]:
    """Render every doc; with ``write`` save the changed ones. Returns 'FILE: BLOCK' per stale block."""
    found: list[str] = []
    for path in doc_files(root):
        if not path.exists():
            continue
        text = path.read_text()
        new, stale = render_text(text, root)
        found += [f"{path.relative_to(root)}: {name}" for name in stale]
        if write and new != text:
            path.write_text(new)
    return found


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 naming stale blocks; write nothing")
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root (tests)")
    args = parser.parse_args(argv)
    try:
        stale = run(args.root, write=not args.check)
    except (RenderError, KeyError) as e:  # KeyError: a result file without a field a table needs
        print(f"error: {e}", file=sys.stderr)
        return 2
    for line in stale:
        print(f"{'stale' if args.check else 'rewrote'}: {line}")
    if args.check and stale:
        print("regenerate: python bench/render_docs.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
