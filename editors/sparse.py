"""``sparse``: Multilingual Safety Alignment via Sparse Weight Editing (Liang, Wang, Wang, 2026).

Training-free and closed-form. At one MLP layer, a few "safety neurons" S (neurons whose activation
separates harmful from harmless prompts) get new input weights so that harmful prompts in the target
languages produce the pre-activations their English parallels produce, while harmless prompts keep
theirs:

    min_dW ||X dW - D||^2/n + gamma ||Xs dW||^2/ns + lam_abs ||dW||^2,   rank(dW) <= r

X: MLP inputs of harmful target-language prompts, D = X_en W_S - X W_S (gap to English at S),
Xs: MLP inputs of harmless prompts, lam_abs = lam * trace(Gram)/d. With Q = Gram + lam_abs I = R^T R
and M = Q^-1 X^T D / n (ridge solution), dW = R^-1 SVD_r(R M) is optimal (Eckart-Young in the
whitened variable R dW). All algebra in float64.

Paper-fixed: neuron criteria (z-score of the harmful-harmless mean gap > tau_mag = 2.0, or Cohen's
d > tau_stat = 1.0, union), gate projection, closed form, rank 32. Left open by the paper and
exposed here: pooling, layer, projection, Gram normalisation (row counts), gamma, lam, one- or
two-sided criteria, neuron selection (safety | probe | random | all).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from msafety_bench.editing import Editor, EditorConfig, WeightDeltaEdit
from msafety_bench.errors import UsageError

PROJECTIONS = ("gate", "up", "both")
NEURON_CHOICES = ("safety", "probe", "random", "all")


@dataclass(frozen=True)
class SparseConfig(EditorConfig):
    layer: int | None = None  # None: the layer with the most source-language safety neurons
    projection: str = "gate"
    neurons: str = "safety"
    tau_mag: float = 2.0
    tau_stat: float = 1.0
    two_sided: bool = False  # also count neurons more active on harmless prompts
    rank: int = 32
    gamma: float = 1.0
    lam: float = 0.01  # relative to trace(Gram) / d_model
    pooling: str = "last"
    languages: str = "all"  # target languages: all non-source, tiers and/or codes
    source_lang: str = "en"
    seed: int = 0  # for neurons=random
    ALIASES: ClassVar[dict] = {"lambda": "lam"}

    def __post_init__(self):
        if self.projection not in PROJECTIONS:
            raise ValueError(f"projection must be one of {', '.join(PROJECTIONS)}, got '{self.projection}'")
        if self.neurons not in NEURON_CHOICES:
            raise ValueError(f"neurons must be one of {', '.join(NEURON_CHOICES)}, got '{self.neurons}'")
        if self.pooling not in ("last", "mean"):
            raise ValueError(f"pooling must be last or mean, got '{self.pooling}'")
        if self.rank < 1 or self.gamma < 0 or self.lam < 0:
            raise ValueError("rank must be >= 1 and gamma, lambda >= 0")


# -- the math -----------------------------------------------------------------------------------------
@dataclass
class EditProblem:
    """The regularised, rank-constrained least-squares problem of one edit (float64 tensors)."""

    X: object  # (n, d) harmful target-language MLP inputs
    D: object  # (n, m) gap to the English pre-activations at S
    Xs: object  # (ns, d) harmless MLP inputs
    gamma: float
    lam: float  # relative ridge strength

    def __post_init__(self):
        import torch

        self.X, self.D, self.Xs = (torch.as_tensor(t, dtype=torch.float64) for t in (self.X, self.D, self.Xs))
        d = self.X.shape[1]
        gram = self.X.T @ self.X / len(self.X) + self.gamma * self.Xs.T @ self.Xs / max(len(self.Xs), 1)
        trace = float(torch.trace(gram))
        self.lam_abs = self.lam * (trace / d if trace > 0 else 1.0)
        self.Q = gram + self.lam_abs * torch.eye(d, dtype=torch.float64)

    def objective(self, dW) -> float:
        import torch

        dW = torch.as_tensor(dW, dtype=torch.float64)
        fit = ((self.X @ dW - self.D) ** 2).sum() / len(self.X)
        keep = ((self.Xs @ dW) ** 2).sum() / max(len(self.Xs), 1)
        return float(fit + self.gamma * keep + self.lam_abs * (dW ** 2).sum())

    def ridge(self):
        """Unconstrained minimiser M = Q^-1 X^T D / n, by Cholesky solves (no inverse formed)."""
        import torch

        L = torch.linalg.cholesky(self.Q)
        return torch.cholesky_solve(self.X.T @ self.D / len(self.X), L)

    def solve(self, rank: int):
        """dW = R^-1 SVD_r(R M) with Q = R^T R."""
        import torch

        R = torch.linalg.cholesky(self.Q).mT  # upper triangular, Q = R^T R
        U, S, Vh = torch.linalg.svd(R @ self.ridge(), full_matrices=False)
        r = min(rank, len(S))
        Z = (U[:, :r] * S[:r]) @ Vh[:r]
        return torch.linalg.solve_triangular(R, Z, upper=True)


def safety_neuron_mask(harmful, harmless, tau_mag: float, tau_stat: float, two_sided: bool = False):
    """(layers, d_ff) boolean mask from pooled activations of shape (n, layers, d_ff)."""
    import torch

    delta = harmful.double().mean(0) - harmless.double().mean(0)
    z = (delta - delta.mean(-1, keepdim=True)) / delta.std(-1, keepdim=True).clamp_min(1e-12)
    pooled_sd = ((harmful.double().var(0) + harmless.double().var(0)) / 2).sqrt().clamp_min(1e-12)
    d = delta / pooled_sd
    if two_sided:
        z, d = z.abs(), d.abs()
    return (z > tau_mag) | (d > tau_stat)


def probe_neurons(harmful, harmless, k: int, seed: int):
    """Top-k neurons by |weight| of an L2-regularised logistic probe on standardised activations."""
    import torch

    x = torch.cat([harmful, harmless]).double()
    y = torch.cat([torch.ones(len(harmful)), torch.zeros(len(harmless))]).double()
    x = (x - x.mean(0)) / x.std(0).clamp_min(1e-8)
    gen = torch.Generator().manual_seed(seed)
    w = (torch.randn(x.shape[1], generator=gen, dtype=torch.float64) * 1e-3).requires_grad_()
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y) + 1e-2 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return torch.topk(w.detach().abs(), k).indices.sort().values


def jaccard(a, b) -> float:
    union = int((a | b).sum())
    return int((a & b).sum()) / union if union else 1.0


def mean_cosine(a, b) -> float:
    import torch

    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1).mean())


# -- the editor ---------------------------------------------------------------------------------------
class SparseEditor(Editor):
    name = "sparse"
    Config = SparseConfig

    edit_class = WeightDeltaEdit

    def fit_new(self, loaded, calibration, config: SparseConfig, context, fingerprint) -> WeightDeltaEdit:
        import torch

        from msafety_bench.data import select_languages
        from msafety_bench.representations import collect

        model, adapter = loaded.model, loaded.adapter
        src = config.source_lang
        available = list(dict.fromkeys(r.lang for r in calibration))
        if src not in available:
            raise UsageError(f"sparse: calibration data has no '{src}' prompts: the source language is needed")
        targets = [lang for lang in select_languages(None if config.languages == "all" else config.languages,
                                                       available, "calibration") if lang != src]
        if not targets:
            raise UsageError("sparse: no target language besides the source: set languages=...")
        records = [r for r in calibration if r.lang in (src, *targets)]
        index = {(r.lang, r.label, r.id): i for i, r in enumerate(records)}
        n_layers = adapter.num_layers(model)
        acts = collect(loaded, [r.prompt for r in records], list(range(n_layers)), ("mlp_in", "neuron", "resid"),
                       config.pooling, progress=context.progress)

        def rows(lang, label):
            return [i for (lg, lb, _), i in index.items() if lg == lang and lb == label]

        masks = {lang: safety_neuron_mask(acts["neuron"][rows(lang, "harmful")], acts["neuron"][rows(lang, "harmless")],
                                          config.tau_mag, config.tau_stat, config.two_sided)
                 for lang in (src, *targets)}
        per_layer = masks[src].sum(-1)
        layer = int(per_layer.argmax()) if config.layer is None else config.layer
        if not 0 <= layer < n_layers:
            raise UsageError(f"sparse: layer={layer} is outside 0..{n_layers - 1}")
        safety = masks[src][layer].nonzero().flatten()
        if len(safety) == 0:
            raise UsageError(f"sparse: no {src} safety neurons at layer {layer}: lower tau_mag/tau_stat or pick a layer")
        neurons = self._select(config, safety, acts, rows(src, "harmful"), rows(src, "harmless"), layer)

        # Harmful target prompts that have an English parallel, and every harmless prompt.
        pairs = [(i, index[(src, "harmful", rid)]) for (lg, lb, rid), i in index.items()
                 if lg in targets and lb == "harmful" and (src, "harmful", rid) in index]
        low, en = [p[0] for p in pairs], [p[1] for p in pairs]
        X = acts["mlp_in"][low, layer].double()
        X_en = acts["mlp_in"][en, layer].double()
        Xs = acts["mlp_in"][[i for (_, lb, _), i in index.items() if lb == "harmless"], layer].double()
        names = {id(p): n for n, p in model.named_parameters()}
        projections = ("gate", "up") if config.projection == "both" else (config.projection,)
        deltas, gaps = {}, {}
        for proj in projections:
            module = adapter.gate_proj(model, layer) if proj == "gate" else adapter.up_proj(model, layer)
            W_S = module.weight.detach()[neurons].double().cpu().T  # (d_model, m)
            D = X_en @ W_S - X @ W_S
            problem = EditProblem(X, D, Xs, config.gamma, config.lam)
            dW = problem.solve(config.rank)
            deltas[names[id(module.weight)]] = (neurons.clone(), dW.T.float().contiguous())
            gaps[proj] = {"gap_before": float(D.norm() / len(X) ** 0.5),
                          "gap_after": float((D - X @ dW).norm() / len(X) ** 0.5),
                          "harmless_shift": float((Xs @ dW).norm() / max(len(Xs), 1) ** 0.5),
                          "objective_zero": problem.objective(torch.zeros_like(dW)),
                          "objective": problem.objective(dW), "lambda_abs": problem.lam_abs}
        edit = WeightDeltaEdit(self.name, config, fingerprint, deltas)

        # Diagnostics: cosine to English at the edited layer's output, before and after the edit.
        harmful = {lang: [index[(lang, "harmful", rid)] for (lg, lb, rid) in index
                          if lg == lang and lb == "harmful" and (src, "harmful", rid) in index]
                   for lang in targets}
        harmful_rows = sorted({i for v in harmful.values() for i in v} | set(en))
        with edit.apply(model):
            after = collect(loaded, [records[i].prompt for i in harmful_rows], [layer], ("resid",), config.pooling)
        position = {row: k for k, row in enumerate(harmful_rows)}
        before_resid = acts["resid"][:, layer]
        after_resid = after["resid"][:, 0]
        cosine = {}
        for lang, idx in harmful.items():
            en_idx = [index[(src, "harmful", records[i].id)] for i in idx]
            cosine[lang] = {
                "before": mean_cosine(before_resid[idx], before_resid[en_idx]),
                "after": mean_cosine(after_resid[[position[i] for i in idx]], after_resid[[position[i] for i in en_idx]]),
            }
        langs = (src, *targets)
        edit.info.update({
            "layer": layer, "projections": list(projections), "n_neurons": len(neurons),
            "neurons": neurons.tolist(), "safety_neurons_per_layer": {src: per_layer.tolist()},
            "safety_neurons_at_layer": {lang: int(masks[lang][layer].sum()) for lang in langs},
            "jaccard_at_layer": {a: {b: round(jaccard(masks[a][layer], masks[b][layer]), 4) for b in langs}
                                 for a in langs},
            "cosine_to_source": cosine, "fit": gaps, "target_languages": list(targets),
            "n_pairs": len(pairs), "n_harmless": len(Xs),
        })
        return edit

    @staticmethod
    def _select(config, safety, acts, harm_rows, harmless_rows, layer):
        import torch

        d_ff = acts["neuron"].shape[-1]
        if config.neurons == "safety":
            return safety
        if config.neurons == "all":
            return torch.arange(d_ff)
        if config.neurons == "random":
            gen = torch.Generator().manual_seed(config.seed)
            return torch.randperm(d_ff, generator=gen)[: len(safety)].sort().values
        return probe_neurons(acts["neuron"][harm_rows, layer], acts["neuron"][harmless_rows, layer],
                             len(safety), config.seed)
