"""gateway.yaml validation: typed frozen objects, errors naming the file and field."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from gateway.config import hash_secret, load_config, parse_config
from gateway.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _provider(**extra: Any) -> dict[str, Any]:
    return {"name": "p1", "model": "openai/m", "api_base": "http://x/v1", "input_usd_per_mtok": 1,
            "output_usd_per_mtok": 2, **extra}


def test_default_gateway_yaml_loads() -> None:
    cfg = load_config(ROOT / "gateway.yaml", env={})
    assert len(cfg.providers) == 11 and cfg.store == "memory://"
    assert all(p.direct for p in cfg.providers)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.providers[0].name = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("raw", "field", "reason"),
    [
        ({"providers": [_provider(colour="red")]}, "providers[0].colour", "unknown key"),
        ({"bogus": 1}, "bogus", "unknown key"),
        ({"providers": [_provider(input_usd_per_mtok="cheap")]}, "providers[0].input_usd_per_mtok", "expected float"),
        ({"providers": [_provider(timeout_s=True)]}, "providers[0].timeout_s", "expected float"),
        ({"providers": [{"model": "openai/m"}]}, "providers[0].name", "is required"),
        ({"providers": [_provider(name="auto")]}, "providers[0].name", "invalid provider name"),
        ({"providers": [_provider(), _provider()]}, "providers[1].name", "duplicate"),
        ({"providers": [_provider(api_key_env="NOPE_KEY")]}, "providers[0].api_key_env", "NOPE_KEY is not set"),
        ({"router": {"default_tradeoff": 2}}, "router.default_tradeoff", "outside"),
        ({"server": {"max_attempts": 0}}, "server.max_attempts", "must be >= 1"),
        ({"store": "postgres://x"}, "store", "memory:// or redis://"),
        ({"keys": [{"name": "k", "secret_sha256": "abc"}]}, "keys[0].secret_sha256", "64 hex digits"),
        ({"providers": [_provider()], "keys": [{"name": "k", "secret_sha256": "a" * 64,
                                                "allowed_providers": ["p9"]}]},
         "keys[0].allowed_providers[0]", "unknown provider"),
        ([1, 2], "<root>", "expected a mapping"),
        ({"providers": [_provider(descriptor={"probe": {}, "file": "x"})]}, "providers[0].descriptor",
         "exactly one of"),
        ({"providers": [_provider(descriptor={"probe": {"max_cost_usd": -1}})]},
         "providers[0].descriptor.probe.max_cost_usd", "outside"),
        ({"providers": [_provider(descriptor={"probe": {"budget": 1}})]}, "providers[0].descriptor.probe.budget",
         "unknown key"),
        ({"providers": [_provider(descriptor={"logit": {}})]}, "providers[0].descriptor.logit.lm", "is required"),
    ],
)
def test_errors_name_file_and_field(raw: Any, field: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, "conf.yaml", env={})
    assert info.value.file == "conf.yaml" and info.value.field == field
    assert reason in info.value.reason
    assert str(info.value).startswith(f"conf.yaml: {field}: ")


def test_descriptor_sources() -> None:
    def one(descriptor: Any) -> Any:
        return parse_config({"providers": [_provider(descriptor=descriptor)]}, env={}).providers[0]

    f = one("d/model.json")
    assert f.descriptor == "d/model.json" and f.describe is None and f.expert == "p1"
    assert one({"file": "d/m.json"}).descriptor == "d/m.json"
    probe = one("probe").describe
    assert probe is not None and probe.method == "probe" and probe.max_cost_usd == 1.0
    custom = one({"probe": {"max_cost_usd": 0.25, "concurrency": 2, "retries": 0}}).describe
    assert (custom.method, custom.max_cost_usd, custom.concurrency, custom.retries) == ("probe", 0.25, 2, 0)
    logit = one({"logit": "smollm2-135m"}).describe
    assert logit.method == "logit" and logit.lm == "smollm2-135m"
    assert one({"logit": {"lm": "gemma3-270m", "timeout_s": 60}}).describe.timeout_s == 60.0


def test_secret_from_env_is_resolved_and_never_in_repr() -> None:
    cfg = parse_config({"providers": [_provider(api_key_env="MY_KEY")]}, env={"MY_KEY": "sk-very-secret"})
    assert cfg.providers[0].api_key == "sk-very-secret"
    assert "sk-very-secret" not in repr(cfg)


def test_keys_are_hashed_and_looked_up() -> None:
    cfg = parse_config({"keys": [{"name": "team", "secret_sha256": hash_secret("sk-1"), "budget_usd": 5}]}, env={})
    assert cfg.key_by_secret("sk-1") is not None and cfg.key_by_secret("sk-2") is None
    assert "sk-1" not in repr(cfg)


def test_litellm_price_map_fills_missing_prices() -> None:
    cfg = parse_config({"providers": [{"name": "g", "model": "gpt-4o-mini"}]}, env={})
    p = cfg.providers[0]
    assert p.input_usd_per_mtok > 0 and p.output_usd_per_mtok > 0 and not p.direct
    with pytest.raises(ConfigError, match="litellm has none"):
        parse_config({"providers": [{"name": "g", "model": "nobody/knows-this-model"}]}, env={})


def test_unreadable_and_broken_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("providers: [\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert info.value.file == str(bad) and info.value.field == "<yaml>"


def test_store_url_takes_secrets_from_the_environment() -> None:
    cfg = parse_config({"store": "redis://:${REDIS_PW}@redis:6379/0"}, env={"REDIS_PW": "s3cret"})
    assert cfg.store == "redis://:s3cret@redis:6379/0"
    with pytest.raises(ConfigError) as info:
        parse_config({"store": "redis://:${NOPE}@redis:6379/0"}, env={})
    assert info.value.field == "store" and "NOPE" in info.value.reason
