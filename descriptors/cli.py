"""``cscr describe``: write descriptor files (JSON, read by a provider's ``descriptor:`` field).

    cscr describe probes     [--benchmark routerbench] [--n 192] [--seed 0]
    cscr describe perplexity --model gpt-4-1106-preview [--model ...] | --all   --out descriptors_out/
                             [--answers answers.json]  (probe id -> answer text, for a model not in the data)
    cscr describe logit      --lm smollm2-135m | gemma3-270m | /path/to/hf_model  [--name NAME]  --out DIR
    cscr describe footprint  --model NAME | --all  --out DIR   (text footprints of recorded answers:
                             the logit-footprint space, for models without logits)
    cscr describe live       --model openai/gpt-4o-mini [--api-base URL] [--api-key-env VAR]
                             --input-usd-per-mtok 0.15 --output-usd-per-mtok 0.6 --max-cost-usd 0.5
                             [--concurrency 4] [--retries 2] [--name NAME]  --out DIR | --out-file FILE
    cscr describe graded     --probes ARTIFACT/graded_probes.json.gz --model openai/gpt-4o-mini [--n 200] [--seed 0]
                             (price, cap and retry options as for live)  --out DIR | --out-file FILE
                             (graded answers on a kernel-shrink artifact's probes: its descriptor space)
    cscr describe bench      [--n 64] [--logit gemma3-270m]

Each descriptor goes to ``<out>/<model>.<kind>.json`` (``/`` in a model name becomes ``__``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from descriptors.probes import DEFAULT_N, DEFAULT_SEED, ProbeSet

if TYPE_CHECKING:  # the live prober imports asyncio machinery only when used
    from descriptors.live import LiveTarget, ProbeSettings

log = logging.getLogger(__name__)


def _out_path(out: Path, model: str, kind: str) -> Path:
    return out / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', model.replace('/', '__'))}.{kind}.json"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cscr describe", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--benchmark", default="routerbench", choices=["routerbench", "mmlu_pro"])
        sp.add_argument("--data", type=Path, default=None, help="data directory (default: ../shared/data)")
        sp.add_argument("--n", type=int, default=DEFAULT_N, help="number of probes (= descriptor dimension)")
        sp.add_argument("--seed", type=int, default=DEFAULT_SEED)
        sp.add_argument("--threads", type=int, default=2)
        sp.add_argument("--probes", type=Path, default=None,
                        help="probe set file (cscr describe probes --out FILE; a router artifact's probes.json) "
                        "instead of drawing it from the data")

    pr = sub.add_parser("probes", help="print the probe set id (and write the probe set file)")
    common(pr)
    pr.add_argument("--out", type=Path, default=None, help="write the probe set (with its full prompts) here")
    ppl = sub.add_parser("perplexity", help="perplexity fingerprints of recorded (or given) answers")
    common(ppl)
    ppl.add_argument("--model", action="append", default=[], help="model name (repeatable)")
    ppl.add_argument("--all", action="store_true", help="every model with recorded answers")
    ppl.add_argument("--answers", type=Path, default=None, help="JSON {probe_id: answer} for one --model")
    ppl.add_argument("--scorer", default="smollm2-135m")
    ppl.add_argument("--max-prompt-tokens", type=int, default=128)
    ppl.add_argument("--max-answer-tokens", type=int, default=64)
    ppl.add_argument("--batch-size", type=int, default=16)
    ppl.add_argument("--out", type=Path, required=True)
    lg = sub.add_parser("logit", help="logit footprint of an open-weight causal LM")
    common(lg)
    lg.add_argument("--lm", required=True, help="smollm2-135m | gemma3-270m | transformers model directory")
    lg.add_argument("--name", default=None, help="model name recorded in the file (default: --lm)")
    lg.add_argument("--k", type=int, default=None, help="basis size (default: --n, one space with perplexity)")
    lg.add_argument("--new-tokens", type=int, default=10)
    lg.add_argument("--max-prompt-tokens", type=int, default=128)
    lg.add_argument("--batch-size", type=int, default=8)
    lg_dest = lg.add_mutually_exclusive_group(required=True)
    lg_dest.add_argument("--out", type=Path, help="directory (file <name>.logit.json)")
    lg_dest.add_argument("--out-file", type=Path, help="exact file to write")
    fp = sub.add_parser("footprint", help="text footprints (logit-footprint space) of recorded answers")
    common(fp)
    fp.add_argument("--model", action="append", default=[], help="model name (repeatable)")
    fp.add_argument("--all", action="store_true", help="every model with recorded answers")
    fp.add_argument("--tokenizer", default="smollm2-135m", help="reference tokenizer (an LM name)")
    fp.add_argument("--new-tokens", type=int, default=10)
    fp.add_argument("--k", type=int, default=None)
    fp.add_argument("--out", type=Path, required=True)
    lv = sub.add_parser("live", help="perplexity fingerprint of a provider probed live through litellm")
    common(lv)
    _live_options(lv)
    gr = sub.add_parser("graded", help="graded descriptor of a provider: its answers to a router's gradable probes")
    gr.add_argument("--probes", type=Path, required=True, help="the artifact's graded_probes.json.gz")
    gr.add_argument("--n", type=int, default=200, help="probes drawn (stratified by task)")
    gr.add_argument("--seed", type=int, default=0)
    _live_options(gr)
    b = sub.add_parser("bench", help="scorer answers/s and peak RSS")
    common(b)
    b.set_defaults(n=64)
    b.add_argument("--model", action="append", default=[], help="recorded model to score (default: first two)")
    b.add_argument("--logit", action="append", default=[], help="also time this model's footprint")
    return p


def _live_options(lv: argparse.ArgumentParser) -> None:
    """Options of the subcommands that probe a provider live (``live``, ``graded``)."""
    lv.add_argument("--model", required=True, help="litellm model string, e.g. openai/gpt-4o-mini")
    lv.add_argument("--api-base", default=None)
    lv.add_argument("--api-key-env", default=None, help="environment variable holding the API key")
    lv.add_argument("--input-usd-per-mtok", type=float, required=True)
    lv.add_argument("--output-usd-per-mtok", type=float, required=True)
    lv.add_argument("--max-cost-usd", type=float, required=True, help="hard cap on what the probes may cost")
    lv.add_argument("--concurrency", type=int, default=4)
    lv.add_argument("--retries", type=int, default=2)
    lv.add_argument("--max-tokens", type=int, default=256)
    lv.add_argument("--timeout-s", type=float, default=60.0)
    lv.add_argument("--max-missing", type=float, default=0.25, help="refuse when more probes than this fail")
    lv.add_argument("--scorer", default="smollm2-135m")
    lv.add_argument("--max-prompt-tokens", type=int, default=128)
    lv.add_argument("--max-answer-tokens", type=int, default=64)
    lv.add_argument("--batch-size", type=int, default=4,
                    help="scorer batch (4: peak RSS ~1.4 GB; 16: ~2.3 GB and ~20%% faster)")
    lv.add_argument("--name", default=None, help="model name recorded in the file (default: --model)")
    lv.add_argument("--no-progress", action="store_true")
    dest = lv.add_mutually_exclusive_group(required=True)
    dest.add_argument("--out", type=Path, help="directory (file <name>.<kind>.json)")
    dest.add_argument("--out-file", type=Path, help="exact file to write")


EXIT_WITH_PARENT_ENV = "CSCR_EXIT_WITH_PARENT"


def exit_with_parent(parent: int, poll_s: float = 1.0) -> None:
    """Exit once this process's parent is no longer ``parent`` (the gateway's pid, passed in
    ``CSCR_EXIT_WITH_PARENT``): the gateway runs descriptor jobs as children (``gateway.describe``),
    and a gateway killed outright (SIGKILL, OOM) must not leave a job probing a paid provider behind
    it. Comparing with the pid the gateway passed, not the parent seen at start, also catches a
    gateway that died while this job was still importing. A daemon thread polls ``os.getppid()``."""
    import threading
    import time

    def gone() -> bool:
        return os.getppid() != parent

    def stop() -> None:
        print(json.dumps({"error": "the gateway that started this job is gone; descriptor job stopped"}), flush=True)
        os._exit(3)

    if gone():
        stop()

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if gone():
                stop()

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def arm_exit_with_parent(poll_s: float = 1.0) -> None:
    """``exit_with_parent`` when ``CSCR_EXIT_WITH_PARENT`` holds the starting gateway's pid; anything
    else (unset, ``0``, ``false``: a user running ``cscr describe`` by hand) does not arm it."""
    parent = os.environ.get(EXIT_WITH_PARENT_ENV, "")
    if parent.isdigit() and int(parent) > 1:
        exit_with_parent(int(parent), poll_s)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    arm_exit_with_parent()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "bench":
        from descriptors.bench import bench

        result = bench(args.benchmark, n=args.n, models=tuple(args.model) or None, logit_lms=tuple(args.logit),
                       threads=args.threads)
        print(json.dumps(result, indent=1))
        return 0

    if args.command == "graded":
        return _graded(args)
    from descriptors.probes import build_probe_set

    if args.probes is not None:
        probes = ProbeSet.load(args.probes)
    else:
        probes = build_probe_set(args.benchmark, n=args.n, seed=args.seed, data_dir=args.data)
    if args.command == "probes":
        if args.out is not None:
            probes.save(args.out)
        print(probes.id)
        return 0

    from descriptors.lm import load_lm

    if args.command == "perplexity":
        from descriptors.perplexity import ScoreSettings, perplexity_descriptor

        models = _models(args)
        answers = None
        if args.answers is not None:
            if len(models) != 1:
                raise SystemExit("cscr describe perplexity: --answers needs exactly one --model")
            given = json.loads(args.answers.read_text())
            answers = [given.get(pid) for pid in probes.prompt_ids]
        settings = ScoreSettings(args.max_prompt_tokens, args.max_answer_tokens, args.batch_size)
        scorer = load_lm(args.scorer, threads=args.threads)
        for m in models:
            d = perplexity_descriptor(m, probes, scorer, answers=answers, settings=settings, data_dir=args.data)
            path = _out_path(args.out, m, d.kind)
            d.save(path)
            print(f"wrote {path}  mean_nll={d.settings['mean_nll']:.3f}  imputed={d.settings['n_imputed']}")
        return 0

    if args.command == "live":
        return _live(args, probes)
    if args.command == "footprint":
        from descriptors.logit import FootprintSettings, text_footprint
        from descriptors.perplexity import recorded_answers

        models = _models(args)
        ref = load_lm(args.tokenizer, threads=args.threads)
        fps = FootprintSettings(new_tokens=args.new_tokens, k=args.k)
        for m in models:
            d = text_footprint(m, probes, recorded_answers(probes, m, args.data), ref, fps)
            path = _out_path(args.out, m, "footprint")
            d.save(path)
            print(f"wrote {path}  answered={d.settings['answered']}  basis_tokens={d.settings['basis_tokens']}")
        return 0

    from descriptors.logit import FootprintSettings, logit_descriptor

    lm = load_lm(args.lm, threads=args.threads)
    fp = FootprintSettings(args.new_tokens, args.max_prompt_tokens, args.batch_size, args.k)
    d = logit_descriptor(lm, probes, fp, model=args.name)
    path = args.out_file or _out_path(args.out, d.model, d.kind)
    d.save(path)
    print(f"wrote {path}  {d.settings['seconds']}s  basis_mass={d.settings['basis_mass']:.3f}")
    return 0


def _models(args: argparse.Namespace) -> list[str]:
    """``--model`` (repeatable) or ``--all`` models with recorded answers."""
    from descriptors.perplexity import recorded_models

    models = recorded_models(args.benchmark, args.data) if args.all else list(args.model)
    if not models:
        raise SystemExit(f"cscr describe {args.command}: give --model NAME (repeatable) or --all")
    return models


def _live(args: argparse.Namespace, probes: ProbeSet) -> int:
    from descriptors.live import live_descriptor
    from descriptors.lm import load_lm
    from descriptors.perplexity import ScoreSettings
    from descriptors.types import DescriptorError

    target, settings = _target(args)
    name = args.name or args.model
    score = ScoreSettings(args.max_prompt_tokens, args.max_answer_tokens, args.batch_size)
    try:
        d, run = live_descriptor(name, target, probes, lambda: load_lm(args.scorer, threads=args.threads), settings,
                                 max_missing=args.max_missing, progress=not args.no_progress, data_dir=args.data,
                                 score_settings=score)
    except DescriptorError as exc:
        print(json.dumps({"ok": False, "error": str(exc)}))
        return 2
    path = args.out_file or _out_path(args.out, name, d.kind)
    d.save(path)
    print(json.dumps({"ok": True, "file": str(path), "probe_set": d.probe_set, "scorer": d.scorer, **run.summary()}))
    return 0


def _target(args: argparse.Namespace) -> tuple[LiveTarget, ProbeSettings]:
    """(LiveTarget, ProbeSettings) from the live options; the API key only from the environment."""
    import os

    from descriptors.live import LiveTarget, ProbeSettings

    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise SystemExit(f"cscr describe {args.command}: environment variable {args.api_key_env} is not set")
    target = LiveTarget(args.model, args.api_base, api_key, args.input_usd_per_mtok, args.output_usd_per_mtok,
                        args.timeout_s)
    settings = ProbeSettings(concurrency=args.concurrency, retries=args.retries, max_cost_usd=args.max_cost_usd,
                             max_tokens=args.max_tokens)
    return target, settings


def _graded(args: argparse.Namespace) -> int:
    from descriptors.graded import graded_descriptor
    from descriptors.types import DescriptorError
    from router_core.graded import GradedProbes

    target, settings = _target(args)
    name = args.name or args.model
    try:
        d, run, report = graded_descriptor(name, target, GradedProbes.load(args.probes), args.n, args.seed, settings,
                                           max_missing=args.max_missing, progress=not args.no_progress)
    except DescriptorError as exc:
        print(json.dumps({"ok": False, "error": str(exc)}))
        return 2
    path = args.out_file or _out_path(args.out, name, d.kind)
    d.save(path)
    print(json.dumps({"ok": True, "file": str(path), "probe_set": d.probe_set, "scorer": d.scorer,
                      **run.summary(), **report.summary()}))
    return 0
