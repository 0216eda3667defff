"""The ``cscr`` command. Each subcommand lives in its own module and is imported only when used."""

from __future__ import annotations

import importlib
import sys
from importlib import metadata

# subcommand -> (module, one-line help). Each module exposes ``main(argv: list[str]) -> int``.
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("gateway.serve", "run the gateway (Starlette + uvicorn)"),
    "upstream": ("gateway.upstream", "run the local OpenAI-compatible replay upstream"),
    "replay-set": ("gateway.replay_set", "rebuild the upstream's bundled replay set from the benchmark data"),
    "train": ("router_core.train", "train a CSCR router and write an artifact"),
    "eval": ("router_core.evaluate", "deferral curves, AUDC tables and plots against baselines"),
    "bench-routing": ("router_core.bench", "time one routing decision (embed + search + rule)"),
    "eval-gateway": ("gateway.eval_gateway", "score a running gateway's routing over HTTP on a benchmark's prompts"),
    "calibrate": ("router_core.calibrate", "spend per 1,000 requests and model mix per trade-off on your prompts"),
    "describe": ("descriptors.cli", "write model descriptors (perplexity fingerprints, logit footprints)"),
}


def version() -> str:
    """The installed package's version (package metadata), or say that it is not installed."""
    try:
        return metadata.version("cscr-gateway")
    except metadata.PackageNotFoundError:
        return "unknown (package not installed: pip install -e .)"


def usage() -> str:
    lines = ["usage: cscr [--version] <command> [options]", "", "commands:"]
    lines += [f"  {name:<14} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0
    if args[0] in ("-V", "--version"):
        print(f"cscr {version()}")
        return 0
    entry = COMMANDS.get(args[0])
    if entry is None:
        print(f"cscr: unknown command {args[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    from router_core.paths import DataNotFoundError

    module = importlib.import_module(entry[0])
    try:
        return int(module.main(args[1:]) or 0)
    except DataNotFoundError as exc:  # one line that says where to get the data, not a traceback
        print(f"cscr {args[0]}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
