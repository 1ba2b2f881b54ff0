"""Physical removal of units from standard layers: each function keeps `idx` along one axis.

Backbones compose these in their own `trim`; the functions work on any device, the meta
device included (used to count parameters of a trimmed model without building it).
"""
from __future__ import annotations

import torch
from torch import nn


def _keep(param: torch.Tensor | None, idx: torch.Tensor, dim: int):
    if param is None:
        return None
    kept = param.detach().index_select(dim, idx.to(param.device)).clone()
    if isinstance(param, nn.Parameter):
        return nn.Parameter(kept, requires_grad=param.requires_grad)
    return kept


def conv_out(conv: nn.modules.conv._ConvNd, idx: torch.Tensor) -> None:
    if conv.groups != 1:
        raise ValueError("conv_out handles groups=1 only; use depthwise_conv for depthwise layers")
    conv.weight = _keep(conv.weight, idx, 0)
    conv.bias = _keep(conv.bias, idx, 0)
    conv.out_channels = len(idx)
    _make_zero_width_safe(conv)


def conv_in(conv: nn.modules.conv._ConvNd, idx: torch.Tensor) -> None:
    conv.weight = _keep(conv.weight, idx, 1)
    conv.in_channels = len(idx)
    _make_zero_width_safe(conv)


def depthwise_conv(conv: nn.modules.conv._ConvNd, idx: torch.Tensor) -> None:
    conv.weight = _keep(conv.weight, idx, 0)
    conv.bias = _keep(conv.bias, idx, 0)
    conv.in_channels = conv.out_channels = len(idx)
    conv.groups = max(len(idx), 1)
    _make_zero_width_safe(conv)


def batch_norm(bn: nn.modules.batchnorm._BatchNorm, idx: torch.Tensor) -> None:
    bn.weight = _keep(bn.weight, idx, 0)
    bn.bias = _keep(bn.bias, idx, 0)
    if bn.running_mean is not None:
        bn.running_mean = _keep(bn.running_mean, idx, 0)
        bn.running_var = _keep(bn.running_var, idx, 0)
    bn.num_features = len(idx)
    if bn.num_features == 0 and type(bn) in _ZERO_SAFE:
        bn.__class__ = _ZERO_SAFE[type(bn)]


def linear_out(linear: nn.Linear, idx: torch.Tensor) -> None:
    linear.weight = _keep(linear.weight, idx, 0)
    linear.bias = _keep(linear.bias, idx, 0)
    linear.out_features = len(idx)


def linear_in(linear: nn.Linear, idx: torch.Tensor) -> None:
    linear.weight = _keep(linear.weight, idx, 1)
    linear.in_features = len(idx)


class _ZeroWidthSafeConv:
    """Mixin for a conv layer trimmed to zero input or output channels.

    torch's convolutions reject empty weights, yet a layer with no unit left must still run:
    with no input channel its output is its bias everywhere; with no output channel it is empty.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_channels and self.out_channels:
            return super().forward(x)
        spatial = x.shape[2:]
        probe = x.new_zeros(x.shape[0], 1, *spatial)
        probe_weight = x.new_zeros(1, 1, *self.kernel_size)
        out_shape = _conv_shape(self, probe, probe_weight)
        out = x.new_zeros(out_shape[0], self.out_channels, *out_shape[2:])
        if self.bias is not None:
            out = out + self.bias.view(1, -1, *([1] * len(spatial)))
        return out


def _conv_shape(conv, probe, probe_weight) -> torch.Size:
    fn = {1: torch.nn.functional.conv1d, 2: torch.nn.functional.conv2d}[probe.dim() - 2]
    if conv.padding_mode != "zeros":
        raise ValueError("zero-width convolutions support padding_mode='zeros' only")
    return fn(probe, probe_weight, None, conv.stride, conv.padding, conv.dilation).shape


class ZeroWidthSafeConv1d(_ZeroWidthSafeConv, nn.Conv1d):
    pass


class ZeroWidthSafeConv2d(_ZeroWidthSafeConv, nn.Conv2d):
    pass


class _ZeroWidthSafeBatchNorm:
    """Mixin for a BatchNorm left with no channel: torch's kernel rejects it; the output is empty too."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.num_features == 0 else super().forward(x)


class ZeroWidthSafeBatchNorm1d(_ZeroWidthSafeBatchNorm, nn.BatchNorm1d):
    pass


class ZeroWidthSafeBatchNorm2d(_ZeroWidthSafeBatchNorm, nn.BatchNorm2d):
    pass


_ZERO_SAFE = {nn.Conv1d: ZeroWidthSafeConv1d, nn.Conv2d: ZeroWidthSafeConv2d,
              nn.BatchNorm1d: ZeroWidthSafeBatchNorm1d, nn.BatchNorm2d: ZeroWidthSafeBatchNorm2d}


def _make_zero_width_safe(conv: nn.Module) -> None:
    if (conv.in_channels == 0 or conv.out_channels == 0) and type(conv) in _ZERO_SAFE:
        conv.__class__ = _ZERO_SAFE[type(conv)]
