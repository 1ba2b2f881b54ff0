"""Take a trimmed model out of PyTorch: ONNX export (run by ONNX Runtime) and dynamic int8 quantisation.

What is exported is what `predict` runs: encoder + head, audio in, the head's output out.
- input `audio`: float32 (batch, samples) at the backbone's sample rate;
- output `logits` (classification, tagging), or `log_probs` (batch, frames, classes) and `frames`
  (valid frames per clip) for an ASR model.
Batch and length are dynamic for every family (torch.export with Dim.DYNAMIC; tested on two
batch sizes and lengths per family). The length stays within what the PyTorch model accepts:
CREPE from 1024 samples (one frame: PyTorch pads shorter clips, the exported graph keeps the
branch of the example), Whisper up to its 30 s of positions, Wav2Vec2 from one receptive field
(400 samples), CNN14 from `min_samples()`, MusicFM above 1024 samples. The graph does not check
these bounds: ONNX Runtime fails on a shorter clip with a shape error of some inner node.
ASR models are the exception: dynamic batch, but the length is fixed at the traced `seconds`, and
every clip of a batch is taken at its full length (no `lengths` input). The head's packed LSTM
(pack_padded_sequence) has no torch.export support; with every clip at full length packing
changes nothing, so the exported graph runs the same LSTM on the batch as it is. With a dynamic
number of frames, torch 2.14's exporter fails to decompose aten.lstm (tested: the export of a
dynamic length raises), hence the fixed length: pad or cut clips to it.

The exporter is torch.onnx's dynamo exporter (torch.export + onnxscript), the one torch keeps;
every export is checked against PyTorch on the example and on a second batch size and length
(largest |difference| <= `atol`, 1e-4 by default), so a graph that computes something else never
reaches disk silently.

int8: ONNX Runtime's dynamic quantisation (weights int8, activations quantised on the fly) of
the exported graph's MatMul and Gemm nodes (Linear layers). torch's own
`torch.ao.quantization.quantize_dynamic` still runs in torch 2.14 but warns that it is deprecated
and to be removed, and an int8 PyTorch model could not be exported anyway; the ONNX route is the
one that deploys. Conv layers stay float by default: adding "Conv" to `op_types` fails on CREPE's
graph (ONNX Runtime's quantiser wants conv weights as initializers; CREPE's are squeezed from
its Conv2d weights inside the graph), and dynamic ConvInteger is not what ONNX Runtime optimises.
Linear layers trimmed to no unit stay float (see `quantize_int8`).

    python -m kwyn export models/crepe_pitch_kwyn_50 --onnx            # -> models/crepe_pitch_kwyn_50.onnx
    python -m kwyn export models/crepe_pitch_kwyn_50 --onnx --int8     # also ...kwyn_50.int8.onnx

    from kwyn.export import export_onnx, onnx_session
    path = export_onnx("models/crepe_pitch_kwyn_50", "crepe50.onnx")
    logits = onnx_session(path).run(None, {"audio": audio_16k.numpy()})[0]
"""
from __future__ import annotations

import argparse
import functools
import json
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kwyn import timing
from kwyn.io import atomic_path
from kwyn.model import AsrModel, TaskModel

INPUT = "audio"
ATOL = 1e-4
INT8_OPS = ("MatMul", "Gemm")  # Linear layers; see the module docstring for Conv


class _Pooled(nn.Module):
    """audio -> logits: the TaskModel's forward with audio as its only input."""

    def __init__(self, model: TaskModel):
        super().__init__()
        self.model = model

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.model(audio)


class _Sequence(nn.Module):
    """audio -> (log_probs, frames) for an AsrModel, every clip at full length (see the module docstring)."""

    def __init__(self, model: AsrModel):
        super().__init__()
        self.model = model

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sequence, frames = self.model.backbone.sequence(audio)
        head = self.model.head
        hidden, _ = head.lstm(sequence)  # = the packed LSTM when every clip is at full length
        return head.out(hidden).log_softmax(dim=-1), frames


def _exportable(model: TaskModel) -> nn.Module:
    # SSF's scale-and-shift (model.modulations) are forward hooks, which torch.export traces as they are
    return _Sequence(model) if isinstance(model, AsrModel) else _Pooled(model)


def output_names(model: TaskModel) -> list[str]:
    return ["log_probs", "frames"] if isinstance(model, AsrModel) else ["logits"]


def _load(model_or_dir: TaskModel | str | Path) -> TaskModel:
    if isinstance(model_or_dir, nn.Module):
        return model_or_dir.eval()
    from kwyn.trim import load_trimmed

    return load_trimmed(model_or_dir)


def example_audio(model: TaskModel, seconds: float = 1.0, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """A random batch at the backbone's sample rate (the length is what export traces)."""
    backbone = model.backbone
    samples = int(round(seconds * backbone.sample_rate))
    return 0.1 * torch.randn(batch, samples, generator=torch.Generator().manual_seed(seed))


def export_onnx(model_or_dir: TaskModel | str | Path, out_path: str | Path, seconds: float = 1.0,
                atol: float = ATOL, metadata: dict | None = None) -> Path:
    """Export a trimmed model (a TaskModel, or a models/<exp> directory) to an ONNX file at out_path.

    `seconds`: the length of the traced example (batch and length stay dynamic; for ASR models the
    length stays this one). The written file
    is run by ONNX Runtime on the example and on another batch size and length, and compared with
    PyTorch; a difference above `atol` raises (and nothing is written). The file's metadata holds
    the sample rate, the outputs and the model's kwyn config (when it was loaded from disk).
    """
    model = _load(model_or_dir)
    wrapper = _exportable(model).eval()
    example = example_audio(model, seconds)
    names = output_names(model)
    dynamic = torch.export.Dim.DYNAMIC
    # ASR: the LSTM does not export with a dynamic number of frames (see the module docstring)
    sequence = isinstance(model, AsrModel)
    dynamic_shapes = ({0: dynamic},) if sequence else ({0: dynamic, 1: dynamic},)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's progress chatter and torch.export's deprecation notes
        try:
            program = torch.onnx.export(wrapper, (example,), dynamo=True, input_names=[INPUT], output_names=names,
                                        dynamic_shapes=dynamic_shapes, verbose=False)
        except Exception as err:  # noqa: BLE001 - the exporter raises several types; name the model either way
            family = model.backbone.family
            raise RuntimeError(f"ONNX export of a {family} model ({type(model).__name__}, head "
                               f"{model.head.config.get('kind')}) failed: {type(err).__name__}: "
                               f"{str(err).splitlines()[0] if str(err) else ''}") from err
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_path) as tmp:
        program.save(str(tmp))
        _set_metadata(tmp, {"kwyn.sample_rate": model.backbone.sample_rate, "kwyn.outputs": names,
                            "kwyn.config": getattr(model, "config", None), **(metadata or {})})
        second = _second_example(model, wrapper, seconds, sequence)
        for audio in (example, second):
            diff = max_abs_diff_onnx(tmp, wrapper, audio)
            if not diff <= atol:  # NaN fails too
                raise AssertionError(f"the exported model differs from PyTorch by {diff:.3g} (> {atol}) on a batch of "
                                     f"{tuple(audio.shape)}; not written")
    return out_path


@torch.no_grad()
def _second_example(model: TaskModel, wrapper: nn.Module, seconds: float, sequence: bool) -> torch.Tensor:
    """Another batch size and length than the traced ones: longer, or shorter where the model has a longest
    clip (Whisper); for ASR the traced length, which is fixed."""
    if sequence:
        return example_audio(model, seconds, batch=3, seed=1)
    longer = example_audio(model, seconds * 1.37, batch=3, seed=1)
    try:
        wrapper(longer)
        return longer
    except ValueError:
        return example_audio(model, seconds * 0.73, batch=3, seed=1)


def _set_metadata(path: Path, values: dict) -> None:
    import onnx

    proto = onnx.load(str(path))
    for key, value in values.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    onnx.save(proto, str(path))


UNFUSED = "SkipLayerNormFusion"  # the ONNX Runtime graph optimiser that onnx_session turns off (see there)


def onnx_session(path: str | Path, threads: int = 1, unfused: str = UNFUSED, **options):
    """An ONNX Runtime CPU session with a fixed thread count (as kwyn.profile measures PyTorch); `options`: other
    ort.SessionOptions attributes (enable_profiling, optimized_model_filepath, ...).

    `unfused`: the ONNX Runtime graph optimisers turned off (comma-separated; "" for ONNX Runtime's defaults).
    ONNX Runtime fuses a residual add and the layer norm after it into SkipLayerNormalization, whose CPU kernel
    runs 26 layer norms of 199 x 768 in 19.6 ms where the unfused Add + LayerNormalization take 3.25 ms
    (onnxruntime 1.32, 1 thread, AVX-512; benchmarks/ort_layernorm.py): on Wav2Vec2 that was 19 % of a
    75 %-trimmed model's time.
    """
    import onnxruntime as ort

    session_options = ort.SessionOptions()
    session_options.intra_op_num_threads = threads
    session_options.inter_op_num_threads = 1
    session_options.log_severity_level = 3  # errors only
    if unfused:
        session_options.add_session_config_entry("optimization.disable_specified_optimizers", unfused)
    for name, value in options.items():
        setattr(session_options, name, value)
    return ort.InferenceSession(str(path), session_options, providers=["CPUExecutionProvider"])


def optimized_nodes(path: str | Path, **session_args) -> list:
    """The nodes of the graph ONNX Runtime runs for the model at `path` (after its graph optimisations), for a
    session made by onnx_session(path, **session_args)."""
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        onnx_session(path, optimized_model_filepath=str(optimized), **session_args)
        return list(onnx.load(str(optimized), load_external_data=False).graph.node)


NCHWC = "com.microsoft.nchwc"  # the domain of ONNX Runtime's blocked-layout operators


def conv_layout(path: str | Path) -> dict[str, int]:
    """How ONNX Runtime lays out the model's convolutions on this CPU, read from its optimised graph:
    {"convs": all, "blocked": those in its blocked (NCHWc) layout, "reorders": layout conversions between them}.

    On x86 CPUs with AVX2 or AVX-512, ONNX Runtime runs a convolution in its blocked layout, its fastest
    path, only where the channel counts are multiples of its block (8 or 16 channels); a convolution left out
    runs as im2col + GEMM, with reorders at the boundaries. A trimmed model whose widths are multiples of 16
    (`sparsity.multiple_of: 16`) keeps blocked every convolution the full model has blocked (README "Export").

        conv_layout("models/x.onnx")   # {"convs": 14, "blocked": 12, "reorders": 1}
    """
    nodes = optimized_nodes(path)
    convs = [n for n in nodes if n.op_type in ("Conv", "FusedConv")]
    return {"convs": len(convs), "blocked": sum(n.domain == NCHWC for n in convs),
            "reorders": sum(n.domain == NCHWC and n.op_type.startswith("Reorder") for n in nodes)}


@torch.no_grad()
def max_abs_diff_onnx(path_or_session, wrapper: nn.Module, audio: torch.Tensor) -> float:
    """Largest |ONNX Runtime - PyTorch| over every output, for one batch."""
    session = onnx_session(path_or_session) if isinstance(path_or_session, (str, Path)) else path_or_session
    expected = wrapper(audio)
    expected = expected if isinstance(expected, tuple) else (expected,)
    got = session.run(None, {INPUT: audio.numpy()})
    return max(float(np.abs(g.astype(np.float64) - e.numpy()).max()) if e.numel() else 0.0
               for g, e in zip(got, expected))


def weight_nodes(onnx_path: str | Path, op_types: tuple[str, ...] = INT8_OPS) -> list[tuple[str, str, list[int]]]:
    """(node name, op type, weight shape) of every `op_types` node whose second input is a constant: the nodes
    dynamic quantisation turns into int8."""
    import onnx

    model = onnx.load(str(onnx_path))
    weights = {init.name: list(init.dims) for init in model.graph.initializer}
    return [(node.name, node.op_type, weights[node.input[1]]) for node in model.graph.node
            if node.op_type in op_types and len(node.input) > 1 and node.input[1] in weights]


def quantize_int8(onnx_path: str | Path, out_path: str | Path, op_types: tuple[str, ...] = INT8_OPS) -> Path:
    """ONNX Runtime dynamic int8 quantisation of an exported model's `op_types` nodes (weights int8, per tensor).

    Nodes whose weight has no element (a layer trimmed to no unit: 0 heads, 0 FFN units) stay float.
    ONNX Runtime's int8 MatMul of an empty weight does not give the zeros it should: on the grid's
    Whisper model at 75 % (one layer with no head left) that one node took the valid score from
    0.944 to 0.100 (benchmarks/results/int8_sensitivity.md); it holds no weight to shrink anyway.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    empty = [name for name, _, shape in weight_nodes(onnx_path, op_types) if 0 in shape]
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        quantize_dynamic(str(onnx_path), str(tmp), weight_type=QuantType.QInt8, op_types_to_quantize=list(op_types),
                         nodes_to_exclude=empty)
    return out_path


def file_size_mb(path: str | Path) -> float:
    """Size on disk in MB (10^6 bytes): what a deployment ships."""
    return Path(path).stat().st_size / 1e6


def onnx_latency_ms(sessions: dict, audio: np.ndarray, repeats: int = 30, warmup: int = 5,
                    block: int = 1) -> dict[str, float]:
    """Median wall time per run of each ONNX Runtime session, interleaved as kwyn.timing.median_ms: alternated
    run by run (`block` 1, as kwyn.profile.latency_ms), or warm, in blocks of `block` runs."""
    feed = {INPUT: np.ascontiguousarray(audio, dtype=np.float32)}
    runs = {name: functools.partial(session.run, None, feed) for name, session in sessions.items()}
    return timing.median_ms(runs, repeats, warmup, block)


def onnx_predict(session, dataset, batch_size: int = 32) -> torch.Tensor:
    """Logits of an exported pooled model (classification, tagging) for every dataset[i], in order."""
    outputs = []
    for start in range(0, len(dataset), batch_size):
        audio = torch.stack([dataset[i][0] for i in range(start, min(start + batch_size, len(dataset)))])
        outputs.append(torch.from_numpy(session.run(None, {INPUT: audio.float().numpy()})[0]))
    return torch.cat(outputs) if outputs else torch.empty(0)


def evaluate_int8(model_dir: str | Path, test_set, out_dir: str | Path | None = None, seconds: float = 1.0,
                  threads: int = 1, repeats: int = 30, warmup: int = 5, batch_size: int = 32) -> dict:
    """Test metric, size and latency of the int8 ONNX model of a trimmed model, next to its fp32 ONNX model.

    model_dir: a models/<exp> directory (classification or tagging; an ASR test set has padded
    clips, which the exported model does not take: see the module docstring). test_set: the
    prepared test split (kwyn.data's PreparedDataset). The fp32 and int8 ONNX files go to out_dir
    (default: next to model_dir, <name>.onnx and <name>.int8.onnx). Latency: batch 1 of `seconds`,
    median over `repeats`, the two sessions alternated, `threads` threads.

    Returns {"metric": name of the primary metric, "int8": value, "fp32": value, "test_int8": every
    metric, "size_mb": int8 file MB, "fp32_size_mb", "latency_ms": int8, "fp32_latency_ms",
    "max_abs_diff_logits": int8 vs fp32 logits on the test set}.
    """
    from kwyn.metrics import task_type

    name, ttype = task_type(test_set)
    if name == "asr":
        raise ValueError("evaluate_int8 scores pooled models (classification, tagging); an ASR test set has padded "
                         "clips with lengths, which the exported model does not take")
    model_dir = Path(model_dir)
    out_dir = Path(out_dir) if out_dir is not None else model_dir.parent
    fp32 = export_onnx(model_dir, out_dir / f"{model_dir.name}.onnx", seconds=seconds)
    int8 = quantize_int8(fp32, out_dir / f"{model_dir.name}.int8.onnx")
    sessions = {"fp32": onnx_session(fp32, threads), "int8": onnx_session(int8, threads)}
    logits = {k: onnx_predict(s, test_set, batch_size) for k, s in sessions.items()}
    scores = {k: ttype.score(v, test_set) for k, v in logits.items()}
    sample_rate = json.loads(_metadata(fp32)["kwyn.sample_rate"])
    audio = example_audio_np(sample_rate, seconds)
    latency = onnx_latency_ms(sessions, audio, repeats, warmup)
    return {"metric": ttype.primary, "int8": scores["int8"][ttype.primary], "fp32": scores["fp32"][ttype.primary],
            "test_int8": scores["int8"], "size_mb": file_size_mb(int8), "fp32_size_mb": file_size_mb(fp32),
            "latency_ms": latency["int8"], "fp32_latency_ms": latency["fp32"],
            "max_abs_diff_logits": float((logits["int8"] - logits["fp32"]).abs().max()) if len(test_set) else 0.0,
            "onnx": str(fp32), "onnx_int8": str(int8), "threads": threads, "input_seconds": seconds}


def example_audio_np(sample_rate: int, seconds: float, batch: int = 1, seed: int = 0) -> np.ndarray:
    samples = int(round(seconds * sample_rate))
    return (0.1 * torch.randn(batch, samples, generator=torch.Generator().manual_seed(seed))).numpy()


def _metadata(path: str | Path) -> dict[str, str]:
    return dict(onnx_session(path).get_modelmeta().custom_metadata_map)


def main(argv: list[str]) -> int:
    """`python -m kwyn export MODEL_DIR --onnx [--int8] [--out PATH]`; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m kwyn export",
                                     description="Export a trimmed model (models/<experiment>) to ONNX, optionally "
                                                 "also as a dynamic int8 model.")
    parser.add_argument("model_dir", help="a trimmed model directory (config.json + model.safetensors)")
    parser.add_argument("--onnx", action="store_true", required=True, help="export to ONNX (the only format)")
    parser.add_argument("--int8", action="store_true", help="also write the dynamic int8 model, <out>.int8.onnx")
    parser.add_argument("--out", help="the .onnx file to write (default: MODEL_DIR.onnx, next to the directory)")
    parser.add_argument("--seconds", type=float, default=1.0, help="length of the traced example (default 1 s)")
    args = parser.parse_args(argv)
    model_dir = Path(args.model_dir)
    if not (model_dir / "config.json").is_file():
        parser.error(f"{model_dir} is not a trimmed model directory (no config.json): give models/<experiment>")
    out = Path(args.out) if args.out else model_dir.parent / f"{model_dir.name.rstrip('/')}.onnx"
    path = export_onnx(model_dir, out, seconds=args.seconds)
    print(f"wrote {path} ({file_size_mb(path):.1f} MB; matches PyTorch within {ATOL})")
    layout = conv_layout(path)
    if layout["convs"]:
        print(f"ONNX Runtime on this CPU runs {layout['blocked']} of its {layout['convs']} convolutions in its blocked "
              f"layout ({layout['reorders']} layout conversions); widths in multiples of 16 (sparsity.multiple_of) "
              "keep a trimmed model's convolutions blocked")
    if args.int8:
        int8 = quantize_int8(path, path.with_suffix(".int8.onnx"))
        print(f"wrote {int8} ({file_size_mb(int8):.1f} MB, dynamic int8 of {', '.join(INT8_OPS)})")
    return 0
