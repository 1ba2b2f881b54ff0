import numpy as np
import pytest
import soundfile as sf
import torch

from kwyn.audio import BadAudioError, crop_or_pad, read_audio


def sine(freq, sr, seconds=1.0, amp=0.5):
    t = np.arange(round(sr * seconds)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(x, sr):
    x = np.asarray(x, dtype=np.float64)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x)), n=8 * len(x)))
    return np.argmax(spectrum) * sr / (8 * len(x))


@pytest.mark.parametrize("sr", [8000, 48000, 16000])
def test_resample_keeps_duration_and_pitch(tmp_path, sr):
    path = tmp_path / f"a{sr}.wav"
    sf.write(path, sine(440, sr), sr, subtype="PCM_16")
    x = read_audio(path, 16000)
    assert x.dtype == torch.float32 and x.dim() == 1
    assert abs(x.shape[0] - 16000) <= 1
    assert abs(peak_hz(x, 16000) - 440) < 2


def test_stereo_is_averaged_to_mono(tmp_path):
    left, right = sine(440, 16000), sine(660, 16000, amp=0.25)
    sf.write(tmp_path / "s.wav", np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    x = read_audio(tmp_path / "s.wav", 16000)
    np.testing.assert_allclose(x.numpy(), (left + right) / 2, atol=1e-6)


def test_pcm_u8_reads(tmp_path):
    sf.write(tmp_path / "u8.wav", sine(440, 16000), 16000, subtype="PCM_U8")
    x = read_audio(tmp_path / "u8.wav", 16000)
    assert abs(float(x.abs().max()) - 0.5) < 0.02
    assert abs(peak_hz(x, 16000) - 440) < 2


def test_bad_files_raise_naming_the_path(tmp_path):
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4000))
    empty = tmp_path / "empty.wav"
    empty.touch()
    no_frames = tmp_path / "no_frames.wav"
    sf.write(no_frames, np.zeros(0, np.float32), 16000)
    nan = tmp_path / "nan.wav"
    sf.write(nan, np.array([0.1, np.nan, 0.2], np.float32), 16000, subtype="FLOAT")
    for path in [corrupt, empty, no_frames, nan, tmp_path / "missing.wav"]:
        with pytest.raises(BadAudioError) as err:
            read_audio(path, 16000)
        assert str(path) in str(err.value) and err.value.path == str(path)
        assert isinstance(err.value, ValueError)


def test_crop_or_pad():
    x = torch.arange(10.0)
    assert crop_or_pad(x, 4, 3).tolist() == [3, 4, 5, 6]
    assert crop_or_pad(x, 5, 8).tolist() == [8, 9, 0, 0, 0]
    assert crop_or_pad(x, 3, 20).tolist() == [0, 0, 0]
    with pytest.raises(ValueError):
        crop_or_pad(x, 3, -1)
