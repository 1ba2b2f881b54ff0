"""Convexity-based layer pruning: the graph convexity score on hand-checked toys, per-layer embeddings that
equal the truncated model's own embedding, and truncated models that trim, save and reload exactly."""
import copy
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import torch

from kwyn.backbones.wav2vec2 import Wav2Vec2Backbone
from kwyn.backbones.whisper import WhisperEncoderBackbone
from kwyn.convexity import (graph_convexity, layer_convexity, layer_embeddings, most_convex_layer,
                            prune_to_most_convex)
from kwyn.heads import MLPHead
from kwyn.masks import MaskSet
from kwyn.model import TaskModel
from kwyn.trim import load_trimmed, save_trimmed, trim_model

WHISPER = dict(num_mel_bins=16, d_model=32, encoder_layers=3, encoder_attention_heads=4, encoder_ffn_dim=24,
               max_source_positions=60)
W2V_TINY = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
                conv_dim=(16,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), num_conv_pos_embeddings=16,
                num_conv_pos_embedding_groups=4)
BACKBONES = {
    "whisper": lambda: WhisperEncoderBackbone(WHISPER),
    "wav2vec2": lambda: Wav2Vec2Backbone({"model_type": "wav2vec2", **W2V_TINY}),  # post-norm: no final norm
    "wav2vec2-stable": lambda: Wav2Vec2Backbone({"model_type": "wav2vec2", "feat_extract_norm": "layer",
                                                 "do_stable_layer_norm": True, **W2V_TINY}),  # final norm
    "hubert": lambda: Wav2Vec2Backbone({"model_type": "hubert", **W2V_TINY}),
    "wavlm": lambda: Wav2Vec2Backbone({"model_type": "wavlm", **W2V_TINY}),
}


def audio(batch=3, samples=4000, seed=1):
    return 0.1 * torch.randn(batch, samples, generator=torch.Generator().manual_seed(seed))


def build(name, seed=0):
    torch.manual_seed(seed)
    return BACKBONES[name]().eval()


# -- graph convexity ------------------------------------------------------------------------
def test_separable_clusters_are_perfectly_convex():
    rng = np.random.default_rng(0)
    line = np.c_[np.arange(30.0), rng.normal(scale=0.01, size=(30, 3))]  # a noisy line: its kNN graph is connected
    x = np.r_[line, line + 1000.0]
    y = [0] * 30 + [1] * 30
    assert graph_convexity(x, y, k=3) == 1.0
    assert graph_convexity(torch.tensor(x, dtype=torch.float32), torch.tensor(y), k=3, pairs_per_class=10) == 1.0


def test_interleaved_classes_score_low():
    rng = np.random.default_rng(0)
    blob = rng.normal(size=(200, 8))
    shared = graph_convexity(blob, rng.integers(0, 2, 200), k=5)
    alternating = graph_convexity(np.arange(40.0)[:, None], np.arange(40) % 2, k=2)
    assert 0.3 < shared < 0.6
    assert alternating < 0.6
    # the same blob split along one axis is convex-ish, well above the random split
    assert graph_convexity(blob, blob[:, 0] > 0, k=5) > shared + 0.25


def test_hand_built_path_graph():
    # points 0, 1, 3, 6, 10 on a line, k = 1: each point's nearest neighbour is its left one (1's is 0),
    # so the symmetric graph is the path 0-1-3-6-10 (vertices 0..4)
    x = np.array([0.0, 1.0, 3.0, 6.0, 10.0])[:, None]
    y = [0, 0, 1, 0, 1]
    # class 0 = {0, 1, 3}: (0,1) direct edge -> 1; (0,3) via 1 (in), 2 (out) -> 1/2; (1,3) via 2 -> 0:
    # mean 1/2. class 1 = {2, 4}: (2,4) via 3 (out) -> 0. Layer score: mean over classes = 1/4
    assert graph_convexity(x, y, k=1) == pytest.approx(0.25, abs=1e-12)
    # counting the endpoints too would give (1 + 3/4 + 2/3)/3 and 2/3, mean 0.736...: not the definition
    # two components {0, 1} and {2, 3}; class 0 = {0, 1, 2}: (0,1) -> 1, (0,2) and (1,2) no path -> 0; class 1
    # has a single example: no pair, left out. Score 1/3
    assert graph_convexity(np.array([0.0, 1.0, 100.0, 101.0])[:, None], [0, 0, 0, 1], k=1) == pytest.approx(1 / 3)


def test_pair_sampling_is_seeded():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(80, 4)), rng.integers(0, 3, 80)
    a = graph_convexity(x, y, k=4, pairs_per_class=20, seed=5)
    assert a == graph_convexity(x, y, k=4, pairs_per_class=20, seed=5)
    assert {graph_convexity(x, y, k=4, pairs_per_class=20, seed=s) for s in range(4)} != {a}
    # with at least as many pairs as exist, every pair is scored and the seed does not matter
    assert graph_convexity(x, y, k=4, pairs_per_class=10_000, seed=0) == graph_convexity(x, y, k=4,
                                                                                          pairs_per_class=10_000,
                                                                                          seed=9)


@pytest.mark.parametrize("args, match", [
    ((np.zeros((5, 2)), [0, 0, 1, 1], 2), "5 embeddings but 4 labels"),
    ((np.zeros((4, 2)), [0, 1, 2, 3], 2), "no class has 2"),
    ((np.random.rand(4, 2), [0, 0, 1, 1], 4), "k must be"),
    ((np.random.rand(4, 2), [0, 0, 1, 1], 0), "k must be"),
    ((np.zeros(4), [0, 0, 1, 1], 2), r"\(N, D\)"),
    ((np.array([[0.0], [np.nan], [1.0], [2.0]]), [0, 0, 1, 1], 2), "NaN"),
    ((np.random.rand(4, 2), [0, 0, 1, 1], 2, 0), "pairs_per_class"),
])
def test_bad_inputs_raise(args, match):
    with pytest.raises(ValueError, match=match):
        graph_convexity(*args)


def test_most_convex_layer():
    assert most_convex_layer([0.2, 0.5, 0.5, 0.1]) == 2  # ties -> the earliest
    assert most_convex_layer([0.9]) == 1
    assert most_convex_layer(np.array([0.1, 0.2, 0.3])) == 3
    with pytest.raises(ValueError):
        most_convex_layer([])
    with pytest.raises(ValueError):
        most_convex_layer([0.1, float("nan")])


def test_tolerance_keeps_the_shallowest_layer_of_a_plateau():
    scores = [0.67, 0.988, 0.985, 0.990]
    assert most_convex_layer(scores) == 4
    assert most_convex_layer(scores, tolerance=0.001) == 4
    assert most_convex_layer(scores, tolerance=0.0025) == 2  # 0.988 >= 0.990 - 0.0025
    assert most_convex_layer(scores, tolerance=1.0) == 1
    with pytest.raises(ValueError, match="tolerance"):
        most_convex_layer(scores, tolerance=-0.1)


# -- backbones: per-layer embeddings and truncation -------------------------------------------
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_layer_embedding_equals_embed_of_truncated_model(name):
    full = build(name)
    x = audio()
    with torch.no_grad():
        per_layer = full.layer_embeddings(x)
        embedded = full.embed(x)
    assert full.num_layers == len(per_layer) == 3
    assert all(e.shape == (3, full.embedding_dim) for e in per_layer)
    torch.testing.assert_close(per_layer[-1], embedded, atol=0, rtol=0)  # the last layer is embed itself
    assert not torch.allclose(per_layer[0], per_layer[1])  # different layers, different embeddings
    sizes = []
    for n in range(1, full.num_layers + 1):
        truncated = copy.deepcopy(full)
        truncated.keep_layers(n)
        assert truncated.num_layers == n
        with torch.no_grad():
            torch.testing.assert_close(truncated.embed(x), per_layer[n - 1], atol=1e-6, rtol=1e-5)
        layer_sites = {s.name.split(".")[0] for s in truncated.mask_sites() if s.name.startswith("layer")}
        assert layer_sites == {f"layer{i}" for i in range(n)}
        sizes.append(truncated.param_count())
    assert sizes[0] < sizes[1] < sizes[2] == full.param_count()


@pytest.mark.parametrize("name", ["whisper", "wav2vec2", "wav2vec2-stable"])
def test_keep_layers_validates(name):
    model = build(name)
    for bad in (0, 4, -1, True, 1.5, "2"):
        with pytest.raises(ValueError, match="keep_layers"):
            model.keep_layers(bad)
    assert model.num_layers == 3
    model.keep_layers(np.int64(2))  # what most_convex_layer's caller may hand over
    assert model.num_layers == 2
    with pytest.raises(ValueError, match="1..2"):
        model.keep_layers(3)  # layers once dropped are gone


@pytest.mark.parametrize("name", ["whisper", "wav2vec2", "wav2vec2-stable"])
def test_truncated_then_trimmed_model_round_trips_through_disk(name, tmp_path):
    backbone = build(name)
    full_params = backbone.param_count()
    backbone.keep_layers(2)
    assert backbone.param_count() < full_params
    site_units = {s.name: s.units for s in backbone.mask_sites()}
    masks = MaskSet(backbone.mask_sites())
    gen = torch.Generator().manual_seed(3)
    for mask in masks.values():  # a random half of each site's units
        mask.logits.data = torch.where(torch.rand(mask.logits.shape, generator=gen) < 0.5, 1.0, -1.0)
    kept = {k: v.tolist() for k, v in masks.kept_units().items()}
    model = TaskModel(trim_model(backbone, kept), MLPHead(backbone.embedding_dim, 3, hidden=8)).eval()
    save_trimmed(model, kept, site_units, tmp_path / "trimmed")
    rebuilt = load_trimmed(tmp_path / "trimmed")
    assert rebuilt.backbone.num_layers == 2
    assert rebuilt.backbone.param_count() == backbone.param_count()
    x = audio(2)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x), atol=0, rtol=0)


# -- end to end ---------------------------------------------------------------------------------
class _Clips:
    """A dataset as kwyn.data.prepare gives: len, and [i] -> (audio, label)."""

    def __init__(self, audio, labels):
        self.audio, self.labels = audio, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.audio[i], int(self.labels[i])


def test_layer_convexity_scores_every_layer_and_prunes():
    backbone = build("whisper")
    t = torch.arange(4000) / 16000
    gen = torch.Generator().manual_seed(0)
    clips = torch.stack([0.3 * torch.sin(2 * torch.pi * (200 if i % 2 else 3000) * t + torch.rand(1, generator=gen)
                                         * 6) + 0.01 * torch.randn(4000, generator=gen) for i in range(16)])
    labels = [i % 2 for i in range(16)]
    scores = layer_convexity(backbone, _Clips(clips, labels), batch_size=5, k=3, pairs_per_class=20, progress=False)
    assert len(scores) == 3 and all(0.0 <= s <= 1.0 for s in scores)
    # the same clips as a tensor or as batches, labels given: the same scores
    assert layer_convexity(backbone, clips, labels, batch_size=7, k=3, pairs_per_class=20, progress=False) == scores
    assert layer_convexity(backbone, list(clips.split(4)), torch.tensor(labels), k=3, pairs_per_class=20,
                           progress=False) == scores
    # and they are graph_convexity of the stacked per-layer embeddings
    embeddings, own = layer_embeddings(backbone, _Clips(clips, labels), indices=range(16), progress=False)
    assert own == labels
    assert scores == [graph_convexity(e, labels, k=3, pairs_per_class=20) for e in embeddings]
    with pytest.raises(ValueError, match="labels are required"):
        layer_convexity(backbone, clips, progress=False)
    with pytest.raises(ValueError, match="15 labels"):
        layer_convexity(backbone, clips, labels[:15], progress=False)
    kept = prune_to_most_convex(backbone, scores)
    assert kept == most_convex_layer(scores) and backbone.num_layers == kept
