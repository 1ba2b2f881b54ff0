"""Wav2Vec2, HuBERT and WavLM: transformers' own models, hooked for masks and trimmed in place.

All three share one layout: a 7-layer conv feature extractor (raw 16 kHz audio -> 50 frames/s),
a feature projection (LayerNorm over the last conv's channels, then Linear to hidden_size), a
positional conv embedding and a transformer encoder. Mask sites, as in the authors' code:

- `conv0`..`conv6`: output channels of each conv layer, after its activation;
- `layer{i}.attention`: heads, on the per-head attention output entering out_proj;
- `layer{i}.ffn`: FFN intermediate units, after the activation, entering output_dense.

Trimming is exact (the trimmed model computes what the masked one does):
- conv 0 in 'group' norm mode has a per-channel GroupNorm: its channels are independent, so its
  affine and group count are cut with the conv.
- conv 6 feeds feature_projection's LayerNorm over all its channels. A masked channel is zero
  there, yet still counts in the mean and variance, and its normalised value (-mean/std, the
  same for every removed channel) times its affine reaches the projection. The trimmed model
  keeps that: ZeroPaddedLayerNorm normalises over the original width and emits -mean/std as one
  extra channel, whose projection column and bias absorb the removed channels' affine.
- a layer with no head left returns out_proj's bias (NoHeadAttention); an FFN with no unit left
  returns output_dense's bias (zero-width Linear layers do that by themselves).

Not sites: the positional conv embedding and the hidden_size stream. Left out, and why:
- conv layers in 'layer' norm mode (wav2vec2-large-lv60 style): each conv has a LayerNorm over
  its channels before the activation, so a removed channel's pre-norm value still shifts the
  statistics of the kept ones; it cannot be removed without computing it.
- WavLM heads: its attention calls F.multi_head_attention_forward with out_proj's weights (no
  out_proj call to hook), gates its relative position bias by per-head slices of the layer input,
  and shares layer 0's per-head bias with every layer. WavLM offers conv and FFN sites only.

Sequence (ASR): the last hidden state per frame (50 frames/s), with valid frames per clip.

Inference only: SpecAugment masking and LayerDrop are switched off in every config (also when
loading a checkpoint), and the model starts in eval mode.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn
from transformers import (HubertConfig, HubertModel, Wav2Vec2Config, Wav2Vec2Model, WavLMConfig,
                          WavLMModel)

from kwyn import prune
from kwyn.backbones.base import Backbone, full_lengths
from kwyn.sites import MaskSite

MODELS = {
    "wav2vec2": (Wav2Vec2Config, Wav2Vec2Model),
    "hubert": (HubertConfig, HubertModel),
    "wavlm": (WavLMConfig, WavLMModel),
}
# forced on every config: no SpecAugment, no LayerDrop (and so no unused masked_spec_embed)
INFERENCE = {"apply_spec_augment": False, "mask_time_prob": 0.0, "mask_feature_prob": 0.0, "layerdrop": 0.0}
# our own config keys, next to the transformers config fields
KWYN_KEYS = ("model_type", "source", "normalize")
# transformers config fields that say nothing about the architecture
NOT_ARCHITECTURE = ("transformers_version", "architectures", "_name_or_path", "dtype", "torch_dtype", "model_type")


class Wav2Vec2Backbone(Backbone):
    """config: model_type ("wav2vec2" | "hubert" | "wavlm"); source (hub id or directory the weights
    come from: from_pretrained's default checkpoint); normalize (per-clip zero-mean unit-variance
    input, as the checkpoint's feature extractor does); plus any transformers config fields."""

    family = "wav2vec2"
    sample_rate = 16000

    def __init__(self, config: dict, _model: nn.Module | None = None):
        model_type = config.get("model_type", "wav2vec2")
        if model_type not in MODELS:
            raise ValueError(f"unknown model_type {model_type!r}; known: {sorted(MODELS)}")
        config = {"model_type": model_type, "source": None, "normalize": model_type == "wav2vec2",
                  **config, **INFERENCE}
        super().__init__(config)
        config_cls, model_cls = MODELS[model_type]
        if _model is None:
            _model = model_cls(config_cls(**{k: v for k, v in config.items() if k not in KWYN_KEYS}))
        self.model = _model
        self.eval()

    @classmethod
    def from_pretrained(cls, checkpoint: str | None = None, **config) -> "Wav2Vec2Backbone":
        """Weights from a local directory (save_pretrained layout) or a hub id (downloaded once,
        then read from the cache). The checkpoint's own config defines the architecture; only
        model_type and normalize are taken from `config`."""
        model_type = config.get("model_type", "wav2vec2")
        if model_type not in MODELS:
            raise ValueError(f"unknown model_type {model_type!r}; known: {sorted(MODELS)}")
        source = str(checkpoint or config.get("source") or "")
        if not source:
            raise ValueError("no checkpoint given: pass a hub id or a local directory")
        model, info = _load_transformers(MODELS[model_type][1], source)
        broken = {k: info[k] for k in ("missing_keys", "mismatched_keys") if info.get(k)}
        if broken:
            raise KeyError(f"checkpoint {source} does not match {MODELS[model_type][1].__name__}:\n"
                           f"  missing keys: {_short(info.get('missing_keys'))}\n"
                           f"  unexpected keys: {_short(info.get('unexpected_keys'))}\n"
                           f"  mis-shaped keys: {_short(info.get('mismatched_keys'))}")
        fields = {k: v for k, v in model.config.to_diff_dict().items() if k not in NOT_ARCHITECTURE}
        kwyn = {k: config[k] for k in KWYN_KEYS if k in config}
        return cls({**fields, **kwyn, "model_type": model_type, "source": source}, _model=model).eval()

    @property
    def hf_config(self):
        return self.model.config

    @property
    def embedding_dim(self) -> int:
        return self.hf_config.hidden_size

    def _conv_layers(self):
        return self.model.feature_extractor.conv_layers

    def mask_sites(self) -> list[MaskSite]:
        sites = []
        if self.hf_config.feat_extract_norm == "group":  # 'layer' mode: see the module docstring
            for i, layer in enumerate(self._conv_layers()):
                sites.append(MaskSite(f"conv{i}", "conv_channels", layer.conv.out_channels,
                                      module=f"model.feature_extractor.conv_layers.{i}", hook="output",
                                      layout="channels_first"))
        for i, layer in enumerate(self.model.encoder.layers):
            prefix = f"model.encoder.layers.{i}"
            if self.hf_config.model_type != "wavlm":  # WavLM heads: see the module docstring
                sites.append(MaskSite(f"layer{i}.attention", "attention_heads", layer.attention.num_heads,
                                      module=f"{prefix}.attention.out_proj", hook="input", layout="heads"))
            sites.append(MaskSite(f"layer{i}.ffn", "ffn_units", layer.feed_forward.output_dense.in_features,
                                  module=f"{prefix}.feed_forward.output_dense", hook="input",
                                  layout="channels_last"))
        return sites

    def receptive_field(self) -> int:
        """Samples needed for one output frame (400 for the standard conv stack)."""
        field = 1
        for kernel, stride in zip(reversed(self.hf_config.conv_kernel), reversed(self.hf_config.conv_stride)):
            field = (field - 1) * stride + kernel
        return field

    def _check(self, audio: torch.Tensor, sample_rate: int | None) -> None:
        self.check_sample_rate(sample_rate, self.config["model_type"])
        if audio.dim() != 2:
            raise ValueError(f"expected audio of shape (batch, samples), got {tuple(audio.shape)}")
        if audio.shape[1] < self.receptive_field():
            raise ValueError(f"audio of {audio.shape[1]} samples is shorter than one frame "
                             f"({self.receptive_field()} samples at {self.sample_rate} Hz)")

    def embed(self, audio: torch.Tensor, sample_rate: int | None = None) -> torch.Tensor:
        """(batch, samples) of 16 kHz audio -> (batch, hidden_size): last hidden state averaged over time.

        The model only knows 16 kHz; resample beforehand (data prep does). Pass `sample_rate` to
        have a wrong rate rejected rather than silently embedded at the wrong speed.
        """
        self._check(audio, sample_rate)
        if self.config["normalize"]:  # as Wav2Vec2FeatureExtractor(do_normalize=True)
            variance = audio.var(1, keepdim=True, unbiased=False)
            audio = (audio - audio.mean(1, keepdim=True)) / torch.sqrt(variance + 1e-7)
        return self.model(audio).last_hidden_state.mean(dim=1)

    def sequence(self, audio: torch.Tensor, lengths: torch.Tensor | None = None,
                 sample_rate: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, samples), valid samples per clip -> (last hidden state (batch, frames, hidden_size),
        valid frames per clip, from the conv stack's kernels and strides).

        With `normalize`, each clip is normalised over its valid samples and its padding stays zero
        (Wav2Vec2FeatureExtractor's way with padding). An attention mask over the padding is passed
        only to models whose config uses one (feat_extract_norm "layer", as their feature extractor
        returns one); "group" models (wav2vec2-base and its kin) were trained on zero padding without.
        Without lengths (all valid) the time average of the features is `embed`.
        """
        self._check(audio, sample_rate)
        n = full_lengths(audio, lengths)
        valid = torch.arange(audio.shape[1], device=audio.device)[None, :] < n[:, None]
        if self.config["normalize"]:
            count = n[:, None].clamp(min=1).to(audio.dtype)
            mean = (audio * valid).sum(1, keepdim=True) / count
            variance = (((audio - mean) * valid) ** 2).sum(1, keepdim=True) / count
            audio = (audio - mean) / torch.sqrt(variance + 1e-7) * valid
        mask = valid.long() if self.hf_config.feat_extract_norm == "layer" else None
        hidden = self.model(audio, attention_mask=mask).last_hidden_state
        frames = self.model._get_feat_extract_output_lengths(n).long()
        return hidden, frames.clamp(min=1, max=hidden.shape[1])

    def trim(self, keep: dict[str, torch.Tensor]) -> None:
        keep = self.validate_keep(keep)
        for i in range(len(self._conv_layers())):
            if f"conv{i}" in keep:
                self._trim_conv(i, keep[f"conv{i}"])
        for i, layer in enumerate(self.model.encoder.layers):
            if f"layer{i}.attention" in keep:
                _trim_heads(layer, keep[f"layer{i}.attention"])
            if f"layer{i}.ffn" in keep:
                idx = keep[f"layer{i}.ffn"]
                prune.linear_out(layer.feed_forward.intermediate_dense, idx)
                prune.linear_in(layer.feed_forward.output_dense, idx)

    # -- layer pruning (kwyn.convexity) -------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.model.encoder.layers)

    def layer_embeddings(self, audio: torch.Tensor, sample_rate: int | None = None) -> list[torch.Tensor]:
        """(batch, samples) of 16 kHz audio -> per transformer layer i (list index i - 1), (batch, hidden_size):
        layer i's output through what follows the layers in the model, averaged over time. What follows is
        the encoder's final layer_norm for pre-norm encoders (do_stable_layer_norm: large-lv60 style), nothing
        for post-norm ones (wav2vec2-base, HuBERT/WavLM base: their encoder layer_norm acts before layer 1),
        then the model's adapter if it has one. One forward pass (`embed`, with hooks on the layers, so input
        normalisation and checks are embed's); entry i - 1 is `embed` after keep_layers(i)."""
        outputs = []
        handles = [layer.register_forward_hook(
            lambda module, args, output: outputs.append(output[0] if isinstance(output, tuple) else output))
            for layer in self.model.encoder.layers]
        try:
            self.embed(audio, sample_rate)
        finally:
            for handle in handles:
                handle.remove()
        adapter = getattr(self.model, "adapter", None)
        embeddings = []
        for x in outputs:
            if self.hf_config.do_stable_layer_norm:
                x = self.model.encoder.layer_norm(x)
            if adapter is not None:
                x = adapter(x)
            embeddings.append(x.mean(dim=1))
        return embeddings

    def keep_layers(self, n: int) -> None:
        """Drop transformer layers n+1.. in place (their mask sites `layer{i}.*`, i >= n, go with them) and
        record num_hidden_layers = n in config and the transformers config. The conv stack, feature
        projection, positional conv, the encoder's layer_norm (before layer 1 in post-norm encoders, after the
        last kept layer in pre-norm ones) and any adapter stay: `embed` then returns layer n's output, through
        the final layer_norm when do_stable_layer_norm, averaged over time (layer_embeddings(audio)[n - 1]
        on the full model). WavLM's relative position bias lives in layer 0, which is always kept."""
        if isinstance(n, bool) or not hasattr(n, "__index__") or not 1 <= n.__index__() <= self.num_layers:
            raise ValueError(f"keep_layers: n must be an int in 1..{self.num_layers} (this encoder's layers), "
                             f"got {n!r}")
        n = n.__index__()
        self.model.encoder.layers = self.model.encoder.layers[:n]
        self.hf_config.num_hidden_layers = n
        self.config["num_hidden_layers"] = n

    def _trim_conv(self, i: int, idx: torch.Tensor) -> None:
        convs = self._conv_layers()
        removed = _complement(idx, convs[i].conv.out_channels)
        prune.conv_out(convs[i].conv, idx)
        if i == 0:  # 'group' mode: a GroupNorm with one group per channel
            norm = convs[0].layer_norm
            if len(idx) == 0:  # GroupNorm cannot have zero groups; it would see an empty tensor anyway
                convs[0].layer_norm = nn.Identity()
            else:
                norm.weight, norm.bias = prune._keep(norm.weight, idx, 0), prune._keep(norm.bias, idx, 0)
                norm.num_groups = norm.num_channels = len(idx)
        if i + 1 < len(convs):
            prune.conv_in(convs[i + 1].conv, idx)
            return
        projection = self.model.feature_projection
        if isinstance(getattr(projection, "layer_norm", None), nn.LayerNorm | ZeroPaddedLayerNorm):
            _trim_norm_and_projection(projection, idx, removed)
        else:  # HuBERT with feat_proj_layer_norm=False
            prune.linear_in(projection.projection, idx)


class ZeroPaddedLayerNorm(nn.Module):
    """The LayerNorm over `full_width` channels of which only some remain; the removed ones count as zeros.

    Returns the kept channels normalised with their affine, then one extra channel: -mean/std, the
    normalised value every removed (zero) channel shares. The next Linear's column for that
    channel and its bias carry the removed channels' scale and shift.
    """

    def __init__(self, weight: nn.Parameter, bias: nn.Parameter, full_width: int, eps: float):
        super().__init__()
        self.weight, self.bias = weight, bias
        self.full_width, self.eps = full_width, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n_zeros = self.full_width - x.shape[-1]
        mean = x.sum(-1, keepdim=True) / self.full_width
        var = (((x - mean) ** 2).sum(-1, keepdim=True) + n_zeros * mean ** 2) / self.full_width
        inv_std = torch.rsqrt(var + self.eps)
        return torch.cat([(x - mean) * inv_std * self.weight + self.bias, -mean * inv_std], dim=-1)


def _trim_norm_and_projection(projection: nn.Module, idx: torch.Tensor, removed: torch.Tensor) -> None:
    """Keep `idx` of the last conv's channels in feature_projection (LayerNorm + Linear), exactly."""
    norm, linear = projection.layer_norm, projection.projection
    if len(removed) == 0:
        return
    weight = linear.weight.detach()
    if isinstance(norm, nn.LayerNorm):  # first trim: add the shared zero-channel column, empty so far
        weight = torch.cat([weight, weight.new_zeros(weight.shape[0], 1)], dim=1)
        full_width, eps = norm.normalized_shape[0], norm.eps
    else:
        full_width, eps = norm.full_width, norm.eps
    removed = removed.to(weight.device)
    w_removed, b_removed = norm.weight.detach()[removed], norm.bias.detach()[removed]
    zero_column = weight[:, -1] + weight[:, removed] @ w_removed
    new_bias = linear.bias.detach() + weight[:, removed] @ b_removed
    new_weight = torch.cat([weight[:, idx.to(weight.device)], zero_column[:, None]], dim=1)
    grad = linear.weight.requires_grad
    linear.weight = nn.Parameter(new_weight.clone(), requires_grad=grad)
    linear.bias = nn.Parameter(new_bias.clone(), requires_grad=grad)
    linear.in_features = new_weight.shape[1]
    projection.layer_norm = ZeroPaddedLayerNorm(prune._keep(norm.weight, idx, 0), prune._keep(norm.bias, idx, 0),
                                                full_width, eps)


class NoHeadAttention(nn.Module):
    """An attention layer with every head removed: its output is out_proj's bias at every frame."""

    num_heads = 0

    def __init__(self, out_proj: nn.Linear):
        super().__init__()
        self.out_proj = out_proj  # zero input columns: maps the empty head output to its bias

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        return self.out_proj(hidden_states[..., :0]), None


def _trim_heads(layer: nn.Module, idx: torch.Tensor) -> None:
    attention = layer.attention
    rows = (idx[:, None] * attention.head_dim + torch.arange(attention.head_dim, device=idx.device)).flatten()
    for proj in (attention.q_proj, attention.k_proj, attention.v_proj):
        prune.linear_out(proj, rows)
    prune.linear_in(attention.out_proj, rows)
    attention.num_heads, attention.embed_dim = len(idx), len(rows)
    if len(idx) == 0:  # transformers' head reshape cannot infer a size from an empty tensor
        layer.attention = NoHeadAttention(attention.out_proj)


def _complement(idx: torch.Tensor, width: int) -> torch.Tensor:
    kept = torch.zeros(width, dtype=torch.bool)
    kept[idx.cpu()] = True
    return torch.nonzero(~kept).flatten()


def _short(keys, limit: int = 8) -> str:
    keys = [k if isinstance(k, str) else k[0] for k in (keys or [])]
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return str(sorted(keys)[:limit]) + more


def _offline() -> bool:
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def _hub_reachable(timeout: float = 3.0) -> bool:
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _load_transformers(model_cls, source: str):
    """(model, loading info) from a directory, the hub cache, or the hub; fails fast when offline."""
    kwargs = {"output_loading_info": True, **INFERENCE}
    if Path(source).is_dir():
        return model_cls.from_pretrained(source, local_files_only=True, **kwargs)
    try:
        return model_cls.from_pretrained(source, local_files_only=True, **kwargs)
    except OSError:
        pass  # not in the hub cache yet
    # huggingface_hub retries an unreachable host for about 30 s: check once, quickly, first
    if _offline() or not _hub_reachable():
        raise OSError(
            f"cannot load {source!r}: it is not a local directory, not in the Hugging Face cache, and the hub is "
            f"{'disabled (HF_HUB_OFFLINE)' if _offline() else 'unreachable'}. Either run once with network access "
            f"(the files are then cached), or place the files of https://huggingface.co/{source} (config.json and "
            f"model.safetensors or pytorch_model.bin) in a directory and pass that directory as the checkpoint.")
    return model_cls.from_pretrained(source, **kwargs)
