"""Model registry, family adapters and the weight fingerprint, on real models."""

import pytest
import torch

from msafety_bench.errors import UsageError
from msafety_bench.models import HUB_ALIASES, load_model, resolve_model
from msafety_bench.models.fingerprint import model_fingerprint


def test_aliases_resolve_without_loading():
    assert resolve_model("qwen2.5").source == "Qwen/Qwen2.5-7B-Instruct"
    assert resolve_model("llama3").source == "meta-llama/Llama-3.1-8B-Instruct"
    assert {"qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-3b", "qwen2.5-7b", "llama3.2-1b", "llama3.2-3b"} <= set(HUB_ALIASES)
    assert resolve_model("smollm2").kind == "smollm2"
    assert resolve_model("someorg/some-model").kind == "hub"


def test_unknown_model_and_bad_folder(tmp_path):
    with pytest.raises(UsageError, match="unknown model 'gpt5'"):
        resolve_model("gpt5")
    with pytest.raises(UsageError, match="no config.json"):
        resolve_model(str(tmp_path))


def test_hub_model_offline_is_one_clear_error():
    # The hub is unreachable in tests (HF_HUB_OFFLINE=1), as in CI.
    with pytest.raises(UsageError, match="could not load model 'someorg/not-cached'.*local model folder"):
        load_model("someorg/not-cached", device="cpu")


def test_local_folder_loads(tiny, tmp_path):
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), device="cpu")
    assert loaded.spec.kind == "local" and loaded.family == "qwen2"
    assert model_fingerprint(loaded.model) == model_fingerprint(tiny.model)
    assert loaded.tokenizer.padding_side == "left"


def test_tiny_qwen2_is_seeded(tiny):
    again = load_model("tiny-qwen2", device="cpu")
    assert model_fingerprint(again.model) == model_fingerprint(tiny.model)
    assert tiny.tokenizer.pad_token is not None


def test_fingerprint_sees_any_single_weight_change(tiny):
    before = model_fingerprint(tiny.model)
    weight = tiny.adapter.gate_proj(tiny.model, 1).weight
    with torch.no_grad():
        old = weight[3, 5].clone()
        weight[3, 5] = torch.nextafter(old, old + 1)  # the smallest possible change
        changed = model_fingerprint(tiny.model)
        weight[3, 5] = old
    assert changed != before
    assert model_fingerprint(tiny.model) == before


@pytest.mark.parametrize("fixture", ["tiny", pytest.param("smollm2", marks=pytest.mark.slow)])
def test_adapter_names_the_mlp_modules(request, fixture):
    loaded = request.getfixturevalue(fixture)
    a, m = loaded.adapter, loaded.model
    assert a.family == {"tiny": "qwen2", "smollm2": "llama"}[fixture]
    n = a.num_layers(m)
    assert n == m.config.num_hidden_layers
    for i in (0, n - 1):
        assert a.gate_proj(m, i).weight.shape == (a.intermediate_size(m), a.hidden_size(m))
        assert a.up_proj(m, i).weight.shape == (a.intermediate_size(m), a.hidden_size(m))
        assert a.down_proj(m, i).weight.shape == (a.hidden_size(m), a.intermediate_size(m))
        assert a.mlp_input_norm(m, i).weight.shape == (a.hidden_size(m),)


@pytest.mark.slow
def test_smollm2_is_the_real_model(smollm2):
    assert type(smollm2.model).__name__ == "LlamaForCausalLM"
    assert smollm2.model.config.num_hidden_layers == 30
    assert sum(p.numel() for p in smollm2.model.parameters()) == pytest.approx(134.5e6, rel=0.01)
