import os

# tests never reach a model hub; set before transformers/huggingface_hub are imported
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))

import copy  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import yaml  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

TINY_DATASET = {"kind": "soundfont_notes", "seed": 0, "sample_rate": 16000, "note_seconds": 0.3,
                "pitches": [60, 62], "velocities": [100], "families": ["guitar", "string", "organ"],
                "split_per_family": [1, 1, 1], "clip_seconds": 0.064, "offset_seconds": 0.05,
                "on_bad_audio": "error", "workers": 1}


def tiny_params(steps=6, **train) -> dict:
    """A params.yaml for CREPE-tiny on a few rendered notes: the default grid's shape, seconds to run."""
    raw = copy.deepcopy(yaml.safe_load((ROOT / "params.yaml").read_text()))
    raw["datasets"] = {"notes": dict(TINY_DATASET)}
    raw["train"].update({"steps": steps, "eval_every": 3, "checkpoint_every": 3, "val_examples": 16, "batch_size": 4,
                         "threads": 1, **train})
    raw["profile"].update(repeats=3, warmup=1)
    raw["experiments"] = {
        "tiny_base": {"backbone": "crepe-tiny", "dataset": "notes", "task": "pitch", "method": "base"},
        "tiny_kwyn": {"backbone": "crepe-tiny", "dataset": "notes", "task": "pitch", "method": "kwyn",
                      "sparsity": {"loss": "paper", "t": 0.5, "lambda": 50.0}},
    }
    raw["three_seeds"] = {}
    raw["scratch"] = {}
    return raw


def train_killed_after(step: int, exp, data, run_dir) -> None:
    """kwyn.train.train stopped by a KeyboardInterrupt after `step` steps, as a killed stage would be."""
    from kwyn.train import train

    def interrupt(done):
        if done == step:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(exp, data, run_dir, progress=False, on_step=interrupt)


def tiny_notes(root: Path, clip_seconds: float = TINY_DATASET["clip_seconds"]) -> Path:
    """Rendered + prepared notes of TINY_DATASET under `root` (real rendering and preparation code), cut to
    `clip_seconds`; returns the prepared dataset's folder."""
    from kwyn.data.prepare import prepare_nsynth_like
    from kwyn.data.soundfont import render_nsynth_like

    d = TINY_DATASET
    render_nsynth_like(root / "raw", seed=d["seed"], note_seconds=d["note_seconds"], pitches=tuple(d["pitches"]),
                       families=d["families"], split_per_family=tuple(d["split_per_family"]))
    prepare_nsynth_like(root / "raw", root / "prepared", clip_seconds=clip_seconds,
                        offset_seconds=d["offset_seconds"], pitches=tuple(d["pitches"]))
    return root / "prepared"


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """Rendered + prepared notes of TINY_DATASET."""
    return tiny_notes(tmp_path_factory.mktemp("notes"))


@pytest.fixture
def one_thread():
    """Torch at one thread for a test, restored after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
