"""Reading audio: decode with soundfile (torchaudio's loader needs FFmpeg), mono, resample.

Every model has one sample rate; a file at another rate is resampled, never played at the
wrong speed. Bad files raise BadAudioError naming the path, so a caller can stop or skip.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
import torchaudio.functional as AF


class BadAudioError(ValueError):
    def __init__(self, path, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"bad audio file {self.path}: {reason}")


def read_audio(path, target_sr: int) -> torch.Tensor:
    """Decode `path` -> mono float32 1-D tensor at target_sr."""
    path = Path(path)
    if not path.is_file():
        raise BadAudioError(path, "no such file")
    if path.stat().st_size == 0:
        raise BadAudioError(path, "empty file (0 bytes)")
    try:
        data, sr = sf.read(path, dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError) as e:
        raise BadAudioError(path, f"cannot decode ({e})") from None
    if data.shape[0] == 0:
        raise BadAudioError(path, "zero-length audio")
    if not np.isfinite(data).all():
        raise BadAudioError(path, "contains NaN or inf samples")
    x = torch.from_numpy(data.mean(axis=1))
    if sr != target_sr:
        x = AF.resample(x, sr, target_sr)
    return x


def crop_or_pad(x: torch.Tensor, length: int, offset: int = 0) -> torch.Tensor:
    """`length` samples of x starting at `offset`, zero-padded at the end when x is short."""
    if offset < 0 or length < 0:
        raise ValueError(f"offset and length must be >= 0, got offset={offset}, length={length}")
    x = x[..., offset:offset + length]
    return F.pad(x, (0, length - x.shape[-1]))
