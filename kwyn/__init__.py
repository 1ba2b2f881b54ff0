"""kwyn: keep what you need. Task-specialist trimming of audio foundation models."""


def load_trimmed(path):
    """Rebuild a trimmed model saved by kwyn.trim.save_trimmed (see there): model(audio) gives its outputs,
    model.predict(["a.wav", ...]) labels (or text) per file or array (kwyn.inference)."""
    from kwyn.trim import load_trimmed as _load

    return _load(path)
