"""CNN14 (PANNs, Kong et al. 2020) as the audio encoder of CLAP: Microsoft CLAP 2022 or LAION-CLAP PANN-14.

The layers carry PANNs' attribute names (spectrogram_extractor, logmel_extractor, bn0,
conv_block{1..6}.conv{1,2}/bn{1,2}, fc1; the front end is torchlibrosa's, as in both CLAP code
bases), so both checkpoints load key for key after their prefix is mapped. laion-clap's own
`pann_model.Cnn14` is not used: importing anything from the laion_clap package runs
`laion_clap.training.data`, which fetches three tokenizers from the hub at import time (hangs
offline); its widths are fixed and its forward rejects zero-width layers anyway.

Forward (eval mode only: the encoder is frozen, so PANNs' dropout and SpecAugment are off):
log-mel (B, 1, T, mel) -> bn0 over the mel bins -> six conv blocks, each
conv3x3 -> BN -> ReLU -> conv3x3 -> BN -> ReLU -> 2x2 average pool (none after block 6) ->
mean over frequency -> max + mean over time (2048-d) -> ReLU(fc1) -> CLAP's audio projection.
fc_audioset (AudioSet classifier) is not on that path and is left out.

Embedding = the output of CLAP's audio projection, kept inside the backbone so its size does not
change with trimming; not L2-normalised (CLAP normalises only to compare with text):
- kind "msclap": msclap's Projection: e1 = linear1(x) (2048 -> 1024, no bias);
  LayerNorm(e1 + linear2(GELU(e1))) (linear2 1024 -> 1024, no bias). 1024-d.
- kind "laion": laion-clap's `audio_projection`: Linear(2048, 512) -> ReLU -> Linear(512, 512)
  (CLAP's default joint_embed_shape 512 and mlp_act "relu", as CLAP_Module builds it). 512-d.

Mask sites `block{i}.conv{j}`: the output channels of conv_block{i}.bn{j}, before the ReLU.
ReLU(0) = 0 and average pooling of zeros is 0, so a masked channel adds nothing to the next conv
(or, after block 6, contributes 0 to the frequency mean and the time max and mean, so nothing to
fc1); removing the conv's output channel, its BatchNorm channel and the next layer's input
channel (conv_block{i}.conv2, conv_block{i+1}.conv1, or fc1's input column) is exact. bn0
normalises mel bins, not channels: no site. A block left with no channel still runs (zero-width
convs and BatchNorm from kwyn.prune, zero-width pooling here; fc1 then outputs ReLU(bias)).

Weights (`from_pretrained(checkpoint, kind=...)`); the prefixes are read from the two code bases,
and the mapping gives the upstream model classes' outputs on random weights (tests/test_upstream.py);
unverified against the released files themselves (no network here):
- msclap: `CLAP_weights_2022.pth` of the hub repo `microsoft/msclap` (downloaded through
  huggingface_hub when checkpoint is None). msclap loads `torch.load(f)["model"]` into its CLAP
  class, so `audio_encoder.base.*` -> the encoder, `audio_encoder.projection.*` -> projection.
- laion: a LAION-CLAP PANN-14 checkpoint file (`{"state_dict": ...}`; no default: the checkpoints
  laion-clap downloads itself are HTSAT ones): `audio_branch.*` -> the encoder,
  `audio_projection.*` -> projection.
A leading `module.` (DDP) or `clap.` wrapper is stripped first. The text branch, logit scales,
audio_transform and fc_audioset are ignored by prefix (IGNORED); any other key that does not
fit, and any missing one, is named in the error.
"""
from __future__ import annotations

import copy
import functools
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from kwyn import prune
from kwyn.backbones.base import Backbone
from kwyn.backbones.crepe import load_state_dict_checked
from kwyn.backbones.wav2vec2 import _hub_reachable, _offline
from kwyn.sites import MaskSite

WIDTHS = [64, 128, 256, 512, 1024, 2048]
DEFAULTS = {  # per checkpoint kind: the front end and sizes its checkpoints were trained with
    "msclap": {"sample_rate": 44100, "window_size": 1024, "hop_size": 320, "mel_bins": 64, "fmin": 50,
               "fmax": 14000, "widths": WIDTHS, "fc1_dim": 2048, "projection_dim": 1024},
    # laion_clap/clap_module/model_configs/PANN-14.json; joint_embed_shape = CLAP's default 512
    "laion": {"sample_rate": 48000, "window_size": 1024, "hop_size": 480, "mel_bins": 64, "fmin": 50,
              "fmax": 14000, "widths": WIDTHS, "fc1_dim": 2048, "projection_dim": 512},
}
HUB_REPO, HUB_FILE = "microsoft/msclap", "CLAP_weights_2022.pth"
WRAPPERS = ("module.", "clap.")
PREFIXES = {  # checkpoint prefix -> ours
    "msclap": {"audio_encoder.base.": "", "audio_encoder.projection.": "projection."},
    "laion": {"audio_branch.": "", "audio_projection.": "projection."},
}
IGNORED = {  # not part of the audio embedding
    "msclap": ("caption_encoder.", "logit_scale", "audio_encoder.base.fc_audioset."),
    "laion": ("text_branch.", "text_transform.", "text_projection.", "token_embedding.", "positional_embedding",
              "ln_final.", "transformer.", "audio_transform.", "logit_scale", "audio_branch.fc_audioset."),
}
N_POOLS = 5  # 2x2 average pools (after blocks 1-5)


class ConvBlock(nn.Module):
    """PANNs' ConvBlock (same attribute names), pooling tensors with no channel too."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor, pool: bool = True) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        if not pool:
            return x
        if x.shape[1] == 0:  # torch's pooling rejects a tensor with no channel
            return x.new_zeros(x.shape[0], 0, x.shape[2] // 2, x.shape[3] // 2)
        return F.avg_pool2d(x, 2)


class MsclapProjection(nn.Module):
    """msclap's Projection (dropout omitted: eval only)."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.linear1 = nn.Linear(d_in, d_out, bias=False)
        self.linear2 = nn.Linear(d_out, d_out, bias=False)
        self.layer_norm = nn.LayerNorm(d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        embed1 = self.linear1(x)
        return self.layer_norm(embed1 + self.linear2(F.gelu(embed1)))


class Cnn14Backbone(Backbone):
    """config: kind ("msclap" | "laion": which CLAP's weights, front end and projection), and
    optionally any of DEFAULTS' fields (sample_rate, window_size, hop_size, mel_bins, fmin, fmax,
    widths of the six blocks, fc1_dim, projection_dim) to override that kind's defaults."""

    family = "cnn14"
    sample_rate = 44100  # the paper's (msclap); each instance sets its own from its config

    def __init__(self, config: dict):
        kind = config.get("kind", "msclap")
        if kind not in DEFAULTS:
            raise ValueError(f"unknown CNN14 checkpoint kind {kind!r}; known: {sorted(DEFAULTS)}")
        config = {"kind": kind, **DEFAULTS[kind], **config}
        config["widths"] = [int(w) for w in config["widths"]]
        if len(config["widths"]) != 6:
            raise ValueError(f"CNN14 has 6 conv blocks, got widths {config['widths']}")
        super().__init__(config)
        self.sample_rate = int(config["sample_rate"])
        self._build_front_end()
        self.bn0 = nn.BatchNorm2d(config["mel_bins"])
        ins = [1] + config["widths"][:-1]
        for i, (c_in, c_out) in enumerate(zip(ins, config["widths"]), start=1):
            setattr(self, f"conv_block{i}", ConvBlock(c_in, c_out))
        self.fc1 = nn.Linear(config["widths"][-1], config["fc1_dim"])
        if kind == "msclap":
            self.projection = MsclapProjection(config["fc1_dim"], config["projection_dim"])
        else:
            d = config["projection_dim"]
            self.projection = nn.Sequential(nn.Linear(config["fc1_dim"], d), nn.ReLU(), nn.Linear(d, d))
        self.eval()

    def _build_front_end(self) -> None:
        c = self.config
        spectrogram, logmel = _front_end(c["window_size"], c["hop_size"], c["sample_rate"], c["mel_bins"], c["fmin"],
                                         c["fmax"])
        # fixed weights, never trimmed: on the meta device (trimmed_param_count) they stay on the CPU
        device = torch.empty(0).device
        device = torch.device("cpu") if device.type == "meta" else device
        self.spectrogram_extractor = copy.deepcopy(spectrogram).to(device)
        self.logmel_extractor = copy.deepcopy(logmel).to(device)

    # -- loading --------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, checkpoint: str | Path | None = None, kind: str = "msclap",
                        **config) -> "Cnn14Backbone":
        """Weights of the audio encoder + projection of a CLAP checkpoint of `kind` (see the module
        docstring); checkpoint: a file or a directory holding CLAP_weights_2022.pth; None: msclap's
        from the hub (cached)."""
        if kind not in DEFAULTS:
            raise ValueError(f"unknown CNN14 checkpoint kind {kind!r}; known: {sorted(DEFAULTS)}")
        path = _checkpoint_file(checkpoint, kind)  # first: a missing file fails before a 80 M-parameter init
        model = cls({**config, "kind": kind})
        state = audio_state_dict(_read_checkpoint(path), kind)
        for key, value in model.state_dict().items():  # old checkpoints may predate BatchNorm's counter
            if key.endswith("num_batches_tracked"):
                state.setdefault(key, value)
        load_state_dict_checked(model, state, source=str(path))
        return model.eval()

    # -- interface ------------------------------------------------------------------------
    @property
    def embedding_dim(self) -> int:
        return self.config["projection_dim"]

    def mask_sites(self) -> list[MaskSite]:
        return [MaskSite(f"block{i}.conv{j}", "conv_channels", self.get_submodule(f"conv_block{i}.bn{j}").num_features,
                         module=f"conv_block{i}.bn{j}", hook="output", layout="channels_first")
                for i in range(1, 7) for j in (1, 2)]

    def min_samples(self) -> int:
        """Shortest input: reflect padding needs more than half a window, five 2x2 pools need 32 frames."""
        return max(self.config["window_size"] // 2 + 1, (2 ** N_POOLS - 1) * self.config["hop_size"])

    def features(self, audio: torch.Tensor) -> torch.Tensor:
        """(batch, samples) -> (batch, fc1_dim): PANNs' clip embedding, ReLU(fc1(max_t + mean_t))."""
        x = self.logmel_extractor(self.spectrogram_extractor(audio))  # (B, 1, T, mel)
        x = self.bn0(x.transpose(1, 3)).transpose(1, 3)
        for i in range(1, 7):
            x = getattr(self, f"conv_block{i}")(x, pool=i < 6)
        x = x.mean(dim=3)  # over frequency
        x = x.amax(dim=2) + x.mean(dim=2)  # over time
        return F.relu(self.fc1(x))

    def embed(self, audio: torch.Tensor, sample_rate: int | None = None) -> torch.Tensor:
        """(batch, samples) at self.sample_rate -> (batch, projection_dim).

        Pass `sample_rate` to have a wrong rate rejected rather than embedded at the wrong speed.
        """
        self.check_sample_rate(sample_rate, f"CNN14 ({self.config['kind']})")
        if audio.dim() != 2:
            raise ValueError(f"expected audio of shape (batch, samples), got {tuple(audio.shape)}")
        if audio.shape[1] < self.min_samples():
            raise ValueError(f"audio of {audio.shape[1]} samples is too short for CNN14: it needs at least "
                             f"{self.min_samples()} samples ({self.min_samples() / self.sample_rate:.3f} s)")
        return self.projection(self.features(audio))

    def trim(self, keep: dict[str, torch.Tensor]) -> None:
        keep = self.validate_keep(keep)
        for i in range(1, 7):
            block = getattr(self, f"conv_block{i}")
            for j in (1, 2):
                idx = keep.get(f"block{i}.conv{j}")
                if idx is None:
                    continue
                prune.conv_out(getattr(block, f"conv{j}"), idx)
                prune.batch_norm(getattr(block, f"bn{j}"), idx)
                if j == 1:
                    prune.conv_in(block.conv2, idx)
                elif i < 6:
                    prune.conv_in(getattr(self, f"conv_block{i + 1}").conv1, idx)
                else:
                    prune.linear_in(self.fc1, idx)


@functools.lru_cache(maxsize=4)
def _front_end(window_size: int, hop_size: int, sample_rate: int, mel_bins: int, fmin: float, fmax: float):
    """torchlibrosa's STFT and log-mel layers, as PANNs builds them; cached, as building the DFT
    weights takes about 0.5 s (copied by each model). Built on the CPU: torchlibrosa fills its weights
    through `.data =`, which fails on the meta device."""
    from torchlibrosa.stft import LogmelFilterBank, Spectrogram

    with torch.device("cpu"):
        spectrogram = Spectrogram(n_fft=window_size, hop_length=hop_size, win_length=window_size, window="hann",
                                  center=True, pad_mode="reflect", freeze_parameters=True)
        logmel = LogmelFilterBank(sr=sample_rate, n_fft=window_size, n_mels=mel_bins, fmin=fmin, fmax=fmax,
                                  ref=1.0, amin=1e-10, top_db=None, freeze_parameters=True)
    return spectrogram, logmel


# -- checkpoints ----------------------------------------------------------------------------
def audio_state_dict(raw: dict, kind: str) -> dict:
    """Our state_dict from a CLAP checkpoint of `kind`: unwrap, drop IGNORED keys, map PREFIXES.

    Keys that fit no prefix are kept as they are, so that the loader names them as unexpected.
    """
    if kind not in PREFIXES:
        raise ValueError(f"unknown CNN14 checkpoint kind {kind!r}; known: {sorted(PREFIXES)}")
    for container in ("model", "state_dict"):  # msclap: {"model": ...}; laion: {"state_dict": ...}
        if isinstance(raw.get(container), dict):
            raw = raw[container]
            break
    state = {}
    for key, value in raw.items():
        for wrapper in WRAPPERS:
            key = key.removeprefix(wrapper)
        if key.startswith(IGNORED[kind]):
            continue
        for theirs, ours in PREFIXES[kind].items():
            if key.startswith(theirs):
                key = ours + key.removeprefix(theirs)
                break
        state[key] = value
    return state


def _read_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - pickled extras (e.g. numpy scalars, optimizer objects)
        if "weights_only" not in str(err) and "Unpickl" not in type(err).__name__:
            raise
        warnings.warn(f"{path}: holds more than tensors, loaded with weights_only=False (trust the file's source)")
        return torch.load(path, map_location="cpu", weights_only=False)


def _checkpoint_file(checkpoint: str | Path | None, kind: str) -> Path:
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if path.is_dir():
            path = path / HUB_FILE
        if not path.is_file():
            raise FileNotFoundError(f"CNN14 checkpoint {path}: no such file")
        return path
    if kind != "msclap":
        raise FileNotFoundError(
            "no default LAION-CLAP PANN-14 checkpoint: laion-clap's downloadable checkpoints are HTSAT ones. "
            "Pass the path of a PANN-14 checkpoint file (a dict with 'state_dict': audio_branch.*, "
            "audio_projection.*) as checkpoint.")
    return _hub_file(HUB_REPO, HUB_FILE)


def _hub_file(repo: str, filename: str) -> Path:
    """The hub file from the hub cache or (when online) downloaded into it; fails fast offline."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo, filename, local_files_only=True))
    except Exception:  # noqa: BLE001 - not in the cache yet
        pass
    # huggingface_hub retries an unreachable host for about 30 s: check once, quickly, first
    if _offline() or not _hub_reachable():
        raise OSError(
            f"cannot load CLAP CNN14 weights: {filename} of the hub repo {repo!r} is not in the Hugging Face cache, "
            f"and the hub is {'disabled (HF_HUB_OFFLINE)' if _offline() else 'unreachable'}. Either run once with "
            f"network access (the file is then cached), or download https://huggingface.co/{repo}/resolve/main/"
            f"{filename}, place it anywhere (e.g. models/{filename}) and pass that path (or its directory) as the "
            f"checkpoint.")
    return Path(hf_hub_download(repo, filename, etag_timeout=10))
