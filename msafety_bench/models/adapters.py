"""Per-family names of the modules editors touch, so no editor hard-codes an attribute path.

Terms used by editors:
- decoder layer i: its output is the residual stream after layer i;
- MLP input at layer i: output of the post-attention norm (what gate_proj and up_proj read);
- neuron activation at layer i: input of down_proj, act(gate_proj(x)) * up_proj(x).
"""

from __future__ import annotations

from dataclasses import dataclass

from msafety_bench.errors import UsageError


@dataclass(frozen=True)
class DecoderAdapter:
    """Llama-style decoder: ``model.model.layers[i]`` with ``mlp.{gate,up,down}_proj``."""

    family: str
    layers_path: str = "model.layers"
    mlp_norm_attr: str = "post_attention_layernorm"

    def layers(self, model):
        obj = model
        for part in self.layers_path.split("."):
            obj = getattr(obj, part)
        return obj

    def num_layers(self, model) -> int:
        return len(self.layers(model))

    def layer(self, model, i: int):
        return self.layers(model)[i]

    def mlp(self, model, i: int):
        return self.layer(model, i).mlp

    def mlp_input_norm(self, model, i: int):
        return getattr(self.layer(model, i), self.mlp_norm_attr)

    def gate_proj(self, model, i: int):
        return self.mlp(model, i).gate_proj

    def up_proj(self, model, i: int):
        return self.mlp(model, i).up_proj

    def down_proj(self, model, i: int):
        return self.mlp(model, i).down_proj

    def hidden_size(self, model) -> int:
        return model.config.hidden_size

    def intermediate_size(self, model) -> int:
        return model.config.intermediate_size


LLAMA = DecoderAdapter("llama")
QWEN2 = DecoderAdapter("qwen2")

# model_type -> adapter; families sharing the layout reuse one.
ADAPTERS = {"llama": LLAMA, "qwen2": QWEN2, "qwen3": QWEN2, "mistral": LLAMA}


def adapter_for(model) -> DecoderAdapter:
    model_type = getattr(model.config, "model_type", None)
    try:
        return ADAPTERS[model_type]
    except KeyError:
        raise UsageError(
            f"model type '{model_type}' has no module adapter: supported are {', '.join(sorted(ADAPTERS))}"
        ) from None
