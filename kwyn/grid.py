"""Grids: compact experiment grids kept under `grids:` in params.yaml, and switching between them.

dvc.yaml's `foreach` stages iterate over params.yaml's `datasets`, `experiments`, `three_seeds` and
`scratch` sections (the ACTIVE grid), and DVC cannot pick a section by a parameter. So a grid is switched by
rewriting those sections (and the `train` keys the grid gives) with the grid's expansion:

    python -m kwyn.grid list                 # the grids, with counts; * marks the active one
    python -m kwyn.grid show paper           # the experiment names of a grid
    python -m kwyn.grid use paper            # write its expansion into params.yaml
    python -m kwyn.grid use default          # back to the offline default grid

`use` edits params.yaml as text: every line outside the replaced sections stays byte for byte
(comments included, and the comments between sections, which belong to the section that follows),
and an entry whose value does not change keeps its own lines and comments. The whole resulting
document is validated (kwyn.params.validate) before anything is written.

Experiment names: <short backbone>_<dataset (or task, name_by: task)>_<method>[_<pct>], e.g.
cnn14_esc50_kwyn_50; scratch entries <...>_scratch_<pct> with `from: <...>_kwyn_<pct>`. A
configuration run with seeds 0, 1 and 2 is one `three_seeds` entry (runs <name>, <name>_seed1,
<name>_seed2, trained in one stage); any other seed k is an experiment <name>_seed<k>.
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import yaml
from pydantic import ValidationError

from kwyn.methods import METHODS
from kwyn.params import SEEDS, GridSpec, ParamsError, _format, read_yaml, seed_runs, validate

SECTIONS = ("datasets", "experiments", "three_seeds", "scratch")  # replaced whole; `train` is updated key by key
SHORT_NAMES = {"clap-cnn14": "cnn14", "wav2vec2-base": "w2v2", "musicfm": "musicfm", "crepe-full": "crepe",
               "whisper-tiny-encoder": "whisper"}
LINE_WIDTH = 120  # an entry longer than this goes on its own line, under its name


def short_name(backbone: str) -> str:
    return SHORT_NAMES.get(backbone, backbone.replace("-", ""))


def pct(ratio: float) -> str:
    """0.25 -> "25"; 0.125 -> "12p5" (names may not contain '.')."""
    value = round(ratio * 100, 6)
    return str(int(value)) if value == int(value) else f"{value:g}".replace(".", "p")


def _dump(model) -> dict:
    """A sub-block as written (unset keys left out), YAML-ready."""
    return model.model_dump(mode="json", by_alias=True, exclude_unset=True, exclude_none=True)


def _merged(*models) -> dict:
    out: dict = {}
    for model in models:
        if model is not None:
            out.update(_dump(model))
    return out


def expand(spec: GridSpec) -> dict:
    """The grid as params.yaml sections: {"datasets", "experiments", "scratch", "train"} (plain,
    YAML-ready) and "skipped": [(name, why)] for method/task pairs that do not apply (convexity
    needs transformer layers and a classification task)."""
    raw = spec._raw or spec.model_dump(mode="json", by_alias=True, exclude_unset=True)
    datasets = copy.deepcopy(raw.get("datasets") or _dump_all(spec.datasets))
    extras = copy.deepcopy(raw.get("extra_experiments") or _dump_all(spec.extra_experiments))
    experiments: dict = {}
    three_seeds: dict = {}
    scratch: dict = {}
    skipped: list = []

    def add(name: str, entry: dict, where: dict) -> None:
        taken = [*experiments, *(run for key in three_seeds for run in seed_runs(key)), *scratch, *extras]
        if any(run in taken for run in (seed_runs(name) if where is three_seeds else [name])):
            raise ParamsError(f"grid: two entries are named {name!r}; set name_by or rename the datasets")
        where[name] = entry

    for backbone, pairs in spec.tasks.items():
        methods = spec.methods_of(backbone)
        for dataset, task in pairs:
            prefix = f"{short_name(backbone)}_{dataset if spec.name_by == 'dataset' else task}"
            base = {"backbone": backbone, "dataset": dataset, "task": task}
            for method in methods:
                m = METHODS[method]
                if not m.in_experiments:
                    continue  # scratch: below, after the kwyn experiments of every ratio
                if why := m.skip_reason(backbone, spec.datasets[dataset].TASKS[task]):
                    skipped.append((f"{prefix}_{method}", f"{dataset}.{task}: {why}"))
                    continue
                ratios = spec.ratios if m.ratio_block and spec.ratios else [None]
                recipes = [None, *spec.recipes_for.get(backbone, spec.recipes)] if "recipe" in m.blocks else [None]
                for recipe in recipes:
                    for ratio in ratios:
                        entry = {**base, "method": method}
                        if "sparsity" in m.blocks:
                            entry["sparsity"] = {**_dump(spec.sparsity), **_merged(spec.recipe_sparsity.get(recipe))}
                        if recipe is not None:
                            entry["recipe"] = _dump(spec.recipes[recipe])
                        block = getattr(spec, method, None) if method in m.blocks else None
                        if block is not None:
                            entry[method] = block if isinstance(block, dict) else _dump(block)
                        if ratio:
                            entry[m.ratio_block] = {**entry.get(m.ratio_block, {}), "ratio": ratio}
                        train = _merged(spec.experiment_train.get(backbone), spec.method_train.get(method),
                                        spec.recipe_train.get(recipe))
                        name = "_".join([prefix, method, *([recipe] if recipe else []), *([pct(ratio)] if ratio else [])])
                        seeds = _seeds(spec, recipe or method)
                        if seeds[:len(SEEDS)] == THREE_SEEDS:  # one stage runs the three (params.three_seeds)
                            add(name, _with_train(entry, train, spec.profile.get(backbone)), three_seeds)
                            seeds = seeds[len(SEEDS):]
                        for seed, suffix in seeds:
                            add(name + suffix, _with_train(entry, {**train, **seed}, spec.profile.get(backbone)),
                                experiments)
            if "scratch" in methods:
                for ratio in spec.ratios:
                    train = _merged(spec.scratch_train, spec.backbone_scratch_train.get(backbone))
                    for seed, suffix in _seeds(spec, "scratch"):
                        entry = {"from": f"{prefix}_kwyn_{pct(ratio)}{suffix}"}
                        add(f"{prefix}_scratch_{pct(ratio)}{suffix}", _with_train(entry, {**train, **seed}), scratch)
        for name, entry in extras.items():  # after the experiments of their backbone
            if entry.get("backbone") == backbone:
                experiments[name] = entry
    for name, entry in extras.items():
        experiments.setdefault(name, entry)
    return {"datasets": datasets, "experiments": experiments, "three_seeds": three_seeds, "scratch": scratch,
            "train": _dump(spec.train), "skipped": skipped}


def runs(expansion: dict) -> list[str]:
    """The experiment (run) names of an expansion, as kwyn.params.experiment_names lists them."""
    return [*(run for name in expansion["three_seeds"] for run in seed_runs(name)), *expansion["experiments"]]


THREE_SEEDS = [({}, ""), *(({"seed": seed}, f"_seed{seed}") for seed in SEEDS[1:])]  # what _seeds gives for 0, 1, 2


def _seeds(spec: GridSpec, key: str) -> list[tuple[dict, str]]:
    """(train keys, name suffix) per seed of a method or recipe: the first seed keeps the plain name (and, when
    it is the top-level train.seed, no train key), so a grid of one seed expands as before seeds existed."""
    seeds = spec.seeds_for.get(key, spec.seeds)
    first = seeds[0]
    out = [({} if first == (spec.train.seed if spec.train.seed is not None else 0) else {"seed": first}, "")]
    return out + [({"seed": seed}, f"_seed{seed}") for seed in seeds[1:]]


def _with_train(entry: dict, train: dict, profile=None) -> dict:
    entry = dict(entry)
    if train:
        entry["train"] = train
    profile = _merged(profile)
    if profile:
        entry["profile"] = profile
    return entry


def _dump_all(models: dict) -> dict:
    return {name: model.model_dump(mode="json", by_alias=True, exclude_unset=True) for name, model in models.items()}


def load_grids(raw: dict, source: str = "params.yaml") -> dict[str, GridSpec]:
    """The `grids:` of a loaded params.yaml, each validated (the active sections need not be valid)."""
    grids = raw.get("grids") or {}
    if not isinstance(grids, dict):
        raise ParamsError(f"invalid {source}:\n  grids: a mapping of grid name -> grid, got {type(grids).__name__}")
    out = {}
    for name, body in grids.items():
        try:
            out[name] = GridSpec.model_validate(body)
        except ValidationError as error:
            raise ParamsError(_format(error, f"{source}").replace("\n  ", f"\n  grids.{name}.")
                              .replace(f"grids.{name}.(top level)", f"grids.{name}")) from None
    return out


def _applied(raw: dict, expansion: dict) -> dict:
    new = copy.deepcopy(raw)
    for section in SECTIONS:
        new[section] = copy.deepcopy(expansion[section])
    new["train"] = {**(new.get("train") or {}), **expansion["train"]}
    return new


def is_active(raw: dict, expansion: dict) -> bool:
    return (all((raw.get(s) or {}) == expansion[s] for s in SECTIONS)
            and all((raw.get("train") or {}).get(k) == v for k, v in expansion["train"].items()))


# ---- text surgery ---------------------------------------------------------------------------------

def _is_filler(line: str) -> bool:
    stripped = line.strip()
    return not stripped or stripped.startswith("#")


def _flow(value) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=float("inf"), sort_keys=False, allow_unicode=True)
    return text.removesuffix("\n...\n").strip()


def _entry_lines(name: str, value) -> list[str]:
    head = f"  {_flow(name)}:"
    body = _flow(value)
    if len(head) + 1 + len(body) <= LINE_WIDTH:
        return [f"{head} {body}\n"]
    return [f"{head}\n", f"    {body}\n"]


def _spans(mapping, lines: list[str], first: int, end: int) -> dict:
    """key -> [start, stop) lines of each entry of a round-trip mapping whose entries lie in [first, end):
    full-line comments and blank lines just above a key belong to that key."""
    keys = list(mapping)
    spans = {}
    for i, key in enumerate(keys):
        spans[key] = [mapping.lc.key(key)[0], mapping.lc.key(keys[i + 1])[0] if i + 1 < len(keys) else end]
    for i in range(1, len(keys)):
        prev, cur = spans[keys[i - 1]], spans[keys[i]]
        while cur[0] - 1 > prev[0] and _is_filler(lines[cur[0] - 1]):
            cur[0] -= 1
            prev[1] = cur[0]
    if keys:
        spans[keys[0]][0] = first
    return spans


def rewrite(text: str, expansion: dict) -> str:
    """params.yaml's text with the expansion's sections and train keys written in; everything else
    is kept line for line."""
    from ruamel.yaml import YAML

    if text and not text.endswith("\n"):
        text += "\n"
    lines = text.splitlines(keepends=True)
    doc = YAML(typ="rt").load(text)
    plain = read_yaml(text) or {}
    top = list(doc)
    key_line = {key: doc.lc.key(key)[0] for key in top}
    bounds = {}  # top-level key -> [key line, last content line + 1)
    for i, key in enumerate(top):
        nxt = key_line[top[i + 1]] if i + 1 < len(top) else len(lines)
        stop = nxt
        while stop - 1 > key_line[key] and _is_filler(lines[stop - 1]):
            stop -= 1
        bounds[key] = [key_line[key], stop]
    # where a missing section goes: before `grids:` (and the comments above it), else at the end
    if "grids" in bounds:
        insert_at = bounds["grids"][0]
        while insert_at > 0 and _is_filler(lines[insert_at - 1]):
            insert_at -= 1
    else:
        insert_at = len(lines)

    edits = []  # (start, stop, new lines), on the original line numbers
    for section in SECTIONS:
        new = expansion[section]
        old = plain.get(section) if isinstance(plain.get(section), dict) else {}
        node = doc.get(section)
        block = hasattr(node, "lc") and bool(node) and lines[key_line[section]].split("#")[0].strip() == f"{section}:"
        if not new:
            out = [f"{section}: {{}}\n"]
        else:
            out = [lines[key_line[section]] if block else f"{section}:\n"]
            spans = _spans(node, lines, key_line[section] + 1, bounds[section][1]) if block else {}
            for name, value in new.items():
                if name in spans and old.get(name) == value:
                    out.extend(lines[slice(*spans[name])])
                else:
                    out.extend(_entry_lines(name, value))
        if section in bounds:
            edits.append((*bounds[section], out))
        else:
            edits.append((insert_at, insert_at, out))

    train_new = expansion["train"]
    train_old = plain.get("train") if isinstance(plain.get("train"), dict) else {}
    changed = {k: v for k, v in train_new.items() if k not in train_old or train_old[k] != v}
    if changed:
        node = doc.get("train")
        if "train" not in bounds:
            edits.append((insert_at, insert_at, ["train:\n"] + [f"  {k}: {_flow(v)}\n" for k, v in changed.items()]))
        elif not (hasattr(node, "lc") and node):
            edits.append((*bounds["train"], ["train:\n"] + [f"  {k}: {_flow(v)}\n" for k, v in
                                                              {**train_old, **changed}.items()]))
        else:
            indent = node.lc.key(next(iter(node)))[1]
            missing = []
            for key, value in changed.items():
                if key not in node:
                    missing.append(f"{' ' * indent}{key}: {_flow(value)}\n")
                    continue
                line, col = node.lc.value(key)
                edits.append((line, line + 1, [_replace_scalar(lines[line], col, _flow(value))]))
            if missing:
                edits.append((bounds["train"][1], bounds["train"][1], missing))
    for start, stop, out in sorted(edits, key=lambda e: (e[0], e[1]), reverse=True):
        lines[start:stop] = out
    return "".join(lines)


def _replace_scalar(line: str, col: int, value: str) -> str:
    """The line with the scalar starting at `col` replaced, its end-of-line comment kept in its column."""
    rest = line[col:].rstrip("\n")
    if rest[:1] in ("'", '"'):
        quote = rest[0]
        end = 1
        while end < len(rest):
            if rest[end] == quote and not (quote == "'" and rest[end + 1:end + 2] == "'"):
                break
            end += 2 if quote == "'" and rest[end:end + 2] == "''" else 1
        end += 1
    else:
        hash_at = rest.find(" #")
        end = hash_at if hash_at >= 0 else len(rest)
        end = len(rest[:end].rstrip())
    tail = rest[end:]
    comment = tail.lstrip()
    if not comment:
        return f"{line[:col]}{value}\n"
    pad = max(1, len(tail) - len(comment) + end - len(value))
    return f"{line[:col]}{value}{' ' * pad}{comment}\n"


# ---- use / CLI ------------------------------------------------------------------------------------

def use(name: str, params_path=Path("params.yaml")) -> dict:
    """Make grid `name` the active one: rewrite params.yaml's datasets, experiments, three_seeds and scratch and the
    train keys the grid gives. Validated as a whole first; nothing is written when invalid."""
    path = Path(params_path)
    text = path.read_text()
    raw = read_yaml(text) or {}
    grids = load_grids(raw, str(path))
    if name not in grids:
        known = ", ".join(sorted(grids)) or "none (params.yaml has no `grids:` section)"
        raise ParamsError(f"unknown grid {name!r}; grids in {path}: {known}")
    expansion = expand(grids[name])
    wanted = _applied(raw, expansion)
    validate(wanted, f"{path} with grid {name!r}")
    new_text = rewrite(text, expansion)
    if read_yaml(new_text) != wanted:  # a bug of rewrite(): never write a file that says otherwise
        raise RuntimeError(f"kwyn.grid: rewriting {path} for grid {name!r} gave another document; nothing written")
    if new_text != text:
        path.write_text(new_text)
    return {"grid": name, "datasets": len(expansion["datasets"]), "experiments": len(runs(expansion)),
            "scratch": len(expansion["scratch"]), "skipped": expansion["skipped"], "changed": new_text != text}


def _cli(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kwyn.grid", description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml", help="the params.yaml (default: ./params.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the grids, with counts; * marks the active one")
    show = sub.add_parser("show", help="a grid's experiment and scratch names")
    show.add_argument("name")
    use_ = sub.add_parser("use", help="write a grid's expansion into params.yaml")
    use_.add_argument("name")
    use_.add_argument("--params", dest="params_use", default=None)
    args = parser.parse_args(argv)
    path = Path(getattr(args, "params_use", None) or args.params)
    try:
        raw = read_yaml(path.read_text()) or {}
        grids = load_grids(raw, str(path))
        if args.command == "list":
            for name, spec in grids.items():
                e = expand(spec)
                mark = "*" if is_active(raw, e) else " "
                print(f"{mark} {name}: {len(e['datasets'])} datasets, {len(runs(e))} experiments, "
                      f"{len(e['scratch'])} scratch. {spec.description}")
        elif args.command == "show":
            if args.name not in grids:
                raise ParamsError(f"unknown grid {args.name!r}; grids in {path}: {', '.join(sorted(grids))}")
            e = expand(grids[args.name])
            for name in runs(e):
                print(name)
            for name, entry in e["scratch"].items():
                print(f"{name}  (from {entry['from']})")
            for name, why in e["skipped"]:
                print(f"# skipped {name}: {why}")
        else:
            result = use(args.name, path)
            print(f"{path}: grid {args.name!r} is active ({result['datasets']} datasets, {result['experiments']} "
                  f"experiments, {result['scratch']} scratch)" + ("" if result["changed"] else "; it already was"))
            for name, why in result["skipped"]:
                print(f"  skipped {name}: {why}")
    except ParamsError as error:
        print(error, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_cli())
