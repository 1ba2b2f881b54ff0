"""How far a trimmed model's head is from fitted: its own head against heads re-fitted on its embeddings.

For each trimmed model (models/<exp>, kwyn.load_trimmed), the trimmed encoder embeds the training,
validation and test splits once; then the model's MLP head (and a fresh one) takes Adam steps on the
training embeddings (batch 64, lr 1e-3, the recipe's re-fit), on the raw embeddings and standardised
ones (kwyn.recipe.Standardized, folded back: scored on the raw embeddings). Selecting among them is on
validation; test is reported beside it. This measurement is what led to recipe.refit_standardize
(benchmarks/results/refit_standardize.md).

    python benchmarks/head_refit.py --models models/whisper_word_kwyn_distil_75 --json out.json
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import kwyn  # noqa: E402
from kwyn.data.prepare import PreparedDataset  # noqa: E402
from kwyn.heads import MLPHead  # noqa: E402
from kwyn.io import read_json  # noqa: E402
from kwyn.recipe import Standardized  # noqa: E402

SPLITS = ("train", "valid", "test")
# (label, start from the model's own head, Adam steps, standardised)
FITS = [("own head + 300 steps", True, 300, False), ("own head + 2000 steps", True, 2000, False),
        ("fresh head, 300 steps", False, 300, False), ("own head + 300 steps, standardised", True, 300, True),
        ("fresh head, 300 steps, standardised", False, 300, True)]


@torch.no_grad()
def embed(model, dataset, batch_size: int = 64):
    clips = torch.stack([dataset[i][0] for i in range(len(dataset))])
    return torch.cat([model.features(clips[i:i + batch_size]) for i in range(0, len(clips), batch_size)])


def accuracy(head, features, labels) -> float:
    with torch.no_grad():
        return float((head(features).argmax(-1) == labels).float().mean())


def refit(head, embeddings, labels, steps: int, standardize: bool, seed: int = 0):
    standardized = Standardized.of(embeddings) if standardize else None
    if standardized is not None:
        standardized.enter(head)
    features = standardized.features(embeddings) if standardized is not None else embeddings
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-3)
    draws = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = torch.randint(len(features), (64,), generator=draws)
        loss = F.cross_entropy(head(features[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    if standardized is not None:
        head.load_state_dict(standardized.raw_state(head))
    return head


def measure(model_dir: Path, data_dir: Path | None) -> list[dict]:
    model = kwyn.load_trimmed(model_dir).eval()
    metadata = read_json(model_dir / "config.json")["metadata"]
    data = data_dir or ROOT / "data" / metadata["dataset"] / "prepared"
    sets = {s: PreparedDataset(data, s, metadata["task"]) for s in SPLITS}
    embeddings = {s: embed(model, d) for s, d in sets.items()}
    labels = {s: torch.tensor([int(d[i][1]) for i in range(len(d))]) for s, d in sets.items()}
    spread = embeddings["train"].std(0)
    rows = [{"model": model_dir.name, "fit": "own head (as trained)",
             **{s: accuracy(model.head, embeddings[s], labels[s]) for s in ("valid", "test")},
             "offset_over_spread": float(embeddings["train"].mean(0).abs().mean() / spread.mean())}]
    for label, own, steps, standardize in FITS:
        torch.manual_seed(0)
        head = copy.deepcopy(model.head) if own else MLPHead(embeddings["train"].shape[1], model.head[-1].out_features)
        head = refit(head, embeddings["train"], labels["train"], steps, standardize)
        rows.append({"model": model_dir.name, "fit": label,
                     **{s: accuracy(head, embeddings[s], labels[s]) for s in ("valid", "test")}})
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", type=Path, required=True, help="trimmed model folders")
    parser.add_argument("--data", type=Path, help="prepared dataset folder (default: data/<its dataset>/prepared)")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    rows = [row for model_dir in args.models for row in measure(model_dir, args.data)]
    args.json.write_text(json.dumps(rows, indent=1) + "\n")
    for row in rows:
        print(f"{row['model']:40s} {row['fit']:40s} valid {row['valid']:.3f} test {row['test']:.3f}")


if __name__ == "__main__":
    main()
