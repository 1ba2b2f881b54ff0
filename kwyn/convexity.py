"""Convexity-based layer pruning (Dorszewski, Tětková, Hansen 2024, "Convexity-based pruning of speech
representation models"), with the graph convexity score of Tětková et al. (2023, "On convex decision
regions in deep network representations").

Per transformer layer, how convex are the class regions of the latent space?
1. Embed a sample of labelled clips: one time-averaged embedding per clip and layer
   (`Backbone.layer_embeddings`, one forward pass per batch).
2. Build a kNN graph over one layer's embeddings: each point is joined to its k nearest
   neighbours (Euclidean), the edge weighted by their Euclidean distance; the graph is made
   symmetric (an edge exists when either point is among the other's k nearest).
3. For pairs of points of the same class, find the shortest path (Dijkstra) between them; the pair's
   score is the share of the path's *intermediate* vertices (endpoints excluded: they are in the class
   by construction) that belong to that class. A pair joined by a direct edge (no intermediate vertex)
   scores 1; a pair with no path (different connected components) scores 0.
4. A class's convexity is the mean over its pairs; the layer's score is the unweighted mean over classes
   (classes with fewer than 2 sampled examples have no pair and are left out).

The model is then pruned by keeping the layers up to the most convex one (argmax, ties -> the earliest;
with `tolerance`, the earliest layer within that much of the best score) and dropping every later layer (`Backbone.keep_layers`); it may then be fine-tuned as usual.

Choices where the papers leave room (documented here, fixed in the code):
- Pairs: all unordered same-class pairs when a class has at most `pairs_per_class` of them, otherwise
  `pairs_per_class` distinct unordered pairs drawn uniformly at random (numpy Generator seeded by
  `seed`), so the score is deterministic for a seed.
- kNN neighbours ties (equal distances) are broken by the lower example index; distances are computed
  in float64 without the matmul shortcut. A zero distance (duplicate embeddings) still makes an edge
  (its weight is clamped to the smallest positive float), so duplicates are neighbours, not strangers.
- Shortest paths with equal length: whichever scipy's Dijkstra returns (deterministic).
"""
from __future__ import annotations

from pathlib import Path
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from kwyn.backbones.base import Backbone

_MATERIALISE_PAIRS = 5_000_000  # classes with more pairs than this sample them by rejection instead


def graph_convexity(embeddings, labels, k: int = 10, pairs_per_class: int = 100, seed: int = 0) -> float:
    """Graph convexity in [0, 1] of the classes of `labels` among `embeddings` (see the module docstring).

    embeddings: (N, D) tensor or array; labels: (N,) class ids (ints, or any values numpy can sort);
    k: neighbours per point in the kNN graph (1 <= k < N); pairs_per_class: same-class pairs scored per
    class at most; seed: seeds the pair sampling.
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import dijkstra

    x = torch.as_tensor(np.asarray(embeddings) if not isinstance(embeddings, torch.Tensor) else embeddings)
    x = x.detach().to("cpu", torch.float64)
    if x.dim() != 2:
        raise ValueError(f"embeddings must be (N, D), got shape {tuple(x.shape)}")
    labels = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be (N,), got shape {labels.shape}")
    n = x.shape[0]
    if labels.shape[0] != n:
        raise ValueError(f"{n} embeddings but {labels.shape[0]} labels")
    if not torch.isfinite(x).all():
        raise ValueError("embeddings contain NaN or infinite values")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k < n:
        raise ValueError(f"k must be an int with 1 <= k < N = {n} (neighbours per point), got {k!r}")
    if isinstance(pairs_per_class, bool) or not isinstance(pairs_per_class, (int, np.integer)) or pairs_per_class < 1:
        raise ValueError(f"pairs_per_class must be a positive int, got {pairs_per_class!r}")
    classes, y = np.unique(labels, return_inverse=True)
    members = [np.flatnonzero(y == c) for c in range(len(classes))]
    members = [m for m in members if len(m) >= 2]
    if not members:
        raise ValueError(f"no class has 2 or more examples (classes: {len(classes)}, examples: {n}): "
                         "convexity needs same-class pairs")

    # symmetric kNN graph, edges weighted by Euclidean distance
    dist = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")
    dist.fill_diagonal_(float("inf"))
    order = torch.sort(dist, dim=1, stable=True).indices[:, :k]  # ties -> lower index
    rows = np.repeat(np.arange(n), k)
    cols = order.numpy().ravel()
    weights = np.maximum(dist.numpy()[rows, cols], np.finfo(np.float64).tiny)
    graph = csr_matrix((weights, (rows, cols)), shape=(n, n))
    graph = graph.maximum(graph.T)

    # same-class pairs (a, b), a < b
    rng = np.random.default_rng(seed)
    pairs_by_class = [_sample_pairs(m, pairs_per_class, rng) for m in members]
    sources = np.unique(np.concatenate([p[:, 0] for p in pairs_by_class]))
    row_of = {int(s): r for r, s in enumerate(sources)}
    lengths, predecessors = dijkstra(graph, directed=False, indices=sources, return_predecessors=True)

    class_scores = []
    for pairs in pairs_by_class:
        scores = []
        for a, b in pairs:
            r = row_of[int(a)]
            if not np.isfinite(lengths[r, b]):
                scores.append(0.0)  # no path
                continue
            inside = total = 0
            v = predecessors[r, b]
            while v != a:  # intermediate vertices, from b's side back to a
                total += 1
                inside += y[v] == y[a]
                v = predecessors[r, v]
            scores.append(inside / total if total else 1.0)
        class_scores.append(float(np.mean(scores)))
    return float(np.mean(class_scores))


def _sample_pairs(members: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """(pairs, 2) member pairs (a < b): all of them if there are at most `count`, else `count` distinct ones."""
    m = len(members)
    total = m * (m - 1) // 2
    if total <= _MATERIALISE_PAIRS:
        i, j = np.triu_indices(m, 1)
        if total > count:
            pick = np.sort(rng.choice(total, size=count, replace=False))
            i, j = i[pick], j[pick]
        return np.stack([members[i], members[j]], axis=1)
    chosen: set[tuple[int, int]] = set()
    while len(chosen) < count:
        i, j = rng.integers(0, m, size=2)
        if i != j:
            chosen.add((min(i, j), max(i, j)))
    idx = np.array(sorted(chosen))
    return np.stack([members[idx[:, 0]], members[idx[:, 1]]], axis=1)


@torch.no_grad()
def layer_embeddings(backbone: Backbone, data, indices: Sequence[int] | None = None, batch_size: int = 32,
                     progress: bool = True) -> tuple[list[torch.Tensor], list | None]:
    """(per layer: (N, dim) embeddings, labels read from the dataset or None) for `data`.

    data: a dataset (`len` and `data[i] -> (audio, label)`, e.g. kwyn.data.prepare's splits; `indices`
    picks the examples, all by default), a (N, samples) audio tensor, or an iterable of (batch, samples)
    audio tensors. The backbone runs in eval mode, one forward pass per batch.
    """
    from kwyn.io import tqdm

    labels = None
    if isinstance(data, torch.Tensor):
        if data.dim() != 2:
            raise ValueError(f"audio must be (N, samples), got shape {tuple(data.shape)}")
        if indices is not None:
            data = data[torch.as_tensor(list(indices), dtype=torch.long)]
        batches: Iterable[torch.Tensor] = data.split(batch_size)
        total = len(batches)
    elif hasattr(data, "__getitem__") and hasattr(data, "__len__") and not isinstance(data, (list, tuple)):
        indices = list(range(len(data))) if indices is None else [int(i) for i in indices]
        chunks = [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]
        labels = [data[i][1] for i in indices]
        batches = (torch.stack([torch.as_tensor(data[i][0]) for i in chunk]) for chunk in chunks)
        total = len(chunks)
    else:
        if indices is not None:
            raise ValueError("indices apply to a dataset or an audio tensor, not to an iterable of batches")
        batches = data
        total = len(data) if hasattr(data, "__len__") else None
    was_training = backbone.training
    backbone.eval()
    per_layer: list[list[torch.Tensor]] = []
    try:
        for audio in tqdm(batches, total=total, desc="layer embeddings", disable=not progress, leave=False):
            outs = backbone.layer_embeddings(audio)
            if not per_layer:
                per_layer = [[] for _ in outs]
            for store, out in zip(per_layer, outs):
                store.append(out.detach().cpu())
    finally:
        backbone.train(was_training)
    if not per_layer:
        raise ValueError("no audio to embed")
    return [torch.cat(store) for store in per_layer], labels


def layer_convexity(backbone: Backbone, data, labels=None, *, indices: Sequence[int] | None = None,
                    batch_size: int = 32, k: int = 10, pairs_per_class: int = 100, seed: int = 0,
                    progress: bool = True) -> list[float]:
    """Graph convexity of the class regions at every transformer layer (list index i - 1 = layer i).

    data: a dataset (labels default to its own, `data[i][1]`), a (N, samples) audio tensor, or an
    iterable of (batch, samples) audio tensors (labels required, in the same order). Embeddings are
    `backbone.layer_embeddings` (time-averaged, one forward pass per batch, with a tqdm bar); every layer
    is scored by `graph_convexity` with the same k, pairs_per_class and seed (so the same pairs).
    """
    embeddings, own_labels = layer_embeddings(backbone, data, indices=indices, batch_size=batch_size,
                                              progress=progress)
    if labels is None:
        if own_labels is None:
            raise ValueError("labels are required when data is audio rather than a dataset")
        labels = own_labels
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    if labels.shape[0] != embeddings[0].shape[0]:
        raise ValueError(f"{embeddings[0].shape[0]} clips embedded but {labels.shape[0]} labels given")
    return [graph_convexity(e, labels, k=k, pairs_per_class=pairs_per_class, seed=seed) for e in embeddings]


def most_convex_layer(scores: Sequence[float], tolerance: float = 0.0) -> int:
    """Layers to keep (1-based): the earliest layer whose score is within `tolerance` of the highest.

    tolerance 0 is the paper's rule (the most convex layer, the earliest on ties). Scores of later
    layers often plateau within sampling noise of each other; a small tolerance then keeps the
    shallowest layer of the plateau instead of whichever one the noise favours.
    """
    scores = [float(s) for s in scores]
    if not scores:
        raise ValueError("no layer scores")
    if any(not np.isfinite(s) for s in scores):
        raise ValueError(f"layer scores must be finite, got {scores}")
    if not 0 <= tolerance <= 1:
        raise ValueError(f"tolerance must be in [0, 1], got {tolerance}")
    best = max(scores)
    return next(i for i, s in enumerate(scores) if s >= best - tolerance) + 1


def prune_to_most_convex(backbone: Backbone, scores: Sequence[float]) -> int:
    """keep_layers(most_convex_layer(scores)) on the backbone, in place; returns the layers kept."""
    if len(scores) != backbone.num_layers:
        raise ValueError(f"{len(scores)} layer scores for a backbone of {backbone.num_layers} layers")
    n = most_convex_layer(scores)
    backbone.keep_layers(n)
    return n


def choose_layers(exp, backbone: Backbone, train_set, run_dir, progress: bool = True) -> dict:
    """Method `convexity` of the grid: score every layer on `convexity.examples` training clips and
    choose how many layers to keep (the most convex one, or `convexity.layers`). The scores are
    written to <run_dir>/convexity.json (reused when the run resumes with the same settings).
    Returns {"layers": n} for the run's architecture."""
    from kwyn.io import read_json, write_json

    cfg = exp.convexity
    if train_set.kind != "label":
        raise ValueError(f"{exp.name}: convexity needs one class label per clip; task {exp.task!r} has "
                         f"{train_set.kind} targets")
    path = Path(run_dir) / "convexity.json"
    settings = {**cfg.model_dump(), "seed": exp.train.seed, "backbone": exp.backbone}
    if path.exists() and read_json(path).get("settings") == settings:
        saved = read_json(path)
        return {"layers": saved["kept_layers"]}
    generator = torch.Generator().manual_seed(exp.train.seed)
    indices = torch.randperm(len(train_set), generator=generator)[:cfg.examples].tolist()
    k = min(cfg.k, len(indices) - 1)
    scores = layer_convexity(backbone, train_set, indices=indices, k=k, pairs_per_class=cfg.pairs_per_class,
                             seed=exp.train.seed, progress=progress)
    layers = cfg.layers if cfg.layers is not None else most_convex_layer(scores, cfg.tolerance)
    if layers > len(scores):
        raise ValueError(f"{exp.name}: convexity.layers = {layers}, but {exp.backbone} has {len(scores)} layers")
    write_json(path, {"scores": scores, "most_convex": most_convex_layer(scores), "kept_layers": layers,
                      "k": k, "examples": len(indices), "settings": settings})
    return {"layers": layers}
