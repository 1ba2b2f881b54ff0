"""kwyn.distributed: runtime setup, GPU claims, batch sharding, autocast, and DDP on CPU (gloo, torchrun)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
import torch

from ddp_worker import build_model
from kwyn import distributed

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "tests" / "ddp_worker.py"
TORCHRUN = Path(sys.executable).with_name("torchrun")
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                "TORCHELASTIC_RUN_ID")


@pytest.fixture
def plain_env(monkeypatch):
    """A process not started by torchrun, whatever ran pytest."""
    for name in TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)


def child_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **extra)
    return env


def runtime(rank=0, world_size=1, precision="fp32") -> distributed.Runtime:
    return distributed.Runtime(rank=rank, world_size=world_size, local_rank=rank, device=torch.device("cpu"),
                               precision=precision)


def test_setup_plain_process(plain_env):
    rt = distributed.setup("auto", "fp32")
    try:
        assert (rt.rank, rt.world_size, rt.local_rank) == (0, 1, 0)
        assert rt.is_main and not rt.distributed
        assert rt.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
        assert distributed.wrap(model := torch.nn.Linear(2, 2), rt) is model
        assert distributed.all_reduce_mean(2.5, rt) == 2.5
        distributed.barrier(rt)
    finally:
        distributed.cleanup(rt)
        distributed.release_gpus()
    assert distributed.setup("cpu", "bf16").precision == "bf16"


@pytest.mark.parametrize("device, precision, named", [
    ("gpu", "fp32", "'gpu'"), ("cuda:x", "fp32", "'cuda:x'"), ("cpu", "fp8", "'fp8'"), ("cpu", "FP32", "'FP32'"),
])
def test_setup_rejects_bad_strings(plain_env, device, precision, named):
    with pytest.raises(ValueError, match=named) as error:
        distributed.setup(device, precision)
    allowed = distributed.PRECISIONS if device == "cpu" else distributed.DEVICES
    assert all(a in str(error.value) for a in allowed)


def test_fp16_on_cpu_is_refused(plain_env):
    with pytest.raises(ValueError, match="fp16.*cpu"):
        distributed.setup("cpu", "fp16")


def test_shard_splits_equally():
    batch = list(range(8))
    assert distributed.shard(batch, runtime(0, 2)) == [0, 2, 4, 6]
    assert distributed.shard(batch, runtime(1, 2)) == [1, 3, 5, 7]
    assert distributed.shard(batch, runtime(0, 1)) == batch
    for size, world in [(3, 2), (2, 4)]:
        with pytest.raises(ValueError, match="multiple of the world size"):
            distributed.shard(list(range(size)), runtime(0, world))


def claim_in_child(lock_dir: Path) -> str:
    code = "from kwyn.distributed import claim_gpu; import sys; print(claim_gpu(2, sys.argv[1]))"
    env = child_env()
    env.pop("CUDA_VISIBLE_DEVICES", None)
    out = subprocess.run([sys.executable, "-c", code, str(lock_dir)], env=env, capture_output=True, text=True,
                         check=True, timeout=120)
    return out.stdout.strip()


def test_claim_gpu_one_per_process(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    try:
        assert distributed.claim_gpu(2, tmp_path) == 0
        assert claim_in_child(tmp_path) == "1"  # another process sees GPU 0 taken (its claim ends with it)
        assert distributed.claim_gpu(2, tmp_path) == 1
        assert claim_in_child(tmp_path) == "None"
        assert distributed.claim_gpu(2, tmp_path) is None
        assert sorted(p.name for p in tmp_path.iterdir()) == ["kwyn-gpu-0.lock", "kwyn-gpu-1.lock"]
    finally:
        distributed.release_gpus()
    assert claim_in_child(tmp_path) == "0"  # released


def test_claim_gpu_names_locks_by_visible_device(tmp_path, monkeypatch):
    """Two runs that each see one different physical GPU as index 0 must not block each other."""
    try:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
        assert distributed.claim_gpu(1, tmp_path) == 0
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
        assert distributed.claim_gpu(1, tmp_path) == 0
        assert distributed.claim_gpu(1, tmp_path) is None
        assert sorted(p.name for p in tmp_path.iterdir()) == ["kwyn-gpu-2.lock", "kwyn-gpu-3.lock"]
    finally:
        distributed.release_gpus()


def test_autocast_bf16_on_cpu():
    layer = torch.nn.Linear(4, 3)
    x = torch.randn(2, 4)
    with distributed.autocast(runtime(precision="bf16")):
        assert layer(x).dtype == torch.bfloat16
    with distributed.autocast(runtime(precision="fp32")):
        assert layer(x).dtype == torch.float32
    assert not distributed.grad_scaler(runtime(precision="bf16")).is_enabled()


def test_ddp_on_cpu_matches_full_batch(tmp_path):
    """torchrun, 2 processes, gloo: 3 Adam steps on shards of the global batch give the parameters of
    the same 3 steps on the full batch in one process."""
    env = child_env()
    subprocess.run([sys.executable, str(WORKER), "--out", str(tmp_path / "single")], env=env, check=True,
                   timeout=300)
    done = subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node", "2", str(WORKER),
                           "--out", str(tmp_path / "ddp")], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    single = torch.load(tmp_path / "single" / "rank0.pt")
    assert single["world_size"] == 1
    for rank in (0, 1):
        ddp = torch.load(tmp_path / "ddp" / f"rank{rank}.pt")
        assert ddp["world_size"] == 2 and ddp["mean_rank"] == 0.5
        assert ddp["state"].keys() == single["state"].keys()
        for name, value in single["state"].items():
            torch.testing.assert_close(ddp["state"][name], value, atol=1e-5, rtol=0)
    # the steps trained the head and left the frozen encoder as built
    built = build_model().state_dict()
    trained = single["state"]
    assert torch.equal(trained["0.weight"], built["0.weight"]) and torch.equal(trained["0.bias"], built["0.bias"])
    assert not torch.allclose(trained["2.weight"], built["2.weight"], atol=1e-3)


def test_run_grid_orders_and_pins(tmp_path):
    """scripts/run_grid.py: --list puts scratch entries after the experiments; the GPU pool runs each
    name's dvc.yaml commands with its own CUDA_VISIBLE_DEVICES, a scratch entry after its source."""
    params = {"experiments": {"a_base": {"method": "base", "wait": 0}, "a_kwyn": {"method": "kwyn", "wait": 1.0}},
              "scratch": {"a_scratch": {"from": "a_kwyn"}}, "three_seeds": {"b_kwyn": {"method": "kwyn"}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    log = tmp_path / "order.txt"
    stages = {"stages": {
        "train": {"foreach": "${experiments}", "do": {"cmd": f"sleep ${{item.wait}}; "
                                                             f"echo ${{key}} $CUDA_VISIBLE_DEVICES >> {log}"}},
        "report": {"cmd": "false"},
        "scratch_train": {"foreach": "${scratch}", "do": {"cmd": f"echo ${{key}} ${{item.from}} >> {log}"}}}}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(stages))
    script = [sys.executable, str(ROOT / "scripts" / "run_grid.py"), "--params", str(tmp_path / "params.yaml"),
              "--dvc-yaml", str(tmp_path / "dvc.yaml"), "--log-dir", str(tmp_path / "logs")]
    listed = subprocess.run([*script, "--list"], capture_output=True, text=True, check=True).stdout.split()
    assert listed == ["b_kwyn", "a_base", "a_kwyn", "a_scratch"]
    # a three_seeds entry is one name: its stage runs the three seeds (via cli: each run's stages, in turn)
    cli = subprocess.run([*script, "--run", "b_kwyn", "--via", "cli", "--stages", "train", "--dry-run"],
                         capture_output=True, text=True, check=True).stdout
    assert [line.split()[-1] for line in cli.splitlines()] == ["b_kwyn", "b_kwyn_seed1", "b_kwyn_seed2"]
    params["scratch"]["b_scratch"] = {"from": "b_kwyn_seed2"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    listed = subprocess.run([*script, "--list", "scratch"], capture_output=True, text=True, check=True).stdout.split()
    assert listed == ["a_scratch", "b_scratch"]
    listed = subprocess.run([*script, "--list", "experiments"], capture_output=True, text=True, check=True).stdout
    assert listed.split() == ["b_kwyn", "a_base", "a_kwyn"]  # a SLURM array's first section: before any scratch
    del params["scratch"]["b_scratch"], params["three_seeds"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run([*script, "--gpus", "5,6"], check=True, timeout=120, env=child_env())
    lines = log.read_text().split("\n")[:-1]
    assert lines[-1] == "a_scratch a_kwyn"  # waited for a_kwyn (1 s) although a GPU was free before
    gpus = {line.split()[0]: line.split()[1] for line in lines[:2]}
    assert set(gpus) == {"a_base", "a_kwyn"} and set(gpus.values()) == {"5", "6"}
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["a_base.log", "a_kwyn.log", "a_scratch.log"]

    params["scratch"]["a_scratch"]["from"] = "nope"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    bad = subprocess.run([*script, "--list"], capture_output=True, text=True)
    assert bad.returncode != 0 and "'nope'" in bad.stderr


def test_grid_cost_from_measured_step_times(tmp_path):
    """benchmarks/grid_cost.py: 9 datasets x (base, ssf, 3 kwyn, 3 scratch) = 72 runs, hours = steps x step time."""
    out = tmp_path / "cost.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "grid_cost.py"), "--json", str(out)], check=True,
                   capture_output=True, env=child_env())
    cost = json.loads(out.read_text())
    assert cost["runs_count"] == len(cost["runs"]) == 72 and cost["device"] == "cpu"
    assert cost["total_hours"] == pytest.approx(sum(r["hours"] for r in cost["runs"]), abs=0.1)
    measured = json.loads((ROOT / "benchmarks" / "results" / "train_step_musicfm.json").read_text())
    run = next(r for r in cost["runs"] if r["backbone"] == "musicfm" and r["method"] == "kwyn")
    assert run["hours"] == pytest.approx(100_000 * measured["mask_step_s"] / 3600, abs=1e-3)
