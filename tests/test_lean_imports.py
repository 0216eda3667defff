"""The serving path is lean: the gateway with the bundled router loaded, answering /ready and a chat
request, imports none of the research stack, and never builds the static encoder (it ships in the
package). Run in a fresh interpreter: this test process has imported torch & co. long before."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

HEAVY = ("torch", "transformers", "sentence_transformers", "pandas", "pyarrow", "sklearn", "matplotlib",
         "onnxruntime", "onnx", "gguf", "accelerate", "opentelemetry")  # tracing: only with an OTLP endpoint

# What `cscr serve` does (gateway.serve.main up to uvicorn.run), then the app's lifespan (router,
# store, reloader) and two requests through the real app.
SERVE = """
import json, sys
import uvicorn
import gateway.serve
from gateway.app import create_app
from gateway.config import parse_config_text, read_config_text
from starlette.testclient import TestClient

text = read_config_text("gateway.yaml")
config = parse_config_text(text, "gateway.yaml")
app = create_app(config, config_path="gateway.yaml", config_text=text)
with TestClient(app) as client:
    ready = client.get("/ready").json()
    chat = client.post("/v1/chat/completions", json={"model": "auto", "max_tokens": 8,
                       "messages": [{"role": "user", "content": "What is the capital of France?"}]})
    state = app.state.gateway
    print(json.dumps({"router": state.router.name, "problem": state.router_problem, "ready": ready,
                      "chat_status": chat.status_code, "modules": sorted(sys.modules)}))
"""


def _run_serving(tmp_path: Path) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CSCR_CACHE_DIR": str(tmp_path / "cache"),
           "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    proc = subprocess.run([sys.executable, "-c", SERVE], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def test_serving_imports_nothing_heavy_and_builds_nothing(tmp_path: Path) -> None:
    out = _run_serving(tmp_path)
    assert out["router"] == "kernel-shrink" and out["problem"] is None, out  # the bundled default, not cost-only
    modules = set(out["modules"])  # type: ignore[arg-type]
    assert "model2vec" in modules  # the encoder really ran
    loaded = sorted(h for h in HEAVY if h in modules)
    assert not loaded, f"the serving path imported {loaded}"
    # the request reached the forwarder (the demo upstream is not running: 502/503, not a crash)
    assert out["chat_status"] in (200, 502, 503, 504), out["chat_status"]
    # the static encoder came from the package, not from a build into the cache
    assert not (tmp_path / "cache" / "encoders").exists()


def test_shipped_static_encoder_reproduces_the_artifact_check_vector() -> None:
    from router_core.encoder import CHECK_TEXT, Encoder, static_model_dir
    from router_core.paths import artifacts_dir

    path = static_model_dir()
    assert path.parent == artifacts_dir() / "encoders"
    size = sum(f.stat().st_size for f in path.iterdir())
    assert size < 20_000_000, size
    meta = json.loads((artifacts_dir() / "routerbench" / "meta.json").read_text())
    ref = np.asarray(meta["encoder"]["check_vector"], dtype=np.float32)
    got = Encoder("static-minilm").encode(CHECK_TEXT)
    assert float(got @ ref) > 0.999
