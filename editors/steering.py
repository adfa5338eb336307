"""``steering``: a refusal direction in the residual stream, added or projected out with hooks.

The direction is the difference in means between harmful and harmless source-language (English)
prompts' residual stream after a layer, at the last prompt token. ``mode=add`` adds ``alpha`` times
the direction's own length along it at every position after that layer (pushes towards refusing);
``mode=ablate`` removes the component along it from every write into the residual stream (the classic
way to strip refusals, useful as a deliberately harmful control; exportable as orthogonalised weights). Hooks act per position, so batched, left-padded
generation works unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

from msafety_bench.editing import Editor, EditorConfig, HookEdit
from msafety_bench.errors import UsageError


@dataclass(frozen=True)
class SteeringConfig(EditorConfig):
    mode: str = "add"  # add | ablate
    layer: int | None = None  # None: the layer whose direction separates the two sets best
    alpha: float = 1.0  # in units of the difference-in-means length
    source_lang: str = "en"
    pooling: str = "last"

    def __post_init__(self):
        if self.mode not in ("add", "ablate"):
            raise ValueError(f"mode must be add or ablate, got '{self.mode}'")
        if self.pooling not in ("last", "mean"):
            raise ValueError(f"pooling must be last or mean, got '{self.pooling}'")


class SteeringEdit(HookEdit):
    def __init__(self, editor, config, fingerprint, direction, scale: float, layer: int, info=None):
        super().__init__(editor, config, fingerprint, info)
        self.direction = direction  # unit vector, float32, (d_model,)
        self.scale = scale  # length of the difference in means
        self.layer = layer

    def hooks(self, model):
        from msafety_bench.models.adapters import adapter_for

        adapter = adapter_for(model)
        if self.config.mode == "add":
            return [(adapter.layer(model, self.layer), "forward", self._add)]
        # Ablation removes the direction from everything written into the residual stream: the
        # embeddings and every attention and MLP output, so no layer ever reads it.
        writers = [model.get_input_embeddings()]
        for i in range(adapter.num_layers(model)):
            writers += [adapter.layer(model, i).self_attn.o_proj, adapter.down_proj(model, i)]
        return [(module, "forward", self._ablate) for module in writers]

    def _vector(self, hidden):
        return self.direction.to(device=hidden.device, dtype=hidden.dtype)

    def _add(self, module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        steered = hidden + self.config.alpha * self.scale * self._vector(hidden)
        return (steered, *output[1:]) if isinstance(output, tuple) else steered

    def _ablate(self, module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        r = self._vector(hidden)
        cleaned = hidden - (hidden @ r).unsqueeze(-1) * r
        return (cleaned, *output[1:]) if isinstance(output, tuple) else cleaned

    def merge_into(self, model) -> None:
        """Ablation at every layer equals removing the direction from every residual-stream writer."""
        import torch

        from msafety_bench.models.adapters import adapter_for

        if self.config.mode != "ablate":
            raise UsageError("steering mode=add has no weight form in this architecture: export supports "
                             "mode=ablate, sparse and sft")
        adapter = adapter_for(model)
        with torch.no_grad():
            if model.config.tie_word_embeddings:  # the output head must keep reading the old rows
                model.lm_head.weight = torch.nn.Parameter(model.get_input_embeddings().weight.detach().clone())
                model.config.tie_word_embeddings = False
            r = self.direction.to(torch.float64)
            writers = [model.get_input_embeddings().weight]  # rows write into the stream
            for i in range(adapter.num_layers(model)):
                layer = adapter.layer(model, i)
                writers += [layer.self_attn.o_proj.weight.T, adapter.down_proj(model, i).weight.T]
            for w in writers:  # each (inputs, d_model) view: remove the component along r
                w64 = w.to(torch.float64)
                w.copy_((w64 - (w64 @ r).unsqueeze(-1) * r).to(w.dtype))

    def save(self, folder):
        from msafety_bench.editing import _save_artifact

        self.info.update(scale=self.scale, layer=self.layer)
        _save_artifact(folder, {"direction": self.direction.contiguous()}, self)

    @classmethod
    def load(cls, folder, config):
        from msafety_bench.editing import _load_artifact

        tensors, meta = _load_artifact(folder)
        info = meta["info"]
        return cls(meta["editor"], config, meta["fingerprint"], tensors["direction"], info["scale"], info["layer"], info)


class SteeringEditor(Editor):
    name = "steering"
    Config = SteeringConfig

    edit_class = SteeringEdit

    def fit_new(self, loaded, calibration, config: SteeringConfig, context, fingerprint) -> SteeringEdit:
        from msafety_bench.representations import collect

        src = [r for r in calibration if r.lang == config.source_lang]
        harmful = [r.prompt for r in src if r.label == "harmful"]
        harmless = [r.prompt for r in src if r.label == "harmless"]
        if not harmful or not harmless:
            raise UsageError(f"steering: calibration data needs harmful and harmless '{config.source_lang}' prompts")
        n_layers = loaded.adapter.num_layers(loaded.model)
        acts = collect(loaded, harmful + harmless, list(range(n_layers)), ("resid",), config.pooling,
                       progress=context.progress, cache=context.activation_cache(),
                       fingerprint=context.base_fingerprint)["resid"].double()
        h, s = acts[: len(harmful)], acts[len(harmful):]
        diff = h.mean(0) - s.mean(0)  # (layers, d_model)
        unit = diff / diff.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        proj_h, proj_s = (h * unit).sum(-1), (s * unit).sum(-1)  # (n, layers)
        separation = (proj_h.mean(0) - proj_s.mean(0)) / ((proj_h.var(0) + proj_s.var(0)) / 2).sqrt().clamp_min(1e-12)
        layer = int(separation.argmax()) if config.layer is None else config.layer
        if not 0 <= layer < n_layers:
            raise UsageError(f"steering: layer={layer} is outside 0..{n_layers - 1}")
        return SteeringEdit(self.name, config, fingerprint, unit[layer].float(), float(diff[layer].norm()), layer,
                            {"separation_per_layer": [round(float(x), 3) for x in separation]})
