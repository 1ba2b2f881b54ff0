"""kwyn's command line: `python -m kwyn <command> ...`.

  predict MODEL_DIR FILE...   one line per file: file, label, score (tab-separated; kwyn.inference)
                              tagging: the labels above 0.5 and their scores, ";"-joined; ASR: the text
  export ...                  kwyn.export's own arguments (python -m kwyn export --help)

The pipeline's stages keep their own command line: python -m kwyn.pipeline (docs/scaling.md).
"""
from __future__ import annotations

import argparse
import sys


def _line(source: str, prediction: dict) -> str:
    if "text" in prediction:
        return f"{source}\t{prediction['text']}"
    if "label" in prediction:
        return f"{source}\t{prediction['label']}\t{prediction['score']:.4f}"
    scores = ";".join(f"{prediction['scores'][label]:.4f}" for label in prediction["labels"])
    return f"{source}\t{';'.join(str(label) for label in prediction['labels'])}\t{scores}"


def predict(model_dir: str, files: list[str]) -> int:
    import kwyn

    try:
        predictions = kwyn.load_trimmed(model_dir).predict(files)
    except (FileNotFoundError, ValueError) as error:  # a model or file that cannot serve: the message, no traceback
        print(f"python -m kwyn predict: error: {error}", file=sys.stderr)
        return 1
    for source, prediction in zip(files, predictions):
        print(_line(source, prediction))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kwyn", description="Use trimmed models.")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("predict", help="label audio files with a trimmed model",
                            description="Print one line per file: file, label, score (tab-separated).")
    p.add_argument("model_dir", help="a trimmed model's folder, e.g. models/<experiment>")
    p.add_argument("files", nargs="+", help="audio files")
    # export's arguments are kwyn.export's own: handed over untouched (its --help included)
    commands.add_parser("export", help="export a trimmed model (python -m kwyn export --help)", add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command == "export":
        from kwyn.export import main as export_main  # imported on use: only export needs it

        return export_main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return predict(args.model_dir, args.files)


if __name__ == "__main__":
    sys.exit(main())
