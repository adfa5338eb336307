"""``sparse``: Multilingual Safety Alignment via Sparse Weight Editing (Liang, Wang, Wang, 2026).

Training-free and closed-form. At an MLP layer, a few "safety neurons" S (neurons whose activation
separates harmful from harmless prompts) get new input weights so that harmful prompts in the target
languages produce the pre-activations their English parallels produce, while harmless prompts keep
theirs:

    min_dW ||X dW - D||^2/n + gamma ||Xs dW||^2/ns + lam_abs ||dW||^2,   rank(dW) <= r

X: MLP inputs of harmful target-language prompts, D = X_en W_S - X W_S (gap to English at S),
Xs: MLP inputs of harmless prompts, lam_abs = lam * trace(X^T X / n) / d (the harmful Gram only, so
a gamma sweep keeps the ridge). With Q = X^T X/n + gamma Xs^T Xs/ns + lam_abs I = R^T R and
M = Q^-1 X^T D / n (ridge solution), dW = R^-1 SVD_r(R M) is optimal (Eckart-Young in the whitened
variable R dW). ``constraint=nullspace`` is the hard form of the gamma penalty: dW = N V with N the
null space of the harmless inputs (eigenvalues of Xs^T Xs/ns below null_tol times the largest), the
same closed form solved for V. All algebra in float64.

Several layers (``layer=16,17,18`` or ``layers=top3``) are fitted in increasing order, each on
activations read with the earlier layers' edits applied; layers and neurons are chosen on the
unedited model.

Paper-fixed: neuron criteria (z-score of the harmful-harmless mean gap > tau_mag = 2.0, or Cohen's
d > tau_stat = 1.0, union), gate projection, closed form, rank 32. Left open by the paper and
exposed here: pooling, layers, projection, Gram normalisation (row counts), gamma, lam, constraint,
one- or two-sided criteria, neuron selection (safety | probe | random | all).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import ClassVar

from msafety_bench.editing import Editor, EditorConfig, WeightDeltaEdit
from msafety_bench.errors import UsageError

PROJECTIONS = ("gate", "up", "both")
NEURON_CHOICES = ("safety", "probe", "random", "all")
CONSTRAINTS = ("soft", "nullspace")


@dataclass(frozen=True)
class SparseConfig(EditorConfig):
    layer: int | str | None = None  # one layer, or several as "16,17,18"; None: see layers
    layers: str | None = None  # "topK": the K layers with the most source-language safety neurons (None: top1)
    projection: str = "gate"
    neurons: str = "safety"
    tau_mag: float = 2.0
    tau_stat: float = 1.0
    two_sided: bool = False  # also count neurons more active on harmless prompts
    rank: int = 32
    gamma: float = 1.0
    lam: float = 0.01  # relative to trace(X^T X / n) / d_model
    constraint: str = "soft"  # soft: the gamma penalty; nullspace: dW confined to the harmless null space
    null_tol: float = 1e-6  # nullspace: keep directions with eigenvalue <= null_tol * the largest
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
        if self.constraint not in CONSTRAINTS:
            raise ValueError(f"constraint must be one of {', '.join(CONSTRAINTS)}, got '{self.constraint}'")
        if self.rank < 1 or self.gamma < 0:
            raise ValueError("rank must be >= 1 and gamma >= 0")
        if not self.lam > 0:
            raise ValueError(f"lambda must be > 0 (it keeps the solve defined when calibration rows < hidden size), "
                             f"got {self.lam}: use e.g. lambda=0.01")
        if not 0 < self.null_tol < 1:
            raise ValueError(f"null_tol must be in (0, 1), got {self.null_tol}")
        if self.layer is not None:
            chosen = _parse_layer_list(self.layer)
            object.__setattr__(self, "layer", chosen[0] if len(chosen) == 1 else ",".join(map(str, chosen)))
            if self.layers is not None:
                raise ValueError("set layer=... or layers=topK, not both")
        if self.layers is not None and not re.fullmatch(r"top[1-9][0-9]*", str(self.layers)):
            raise ValueError(f"layers must be topK with K >= 1 (e.g. layers=top3), got '{self.layers}'")

    def layer_list(self) -> list[int] | None:
        return None if self.layer is None else list(_parse_layer_list(self.layer))

    def top_k(self) -> int:
        return 1 if self.layers is None else int(self.layers[3:])


def _parse_layer_list(value) -> tuple[int, ...]:
    """An index, "16,17,18" or a YAML list -> sorted distinct indices (the order the layers are fitted in)."""
    items = value.split(",") if isinstance(value, str) else value if isinstance(value, (list, tuple)) else [value]
    try:
        chosen = sorted({int(str(i).strip()) for i in items if not isinstance(i, bool)})
    except ValueError:
        chosen = []
    if not chosen or len(chosen) != len(items) or chosen[0] < 0:
        raise ValueError(f"layer must be a layer index or a list like layer=16,17,18, got '{value}'")
    return tuple(chosen)


# -- the math -----------------------------------------------------------------------------------------
def null_space_basis(Xs, tol: float):
    """Orthonormal (d, k) basis of the directions the rows of Xs (almost) do not use: eigenvectors of
    Xs^T Xs / ns with eigenvalue <= tol * the largest. Taken from the SVD of Xs, so exactly unused
    directions come out at machine precision (the Gram's own eigenvectors only reach its square root)."""
    import torch

    ns, d = Xs.shape
    if ns == 0 or not bool(Xs.any()):
        return torch.eye(d, dtype=torch.float64)
    _, S, Vh = torch.linalg.svd(Xs / ns ** 0.5, full_matrices=True)
    eig = torch.zeros(d, dtype=torch.float64)
    eig[:len(S)] = S ** 2
    return Vh.T[:, eig <= tol * eig.max()]


@dataclass
class EditProblem:
    """The regularised, rank-constrained least-squares problem of one edit (float64 tensors)."""

    X: object  # (n, d) harmful target-language MLP inputs
    D: object  # (n, m) gap to the English pre-activations at S
    Xs: object  # (ns, d) harmless MLP inputs
    gamma: float
    lam: float  # ridge strength relative to trace(X^T X / n) / d
    constraint: str = "soft"
    null_tol: float = 1e-6

    def __post_init__(self):
        import torch

        self.X, self.D, self.Xs = (torch.as_tensor(t, dtype=torch.float64) for t in (self.X, self.D, self.Xs))
        d = self.X.shape[1]
        gram_x = self.X.T @ self.X / len(self.X)
        scale = float(torch.trace(gram_x)) / d
        self.lam_abs = self.lam * (scale if scale > 0 else 1.0)
        self.Q = gram_x + self.gamma * self.Xs.T @ self.Xs / max(len(self.Xs), 1) \
            + self.lam_abs * torch.eye(d, dtype=torch.float64)
        # dW = basis @ V: the identity for the soft penalty, the harmless null space for the hard constraint.
        self.basis = null_space_basis(self.Xs, self.null_tol) if self.constraint == "nullspace" else None

    def objective(self, dW) -> float:
        import torch

        dW = torch.as_tensor(dW, dtype=torch.float64)
        fit = ((self.X @ dW - self.D) ** 2).sum() / len(self.X)
        keep = ((self.Xs @ dW) ** 2).sum() / max(len(self.Xs), 1)
        return float(fit + self.gamma * keep + self.lam_abs * (dW ** 2).sum())

    def _reduced(self):
        """Q and X^T D / n in the coordinates of the allowed directions."""
        rhs = self.X.T @ self.D / len(self.X)
        if self.basis is None:
            return self.Q, rhs
        return self.basis.T @ self.Q @ self.basis, self.basis.T @ rhs

    def _lift(self, V):
        return V if self.basis is None else self.basis @ V

    def ridge(self):
        """Minimiser without the rank bound (within the allowed directions), by Cholesky solves."""
        import torch

        Q, rhs = self._reduced()
        return self._lift(torch.cholesky_solve(rhs, torch.linalg.cholesky(Q)))

    def solve(self, rank: int):
        """dW = R^-1 SVD_r(R M) with Q = R^T R, in the allowed directions."""
        import torch

        Q, rhs = self._reduced()
        L = torch.linalg.cholesky(Q)
        R = L.mT  # upper triangular, Q = R^T R
        U, S, Vh = torch.linalg.svd(R @ torch.cholesky_solve(rhs, L), full_matrices=False)
        r = min(rank, len(S))
        Z = (U[:, :r] * S[:r]) @ Vh[:r]
        return self._lift(torch.linalg.solve_triangular(R, Z, upper=True))


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
        from msafety_bench.representations import KINDS, collect

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
        prompts = [r.prompt for r in records]
        index = {(r.lang, r.label, r.id): i for i, r in enumerate(records)}
        n_layers = adapter.num_layers(model)
        cache = context.activation_cache()
        # One read of every layer serves layer choice, neuron choice and the first layer's fit; it is
        # cached, so the random control, a sweep or another layer reads nothing again.
        base = collect(loaded, prompts, range(n_layers), KINDS, config.pooling, progress=context.progress,
                       cache=cache, fingerprint=context.base_fingerprint)

        def rows(lang, label):
            return [i for (lg, lb, _), i in index.items() if lg == lang and lb == label]

        masks = {lang: safety_neuron_mask(base["neuron"][rows(lang, "harmful")], base["neuron"][rows(lang, "harmless")],
                                          config.tau_mag, config.tau_stat, config.two_sided)
                 for lang in (src, *targets)}
        per_layer = masks[src].sum(-1)
        layers = self._layers(config, per_layer, n_layers)

        # Harmful target prompts that have an English parallel, and every harmless prompt.
        pairs = [(i, index[(src, "harmful", rid)]) for (lg, lb, rid), i in index.items()
                 if lg in targets and lb == "harmful" and (src, "harmful", rid) in index]
        low, en = [p[0] for p in pairs], [p[1] for p in pairs]
        harmless = [i for (_, lb, _), i in index.items() if lb == "harmless"]
        projections = ("gate", "up") if config.projection == "both" else (config.projection,)
        random_draws = torch.Generator().manual_seed(config.seed)
        deltas: dict = {}
        details: dict = {}
        for k, layer in enumerate(layers):
            safety = masks[src][layer].nonzero().flatten()
            if len(safety) == 0:
                raise UsageError(f"sparse: no {src} safety neurons at layer {layer}: lower tau_mag/tau_stat or "
                                 f"pick another layer")
            neurons = self._select(config, safety, base["neuron"][:, layer], rows(src, "harmful"),
                                   rows(src, "harmless"), random_draws)
            if k == 0:
                mlp_in, resid = base["mlp_in"][:, layer], base["resid"][:, layer]
            else:  # the earlier layers' edits change what this layer reads
                with WeightDeltaEdit(self.name, config, fingerprint, dict(deltas)).apply(model):
                    read = collect(loaded, prompts, [layer], ("mlp_in", "resid"), config.pooling,
                                   progress=context.progress, cache=cache,
                                   fingerprint=_edited_fingerprint(context.base_fingerprint, deltas))
                mlp_in, resid = read["mlp_in"][:, 0], read["resid"][:, 0]
            X, X_en, Xs = mlp_in[low].double(), mlp_in[en].double(), mlp_in[harmless].double()
            layer_deltas, fit = self._fit_layer(model, adapter, layer, neurons, projections, X, X_en, Xs, config)
            deltas.update(layer_deltas)
            after = self._layer_output_edited(model, adapter, layer, layer_deltas, mlp_in, resid, config)
            details[str(layer)] = {
                "neurons": neurons.tolist(), "n_neurons": len(neurons),
                "safety_neurons_at_layer": {lang: int(masks[lang][layer].sum()) for lang in (src, *targets)},
                "jaccard_at_layer": {a: {b: round(jaccard(masks[a][layer], masks[b][layer]), 4)
                                         for b in (src, *targets)} for a in (src, *targets)},
                "fit": fit,
                "cosine_to_source": self._cosine(records, index, targets, src, base["resid"][:, layer], after),
            }
        edit = WeightDeltaEdit(self.name, config, fingerprint, deltas)
        deepest = details[str(layers[-1])]
        edit.info.update({
            "layers": layers, "layer": layers[0] if len(layers) == 1 else layers, "projections": list(projections),
            "n_neurons": sum(v["n_neurons"] for v in details.values()),
            "safety_neurons_per_layer": {src: per_layer.tolist()},
            # The deepest edited layer's output with the whole edit applied (what later layers read).
            "cosine_to_source": deepest["cosine_to_source"], "jaccard_at_layer": deepest["jaccard_at_layer"],
            "cosine_method": "exact (last token)" if config.pooling == "last" else
                             "approximate (MLP applied to the mean-pooled input)",
            "lambda_scale": "trace(X^T X / n) / d_model", "per_layer": details,
            "target_languages": list(targets), "n_pairs": len(pairs), "n_harmless": len(harmless),
        })
        return edit

    @staticmethod
    def _layers(config: SparseConfig, per_layer, n_layers: int) -> list[int]:
        chosen = config.layer_list()
        if chosen is None:
            if config.top_k() > n_layers:
                raise UsageError(f"sparse: layers={config.layers} but the model has {n_layers} layers")
            ranked = sorted(range(n_layers), key=lambda i: (-int(per_layer[i]), i))  # ties: the earlier layer
            return sorted(ranked[:config.top_k()])
        outside = [i for i in chosen if not 0 <= i < n_layers]
        if outside:
            raise UsageError(f"sparse: layer={config.layer} is outside 0..{n_layers - 1}")
        return chosen

    @staticmethod
    def _select(config, safety, neuron_acts, harm_rows, harmless_rows, random_draws):
        """This layer's edited neurons; random and probe take as many as there are safety neurons."""
        import torch

        d_ff = neuron_acts.shape[-1]
        if config.neurons == "safety":
            return safety
        if config.neurons == "all":
            return torch.arange(d_ff)
        if config.neurons == "random":
            return torch.randperm(d_ff, generator=random_draws)[: len(safety)].sort().values
        return probe_neurons(neuron_acts[harm_rows], neuron_acts[harmless_rows], len(safety), config.seed)

    def _fit_layer(self, model, adapter, layer, neurons, projections, X, X_en, Xs, config):
        import torch

        names = {id(p): n for n, p in model.named_parameters()}
        deltas, fit = {}, {}
        for proj in projections:
            module = adapter.gate_proj(model, layer) if proj == "gate" else adapter.up_proj(model, layer)
            W_S = module.weight.detach()[neurons].double().cpu().T  # (d_model, m)
            D = X_en @ W_S - X @ W_S
            problem = EditProblem(X, D, Xs, config.gamma, config.lam, config.constraint, config.null_tol)
            if problem.basis is not None and problem.basis.shape[1] == 0:
                raise UsageError(f"sparse: the harmless inputs at layer {layer} use every direction above "
                                 f"null_tol={config.null_tol}: raise null_tol or use constraint=soft")
            dW = problem.solve(config.rank)
            deltas[names[id(module.weight)]] = (neurons.clone(), dW.T.float().contiguous())
            fit[proj] = {"gap_before": float(D.norm() / len(X) ** 0.5),
                         "gap_after": float((D - X @ dW).norm() / len(X) ** 0.5),
                         "harmless_shift": float((Xs @ dW).norm() / max(len(Xs), 1) ** 0.5),
                         "objective_zero": problem.objective(torch.zeros_like(dW)),
                         "objective": problem.objective(dW), "lambda_abs": problem.lam_abs}
            if problem.basis is not None:
                fit[proj]["null_dim"] = int(problem.basis.shape[1])
        return deltas, fit

    def _layer_output_edited(self, model, adapter, layer, layer_deltas, mlp_in, resid, config):
        """The layer's output with its MLP edited, from what was read: resid - mlp(x) + mlp_edited(x).
        The MLP acts per position, so this is exact for last-token pooling; for mean pooling it applies
        the MLP to the pooled input (an approximation, recorded as such)."""
        import torch

        mlp = adapter.mlp(model, layer)
        param = next(mlp.parameters())
        x = mlp_in.to(param.device, param.dtype).unsqueeze(1)
        with torch.no_grad():
            plain = mlp(x)
            with WeightDeltaEdit(self.name, config, "", layer_deltas).apply(model):
                edited = mlp(x)
        return resid + (edited - plain)[:, 0].to("cpu", torch.float32)

    @staticmethod
    def _cosine(records, index, targets, src, before, after) -> dict:
        """Mean cosine of each target language's harmful prompts to their English parallels."""
        cosine = {}
        for lang in targets:
            idx = [i for (lg, lb, rid), i in index.items()
                   if lg == lang and lb == "harmful" and (src, "harmful", rid) in index]
            en_idx = [index[(src, "harmful", records[i].id)] for i in idx]
            cosine[lang] = {"before": mean_cosine(before[idx], before[en_idx]),
                            "after": mean_cosine(after[idx], after[en_idx])}
        return cosine


def _edited_fingerprint(base: str, deltas: dict) -> str:
    """Names the weights with ``deltas`` added to the model ``base`` names (an activation cache key)."""
    digest = hashlib.sha256(base.encode())
    for name in sorted(deltas):
        rows, delta = deltas[name]
        digest.update(name.encode())
        digest.update(rows.numpy().tobytes())
        digest.update(delta.numpy().tobytes())
    return digest.hexdigest()[:32]
