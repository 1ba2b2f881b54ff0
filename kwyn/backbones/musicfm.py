"""MusicFM 25 Hz (Won et al. 2024, github.com/minzwon/musicfm), encoder part, up to the paper's layer.

Pipeline (24 kHz mono audio in):
1. log-mel front end, as MusicFM's MelSTFT: torchaudio's MelSpectrogram (n_fft 2048, hop 240,
   128 HTK mels, power 2, centred reflect-padded STFT) then AmplitudeToDB (10 log10, floor 1e-10,
   no top_db); the STFT's last frame is dropped (100 frames/s), then (x - mean) / std with the
   released statistics (`msd_stats.json`: keys "melspec_2048_mean", "melspec_2048_std").
2. Conv2dSubsampling: two residual conv blocks, each stride 2 in frequency and time, then a
   Linear over (channels x bands / 4) to hidden_size: 25 frames/s.
3. transformers' Wav2Vec2ConformerEncoder (rotary positions, swish), built with `rep_layer`
   layers only. The representation is hidden_states[rep_layer] of the full 12-layer stack (7, as
   the paper and MusicFM's README use): the output of layer rep_layer - 1, *without* the
   encoder's final LayerNorm (which only the last hidden state gets). So the final LayerNorm is
   replaced by an identity, and the unused positional conv embedding (the conformer encoder never
   calls it) is dropped. Embedding: that layer averaged over time (hidden_size wide).

Mask sites per layer i < rep_layer (units, where the mask multiplies):
- `layer{i}.ffn1`, `layer{i}.ffn2`: FFN units, on output_dense's input (after swish). Removing one
  removes its intermediate_dense row and output_dense column.
- `layer{i}.attention`: heads, on linear_out's input. Removing one removes its linear_q/k/v rows
  and linear_out columns. transformers applies the rotary rotation to the attention *input*
  (hidden_size wide, split into the original number of heads), before linear_q/k; the trimmed
  layer keeps rotating its input that way (_TrimmedSelfAttention). No head left: linear_out's bias.
- `layer{i}.conv`: conv-module channels, on pointwise_conv2's input (after BatchNorm and swish).
  Removing channel c removes pointwise_conv1's rows c and c + C (both GLU halves), the depthwise
  filter, the BatchNorm entry and pointwise_conv2's column c.
The conv subsampling and the hidden_size stream are no sites.

Checkpoint (`pretrained_msd.pt` + `msd_stats.json`, hub repo minzwon/MusicFM). Read from
MusicFM's source (model/musicfm_25hz.py, modules/conv.py), not from the file, which was not
available here: MusicFM loads it as `torch.load(path)["state_dict"]` and strips a 6-character
prefix from every key (taken to be "model.", a Lightning module attribute); the remaining names are
MusicFM25Hz's attributes: `conv.conv.{0,1}.{conv1,bn1,conv2,bn2,conv3,bn3}.*`, `conv.linear.*`,
`conformer.*` (transformers' names), plus parts not needed here and skipped by prefix:
`preprocessor_*` (mel filter bank and window, recomputed), `quantizer_*` (BEST-RQ targets),
`linear.*` (token classifier), `cls_token`, `conformer.pos_conv_embed.*`, `conformer.layer_norm.*`,
and `conformer.layers.{rep_layer..}.*`. A plain state dict (no "state_dict" wrapper, no "model."
prefix) is accepted too. ASSUMED, UNVERIFIED against the real file: the "model." prefix, that
`conformer.embed_positions.inv_freq` may or may not be stored (recomputed if absent), the stats
being scalars (a per-mel list also works), and the conformer config MusicFM copies from
facebook/wav2vec2-conformer-rope-large-960h-ft (swish, rotary base 10000, kernel 31, eps 1e-5).
Any other mismatch fails loading with the missing / unexpected / mis-shaped keys listed.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn
from transformers import Wav2Vec2ConformerConfig
from transformers.models.wav2vec2_conformer.modeling_wav2vec2_conformer import (
    Wav2Vec2ConformerEncoder, Wav2Vec2ConformerSelfAttention)

from kwyn import prune
from kwyn.backbones.base import Backbone, full_lengths
from kwyn.backbones.crepe import load_state_dict_checked
from kwyn.backbones.wav2vec2 import _hub_reachable, _offline
from kwyn.sites import MaskSite

HUB_REPO = "minzwon/MusicFM"
WEIGHTS_FILE, STATS_FILE = "pretrained_msd.pt", "msd_stats.json"
STATS_KEYS = ("melspec_2048_mean", "melspec_2048_std")
# defaults: the released MusicFM 25 Hz model, up to the paper's layer 7
ARCHITECTURE = {"n_mels": 128, "n_fft": 2048, "hop_length": 240, "conv_dim": 512, "hidden_size": 1024,
                "num_attention_heads": 16, "intermediate_size": 4096, "conv_depthwise_kernel_size": 31,
                "hidden_act": "swish", "rotary_embedding_base": 10000, "layer_norm_eps": 1e-5, "rep_layer": 7}
# mel_mean / mel_std: the front end's normalisation (from_pretrained reads them from msd_stats.json);
# attn_implementation: "eager" (FLOP counters see every attention op) or "sdpa"
OPTIONS = {"mel_mean": 0.0, "mel_std": 1.0, "attn_implementation": "eager"}
IGNORED_PREFIXES = ("preprocessor_", "quantizer_", "linear.", "cls_token", "conformer.pos_conv_embed.",
                    "conformer.layer_norm.")
_LAYER_KEY = re.compile(r"^conformer\.layers\.(\d+)\.")


class Res2dModule(nn.Module):
    """MusicFM's residual conv block: two 3x3 convs with BatchNorm, a strided 3x3 conv shortcut, ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: tuple[int, int]):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1, stride=stride)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(out_ch)
        # MusicFM adds the shortcut conv whenever widths differ or the block strides: always, here
        self.conv3 = nn.Conv2d(in_ch, out_ch, 3, padding=1, stride=stride)
        self.bn3 = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + self.bn3(self.conv3(x)))


class Conv2dSubsampling(nn.Module):
    """(batch, n_mels, frames) -> (batch, ceil(ceil(frames / 2) / 2), out_dim); names as MusicFM's."""

    def __init__(self, conv_dim: int, out_dim: int, n_mels: int):
        super().__init__()
        self.conv = nn.Sequential(Res2dModule(1, conv_dim, (2, 2)), Res2dModule(conv_dim, conv_dim, (2, 2)))
        self.linear = nn.Linear(conv_dim * n_mels // 4, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x.unsqueeze(1))  # (batch, channels, bands, frames)
        return self.linear(x.permute(0, 3, 1, 2).flatten(2))  # channel-major, then band, as MusicFM


class MusicFMBackbone(Backbone):
    family = "musicfm"
    sample_rate = 24000

    def __init__(self, config: dict):
        unknown = sorted(set(config) - set(ARCHITECTURE) - set(OPTIONS) - {"family"})
        if unknown:
            raise ValueError(f"unknown musicfm config keys {unknown}; known: {sorted({**ARCHITECTURE, **OPTIONS})}")
        config = {**ARCHITECTURE, **OPTIONS, **config}
        if config["n_mels"] % 4:
            raise ValueError(f"n_mels must be a multiple of 4 (two stride-2 convs), got {config['n_mels']}")
        super().__init__(config)
        self.conv = Conv2dSubsampling(config["conv_dim"], config["hidden_size"], config["n_mels"])
        conformer_config = Wav2Vec2ConformerConfig(
            **{k: config[k] for k in ("hidden_size", "num_attention_heads", "intermediate_size",
                                      "conv_depthwise_kernel_size", "hidden_act", "rotary_embedding_base",
                                      "layer_norm_eps")},
            num_hidden_layers=config["rep_layer"], position_embeddings_type="rotary", layerdrop=0.0)
        conformer_config._attn_implementation = config["attn_implementation"]
        self.conformer = Wav2Vec2ConformerEncoder(conformer_config)
        del self.conformer.pos_conv_embed  # never called by the conformer encoder
        self.conformer.layer_norm = nn.Identity()  # hidden_states[k] (k < depth) has no final LayerNorm
        # front-end constants, derived from the config: not persistent, never in a checkpoint;
        # made on the CPU so that a meta-device copy (parameter counting) can be built too
        with torch.device("cpu"):
            fb = torchaudio.functional.melscale_fbanks(config["n_fft"] // 2 + 1, 0.0, self.sample_rate / 2,
                                                       config["n_mels"], self.sample_rate, None, "htk")
            self.register_buffer("mel_fb", fb, persistent=False)
            self.register_buffer("window", torch.hann_window(config["n_fft"]), persistent=False)
            for name in ("mel_mean", "mel_std"):  # a scalar or one value per mel band
                value = torch.as_tensor(config[name], dtype=torch.float32)
                self.register_buffer(name, value.view(-1, 1) if value.dim() else value, persistent=False)
        self.eval()

    # -- weights ------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, checkpoint: str | None = None, stats: str | dict | None = None,
                        trust_checkpoint: bool = False, **config) -> "MusicFMBackbone":
        """MusicFM weights and normalisation statistics.

        checkpoint: a directory holding pretrained_msd.pt (and msd_stats.json), the .pt file itself, or
        None / a hub repo id (default minzwon/MusicFM, downloaded once into the hub cache).
        stats: msd_stats.json's path or its content as a dict; default: the file next to the weights.
        trust_checkpoint: unpickle arbitrary objects (only for a file you trust), needed if the file
        holds more than tensors and plain containers (torch.load's weights_only=True refuses it).
        config: architecture fields; they must match the checkpoint (defaults: the released model).
        """
        weights, stats_path = _locate(checkpoint)
        if stats is None:
            stats = stats_path
        if not isinstance(stats, dict):
            if stats is None or not Path(stats).is_file():
                raise FileNotFoundError(f"MusicFM statistics file {STATS_FILE} not found next to {weights}: "
                                        f"pass stats=PATH (from https://huggingface.co/{HUB_REPO})")
            stats = json.loads(Path(stats).read_text())
        missing = [k for k in STATS_KEYS if k not in stats]
        if missing:
            raise KeyError(f"MusicFM statistics lack {missing}; found keys {sorted(stats)}")
        model = cls({**config, "mel_mean": stats[STATS_KEYS[0]], "mel_std": stats[STATS_KEYS[1]]})
        try:
            raw = torch.load(weights, map_location="cpu", weights_only=not trust_checkpoint)
        except Exception as err:  # noqa: BLE001 - unpickling errors come in several types
            raise RuntimeError(f"cannot read {weights} with torch.load(weights_only={not trust_checkpoint}) "
                               f"({type(err).__name__}: {err}). If you trust the file, pass "
                               f"trust_checkpoint=True.") from err
        state = encoder_state(raw, model.config["rep_layer"])
        state.setdefault("conformer.embed_positions.inv_freq", model.conformer.embed_positions.inv_freq)
        load_state_dict_checked(model, state, source=str(weights))
        return model.eval()

    # -- interface ----------------------------------------------------------------------
    @property
    def embedding_dim(self) -> int:
        return self.config["hidden_size"]

    def mask_sites(self) -> list[MaskSite]:
        sites = []
        for i, layer in enumerate(self.conformer.layers):
            prefix = f"conformer.layers.{i}"
            for ffn in ("ffn1", "ffn2"):
                sites.append(MaskSite(f"layer{i}.{ffn}", "ffn_units", getattr(layer, ffn).output_dense.in_features,
                                      module=f"{prefix}.{ffn}.output_dense", hook="input", layout="channels_last"))
            sites.append(MaskSite(f"layer{i}.attention", "attention_heads", layer.self_attn.num_heads,
                                  module=f"{prefix}.self_attn.linear_out", hook="input", layout="heads"))
            sites.append(MaskSite(f"layer{i}.conv", "conv_channels", layer.conv_module.pointwise_conv2.in_channels,
                                  module=f"{prefix}.conv_module.pointwise_conv2", hook="input",
                                  layout="channels_first"))
        return sites

    def log_mel(self, audio: torch.Tensor) -> torch.Tensor:
        """(batch, samples) at 24 kHz -> (batch, n_mels, samples // hop_length), normalised."""
        if audio.dim() != 2:
            raise ValueError(f"expected audio of shape (batch, samples), got {tuple(audio.shape)}")
        n_fft = self.config["n_fft"]
        if audio.shape[1] <= n_fft // 2:  # the centred STFT reflect-pads n_fft / 2 samples on each side
            raise ValueError(f"audio of {audio.shape[1]} samples is too short: MusicFM needs more than "
                             f"{n_fft // 2} samples ({n_fft // 2 / self.sample_rate * 1000:.0f} ms at 24 kHz)")
        power = torchaudio.functional.spectrogram(audio.float(), 0, self.window, n_fft, self.config["hop_length"],
                                                  n_fft, power=2.0, normalized=False)
        mel = (power.transpose(1, 2) @ self.mel_fb).transpose(1, 2)
        db = torchaudio.functional.amplitude_to_DB(mel, 10.0, 1e-10, 0.0)
        return (db[..., :-1] - self.mel_mean) / self.mel_std  # MusicFM drops the last STFT frame

    def hidden_states(self, features: torch.Tensor) -> torch.Tensor:
        """(batch, n_mels, frames) -> (batch, tokens, hidden_size): MusicFM's hidden_states[rep_layer]."""
        return self.conformer(self.conv(features)).last_hidden_state

    def embed(self, audio: torch.Tensor, sample_rate: int | None = None) -> torch.Tensor:
        """(batch, samples) of 24 kHz audio -> (batch, hidden_size), the representation layer averaged over time.

        MusicFM only knows 24 kHz (its mel filters and frame rate assume it): resample beforehand
        (data prep does). Pass `sample_rate` to have any other rate rejected, not embedded at the
        wrong speed.
        """
        self.check_sample_rate(sample_rate, "MusicFM")
        return self.hidden_states(self.log_mel(audio)).mean(dim=1)

    def sequence(self, audio: torch.Tensor, lengths: torch.Tensor | None = None,
                 sample_rate: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The representation layer per token (25 per second); a clip of n valid samples has
        ceil((n // hop_length) / 4) valid tokens (the conv subsampling halves time twice).
        No attention mask: padded tokens are computed and attended to, then ignored by the head."""
        self.check_sample_rate(sample_rate, "MusicFM")
        hidden = self.hidden_states(self.log_mel(audio))
        mel_frames = full_lengths(audio, lengths) // self.config["hop_length"]  # the STFT's last frame is dropped
        valid = -(-mel_frames // 4)
        return hidden, valid.clamp(min=1, max=hidden.shape[1])

    def trim(self, keep: dict[str, torch.Tensor]) -> None:
        keep = self.validate_keep(keep)
        for i, layer in enumerate(self.conformer.layers):
            for ffn in ("ffn1", "ffn2"):
                if f"layer{i}.{ffn}" in keep:
                    prune.linear_out(getattr(layer, ffn).intermediate_dense, keep[f"layer{i}.{ffn}"])
                    prune.linear_in(getattr(layer, ffn).output_dense, keep[f"layer{i}.{ffn}"])
            if f"layer{i}.attention" in keep:
                _trim_heads(layer.self_attn, keep[f"layer{i}.attention"])
            if f"layer{i}.conv" in keep:
                _trim_conv_module(layer.conv_module, keep[f"layer{i}.conv"])


def encoder_state(raw: dict, rep_layer: int) -> dict:
    """The keys of a MusicFM25Hz checkpoint that this backbone holds, with its names.

    Unwraps {"state_dict": ...} and a "model." prefix on every key (see the module docstring),
    skips the parts not needed here and the layers after the representation layer.
    """
    if not isinstance(raw, dict):
        raise TypeError(f"expected a MusicFM checkpoint dict, got {type(raw).__name__}")
    state = raw["state_dict"] if isinstance(raw.get("state_dict"), dict) else raw
    if state and all(k.startswith("model.") for k in state):
        state = {k.removeprefix("model."): v for k, v in state.items()}
    out = {}
    for key, value in state.items():
        layer = _LAYER_KEY.match(key)
        if key.startswith(IGNORED_PREFIXES) or (layer and int(layer[1]) >= rep_layer):
            continue
        out[key] = value
    return out


class _TrimmedSelfAttention(Wav2Vec2ConformerSelfAttention):
    """A conformer attention with some heads removed.

    transformers rotates the attention's input, viewed as (original heads x head_size), before the
    q/k projections; the input stays hidden_size wide after trimming, so it is still rotated with
    the original head count, which the input width gives (num_heads now counts the kept heads).
    """

    def _apply_rotary_embedding(self, hidden_states, relative_position_embeddings):
        kept = self.num_heads
        self.num_heads = hidden_states.shape[-1] // self.head_size
        try:
            return super()._apply_rotary_embedding(hidden_states, relative_position_embeddings)
        finally:
            self.num_heads = kept


class _HeadlessSelfAttention(Wav2Vec2ConformerSelfAttention):
    """No head left: no query, key or value; the output is linear_out's bias at every frame.

    (transformers' forward cannot run it: reshaping empty projections to (-1, head_size) is ambiguous.)
    """

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        return self.linear_out(hidden_states[..., :0]), None


def _trim_heads(attn: Wav2Vec2ConformerSelfAttention, heads: torch.Tensor) -> None:
    rows = (heads[:, None] * attn.head_size + torch.arange(attn.head_size, device=heads.device)).flatten()
    for proj in (attn.linear_q, attn.linear_k, attn.linear_v):
        prune.linear_out(proj, rows)
    prune.linear_in(attn.linear_out, rows)
    attn.num_heads = len(heads)
    attn.__class__ = _TrimmedSelfAttention if len(heads) else _HeadlessSelfAttention


def _trim_conv_module(module: nn.Module, channels: torch.Tensor) -> None:
    """Keep `channels` of the conv module: GLU(pointwise_conv1) -> depthwise -> BatchNorm -> pointwise_conv2."""
    width = module.depthwise_conv.out_channels
    # GLU splits pointwise_conv1's output into value (first half) and gate (second half) of each channel
    prune.conv_out(module.pointwise_conv1, torch.cat([channels, channels + width]))
    prune.depthwise_conv(module.depthwise_conv, channels)
    prune.batch_norm(module.batch_norm, channels)
    prune.conv_in(module.pointwise_conv2, channels)


def _locate(checkpoint: str | Path | None) -> tuple[Path, Path | None]:
    """(weights file, statistics file or None) for a directory, a .pt file, or a hub repo id."""
    if checkpoint is not None and Path(checkpoint).expanduser().exists():
        path = Path(checkpoint).expanduser()
        if path.is_dir():
            if not (path / WEIGHTS_FILE).is_file():
                raise FileNotFoundError(f"{path} has no {WEIGHTS_FILE} (files of https://huggingface.co/{HUB_REPO})")
            return path / WEIGHTS_FILE, path / STATS_FILE
        return path, path.parent / STATS_FILE
    repo = str(checkpoint or HUB_REPO)
    if "/" not in repo or repo.endswith((".pt", ".pth", ".json")):
        raise FileNotFoundError(f"MusicFM checkpoint {repo!r}: no such file or directory (and not a hub repo id "
                                f"like {HUB_REPO!r})")
    return _hub_files(repo)


def _hub_files(repo: str) -> tuple[Path, Path]:
    """The hub repo's weights and statistics, from the hub cache or (when online) downloaded into it."""
    from huggingface_hub import hf_hub_download

    try:
        return tuple(Path(hf_hub_download(repo, f, local_files_only=True)) for f in (WEIGHTS_FILE, STATS_FILE))
    except Exception:  # noqa: BLE001 - not in the cache yet
        pass
    # huggingface_hub retries an unreachable host for about 30 s: check once, quickly, first
    if _offline() or not _hub_reachable():
        raise OSError(
            f"cannot load MusicFM: {WEIGHTS_FILE} and {STATS_FILE} of the hub repo {repo!r} are not in the "
            f"Hugging Face cache, and the hub is {'disabled (HF_HUB_OFFLINE)' if _offline() else 'unreachable'}. "
            f"Either run once with network access (the files are then cached), or download "
            f"https://huggingface.co/{repo}/resolve/main/{WEIGHTS_FILE} and .../{STATS_FILE} into one directory "
            f"and pass that directory as the checkpoint.")
    return tuple(Path(hf_hub_download(repo, f, etag_timeout=10)) for f in (WEIGHTS_FILE, STATS_FILE))
