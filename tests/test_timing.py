"""kwyn.timing: models timed side by side, alternated (cold) or in blocks (warm); benchmarks/onnx_speed.py's warm columns."""
import importlib.util
import json
import sys

import pytest
import torch

from conftest import ROOT
from kwyn import timing

sys.path.insert(0, str(ROOT / "benchmarks"))  # onnx_speed imports its sibling scripts, as when run as a script
spec = importlib.util.spec_from_file_location("onnx_speed", ROOT / "benchmarks" / "onnx_speed.py")
onnx_speed = importlib.util.module_from_spec(spec)
spec.loader.exec_module(onnx_speed)


class CachedMachine:
    """A fake clock and models: a call costs 1 ms when the caches hold its model's weights (that model ran last),
    5 ms when another model ran in between."""

    def __init__(self):
        self.now, self.last, self.calls = 0.0, None, []

    def clock(self) -> float:
        return self.now

    def model(self, name: str):
        def run():
            self.now += 0.001 if self.last == name else 0.005
            self.last = name
            self.calls.append(name)
        return run


def test_alternated_runs_start_cold_and_blocks_start_warm():
    for block, expected in [(1, 5.0), (10, 1.0)]:
        machine = CachedMachine()
        ms = timing.median_ms({"full": machine.model("full"), "trimmed": machine.model("trimmed")}, repeats=20,
                              warmup=2, block=block, clock=machine.clock)
        assert ms == pytest.approx({"full": expected, "trimmed": expected})


def test_blocks_time_repeats_calls_each_after_one_untimed_call():
    machine = CachedMachine()
    timing.median_ms({"a": machine.model("a"), "b": machine.model("b")}, repeats=7, warmup=2, block=3,
                     clock=machine.clock)
    # warm-up alternated; then rounds of (1 untimed + 3 timed) per model; the last round times the 1 left
    assert machine.calls == ["a", "b"] * 2 + (["a"] * 4 + ["b"] * 4) * 2 + ["a"] * 2 + ["b"] * 2


@pytest.mark.parametrize("bad", [{"repeats": 0}, {"block": 0}, {"warmup": -1}])
def test_bad_counts_are_named(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        timing.median_ms({"a": lambda: None}, **bad)


def test_onnx_speed_times_warm_columns_and_reports_speedup_per_flops(tmp_path):
    out, table = tmp_path / "speed.json", tmp_path / "speed.md"
    onnx_speed.main(["--backbone", "crepe-tiny", "--input-seconds", "0.064", "--ratios", "0.5", "--repeats", "3",
                     "--warmup", "1", "--warm-block", "2", "--json", str(out)])
    rows = json.loads(out.read_text())
    assert [r["model"] for r in rows] == ["full", "0.5"]
    trimmed = rows[1]
    assert trimmed["warm_block"] == 2 and trimmed["ort_warm_ms"] > 0 and trimmed["torch_warm_ms"] > 0
    assert trimmed["ort_warm_speedup"] == pytest.approx(rows[0]["ort_warm_ms"] / trimmed["ort_warm_ms"], rel=1e-2)

    onnx_speed.main(["--report", str(table), str(out)])
    header, _, _, last = table.read_text().splitlines()
    cells = dict(zip([c.strip() for c in header.split("|")], [c.strip() for c in last.split("|")]))
    assert float(cells["ORT warm / FLOPs"]) == pytest.approx(
        trimmed["ort_warm_speedup"] / trimmed["flops_ratio"], abs=0.006)
    assert float(cells["PyTorch / FLOPs"]) == pytest.approx(trimmed["torch_speedup"] / trimmed["flops_ratio"], abs=0.006)


def test_onednn_linears_keep_the_outputs_and_leave_layers_with_no_unit():
    from torch.utils.mkldnn import MkldnnLinear

    from kwyn.backbones import load_backbone

    torch.manual_seed(0)
    model = onnx_speed.with_head(load_backbone("crepe-tiny", pretrained=False))
    model.empty = torch.nn.Linear(4, 0)  # a layer trimmed to no unit: oneDNN has no empty inner product
    linears = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m.out_features]
    audio = torch.randn(2, 2048)
    with torch.no_grad():
        expected = model(audio)
        onnx_speed.onednn_linears(model)
        assert torch.allclose(model(audio), expected, atol=1e-5)
    modules = dict(model.named_modules())
    assert linears and all(isinstance(modules[name], MkldnnLinear) for name in linears)
    assert type(model.empty) is torch.nn.Linear
