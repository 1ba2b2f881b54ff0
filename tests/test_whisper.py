"""whisper-encoder backbone: CTranslate2 conversion, short-clip encoder, exact trimming, offline loading; espeak-ng."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers / huggingface_hub are imported

import re
import time

import jiwer
import numpy as np
import pytest
import torch
from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from kwyn import speech
from kwyn.backbones import ct2, load_backbone
from kwyn.backbones.whisper import WhisperEncoderBackbone
from kwyn.heads import MLPHead
from kwyn.masks import MaskSet
from kwyn.model import TaskModel
from kwyn.sites import attach_all
from kwyn.trim import load_trimmed, save_trimmed, trim_model

SENTENCES = ["the quick brown fox jumps over the lazy dog",
             "turn on the lights in the kitchen",
             "please call my mother tomorrow morning",
             "what is the weather like today",
             "open the door and close the window"]


@pytest.fixture(scope="module")
def tiny_en():
    return load_backbone("whisper-tiny-encoder")


@pytest.fixture(scope="module")
def random_dir(tmp_path_factory):
    """A tiny random Whisper written by transformers' save_pretrained: the real on-disk loading path."""
    torch.manual_seed(0)
    config = WhisperConfig(vocab_size=64, num_mel_bins=16, d_model=32, encoder_layers=3, encoder_attention_heads=4,
                           encoder_ffn_dim=24, decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=16,
                           max_source_positions=60, max_target_positions=16, pad_token_id=0, bos_token_id=1,
                           eos_token_id=2, decoder_start_token_id=1, init_std=0.2)
    path = tmp_path_factory.mktemp("whisper-random")
    WhisperForConditionalGeneration(config).save_pretrained(path)
    return path


def _speech(text: str, seconds: float) -> torch.Tensor:
    """espeak-ng speech cut or zero-padded to `seconds`."""
    audio = torch.from_numpy(speech.synthesize(text))
    n = int(seconds * 16000)
    return torch.nn.functional.pad(audio[:n], (0, max(0, n - len(audio))))


def test_bundled_tiny_en_transcribes_espeak_speech():
    config, state = ct2.load_whisper()
    assert (config.d_model, config.encoder_layers, config.decoder_layers, config.encoder_attention_heads,
            config.encoder_ffn_dim, config.vocab_size) == (384, 4, 4, 6, 1536, 51864)
    model = WhisperForConditionalGeneration(config).eval()
    model.load_state_dict(state, strict=True)
    model.generation_config = ct2.generation_config(config)
    tokenizer = ct2.load_tokenizer()
    # the sentences in one clip, 0.3 s apart: one 30 s encoder pass. espeak-ng's robotic voice costs a few
    # words (the fox sentence comes out as "quick roundfark stump"); the other sentences come out exact
    pause = np.zeros(4800, np.float32)
    audio = np.concatenate([part for s in SENTENCES for part in (speech.synthesize(s), pause)])
    features = WhisperFeatureExtractor(feature_size=config.num_mel_bins)(
        audio, sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        ids = model.generate(features, max_new_tokens=80)
    hyp = re.sub(r"[^a-z' ]", "", tokenizer.decode(ids[0], skip_special_tokens=True).lower())
    assert jiwer.wer(" ".join(SENTENCES), " ".join(hyp.split())) <= 0.25, hyp


def test_embedding_of_short_clip_equals_transformers_encoder(tiny_en):
    noise = 0.1 * torch.randn(16000, generator=torch.Generator().manual_seed(0))
    audio = torch.stack([_speech("yes", seconds=1.0), noise])
    features = tiny_en.log_mel(audio)
    assert features.shape == (2, 80, 100)  # 1 s: 100 frames, not Whisper's 3000
    assert tiny_en.log_mel(torch.zeros(1, 16100)).shape[-1] == 102  # a partial hop counts; even frame count
    reference = WhisperFeatureExtractor()([a.numpy() for a in audio], sampling_rate=16000, padding="longest",
                                          return_tensors="pt").input_features
    torch.testing.assert_close(features, reference, atol=1e-4, rtol=1e-4)

    # transformers' own encoder on the same features: one whose positions end at the clip's length
    short = WhisperConfig(**{**tiny_en.encoder.config.to_dict(), "max_source_positions": 50})
    short._attn_implementation = tiny_en.config["attn_implementation"]  # same kernels: sdpa differs by ~1e-5
    reference_encoder = WhisperEncoder(short).eval()
    state = {k: v[:50] if k == "embed_positions.weight" else v for k, v in tiny_en.encoder.state_dict().items()}
    reference_encoder.load_state_dict(state)
    with torch.no_grad():
        expected = reference_encoder(features).last_hidden_state
        ours = tiny_en.hidden_states(features)
        embedding = tiny_en(audio)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    assert embedding.shape == (2, tiny_en.embedding_dim) == (2, 384)
    torch.testing.assert_close(embedding, expected.mean(dim=1), atol=1e-5, rtol=1e-5)


def test_site_table_of_tiny_en(tiny_en):
    rows = {r["site"]: r for r in tiny_en.site_table()}
    assert list(rows) == ["conv1"] + [f"layer{i}.{k}" for i in range(4) for k in ("attention", "ffn")]
    assert "conv2" not in rows  # its channels are the residual stream
    assert rows["conv1"] == {"site": "conv1", "kind": "conv_channels", "units": 384,
                             "params_per_unit": 80 * 3 + 1 + 384 * 3}  # conv1 row + bias, conv2 input column
    d, head_dim = 384, 64
    assert rows["layer2.attention"] == {"site": "layer2.attention", "kind": "attention_heads", "units": 6,
                                        "params_per_unit": 4 * d * head_dim + 2 * head_dim}  # q,v biases; k none
    assert rows["layer3.ffn"] == {"site": "layer3.ffn", "kind": "ffn_units", "units": 1536,
                                  "params_per_unit": d + 1 + d}
    assert tiny_en.param_count() == 8_208_384  # Whisper tiny encoder, positional table included


# per site: "none", "some" or "all" units kept; every kind gets all three across the two patterns
PATTERNS = [
    {"conv1": "some", "layer0.attention": "none", "layer0.ffn": "some", "layer1.attention": "some",
     "layer1.ffn": "none", "layer2.attention": "all", "layer2.ffn": "all"},
    {"conv1": "none", "layer0.attention": "some", "layer0.ffn": "all", "layer1.attention": "all",
     "layer1.ffn": "some", "layer2.attention": "none", "layer2.ffn": "none"},
]


def _masked(model, pattern, seed):
    gen = torch.Generator().manual_seed(seed)
    masks = MaskSet(model.mask_sites())
    for mask in masks.values():
        n = mask.logits.numel()
        keep = {"none": torch.zeros(n, dtype=torch.bool), "all": torch.ones(n, dtype=torch.bool),
                "some": torch.randperm(n, generator=gen) < n // 2}[pattern[mask.site.name]]
        mask.logits.data = torch.where(keep, 1.0, -1.0)
    return masks


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("pattern", range(len(PATTERNS)))
def test_trimmed_equals_masked(random_dir, pattern, attn):
    model = WhisperEncoderBackbone.from_pretrained(str(random_dir), attn_implementation=attn)
    assert model.config["d_model"] == 32 and model.config["num_mel_bins"] == 16
    masks = _masked(model, PATTERNS[pattern], seed=pattern)
    audio = 0.1 * torch.randn(2, 5000, generator=torch.Generator().manual_seed(1))
    handles = attach_all(model, masks.values())
    with torch.no_grad():
        masked = model.hidden_states(model.log_mel(audio))
    for h in handles:
        h.remove()
    keep = masks.kept_units()
    expected_params = model.trimmed_param_count(keep)
    model.trim(keep)
    with torch.no_grad():
        trimmed = model.hidden_states(model.log_mel(audio))
    torch.testing.assert_close(trimmed, masked, atol=1e-5, rtol=1e-5)
    assert model.param_count() == expected_params
    assert {s.name: s.units for s in model.mask_sites()} == {k: len(v) for k, v in keep.items()}


def test_trimmed_model_round_trips_through_disk(random_dir, tmp_path):
    backbone = WhisperEncoderBackbone.from_pretrained(str(random_dir))
    site_units = {s.name: s.units for s in backbone.mask_sites()}
    kept = {k: v.tolist() for k, v in _masked(backbone, PATTERNS[0], seed=3).kept_units().items()}
    model = TaskModel(trim_model(backbone, kept), MLPHead(backbone.embedding_dim, 3, hidden=8)).eval()
    save_trimmed(model, kept, site_units, tmp_path / "trimmed")
    rebuilt = load_trimmed(tmp_path / "trimmed")
    assert rebuilt.backbone.param_count() == backbone.param_count() < WhisperEncoderBackbone.from_pretrained(
        str(random_dir)).param_count()
    audio = 0.1 * torch.randn(1, 4000, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(audio), model(audio), atol=0, rtol=0)


def test_clear_errors_offline_and_on_bad_checkpoints(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(FileNotFoundError, match=r"nobody/whisper-absent.*HF_HUB_OFFLINE(.|\n)*save_pretrained"):
        WhisperEncoderBackbone.from_pretrained("nobody/whisper-absent")
    with pytest.raises(FileNotFoundError, match="no such directory"):
        WhisperEncoderBackbone.from_pretrained(str(tmp_path / "missing" / "dir"))
    assert time.monotonic() - start < 5
    (tmp_path / "model.bin").write_bytes(b"\x07\x00\x00\x00garbage")
    with pytest.raises(ct2.CT2FormatError, match="version 7"):
        WhisperEncoderBackbone.from_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="contradicts"):
        WhisperEncoderBackbone.from_pretrained(None, d_model=512)
    with pytest.raises(ValueError, match="unknown whisper-encoder config"):
        WhisperEncoderBackbone({"d_modle": 32})


def test_speech_is_deterministic_and_resampled():
    first = speech.synthesize("left", sample_rate=16000)
    speech.synthesize("something else entirely", pitch=80, rate_wpm=220)
    again = speech.synthesize("left", sample_rate=16000)
    assert first.dtype == np.float32 and np.array_equal(first, again)
    native = speech.synthesize("left", sample_rate=22050)
    assert abs(len(native) * 16000 / 22050 - len(first)) <= 1
    assert 0.01 < np.abs(first).max() <= 1.0
    assert any("en-us" in v["languages"] for v in speech.list_voices())
    with pytest.raises(ValueError, match="no voice"):
        speech.synthesize("left", voice="xx-nonexistent")


def test_each_thread_speaks_through_its_own_helper_and_a_dead_one_is_replaced():
    """Utterances come from a helper process (kwyn.speech.Speaker); threads do not share one, and the
    samples do not depend on which helper spoke them or on what it spoke before."""
    from concurrent.futures import ThreadPoolExecutor

    first = speech.synthesize("left")
    with ThreadPoolExecutor(2) as pool:
        outputs = list(pool.map(lambda text: speech.synthesize(text), ["up", "left", "down", "left"]))
    assert np.array_equal(outputs[1], first) and np.array_equal(outputs[3], first)
    helper = speech._speaker()
    helper._process.kill()
    helper._process.wait()
    with pytest.raises(RuntimeError, match="helper process exited"):
        helper.speak("left", "en-us", 160, 50)
    assert np.array_equal(speech.synthesize("left"), first)  # a new helper for this thread
    speech.close_speakers()
    assert helper._process.poll() is not None and not speech._started
