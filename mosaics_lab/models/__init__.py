"""The model table: ``arch`` name -> (config dataclass, model class), and ``build_model``.

Adding a model family is one new file plus one line in ``MODEL_TABLE``.
"""

from __future__ import annotations

from mosaics_lab.models.base import LanguageModel, ModelConfig
from mosaics_lab.models.gpt2 import GPT2, GPT2Config
from mosaics_lab.models.llama import Llama, LlamaConfig
from mosaics_lab.models.mosaic_v1 import MosaicV1, MosaicV1Config
from mosaics_lab.models.mosaic_v2 import MosaicV2, MosaicV2Config

MODEL_TABLE: dict[str, tuple[type[ModelConfig], type[LanguageModel]]] = {
    "gpt2": (GPT2Config, GPT2),
    "llama": (LlamaConfig, Llama),
    "mosaic_v1": (MosaicV1Config, MosaicV1),
    "mosaic_v2": (MosaicV2Config, MosaicV2),
}


def config_class(arch: str) -> type[ModelConfig]:
    if arch not in MODEL_TABLE:
        raise ValueError(f"unknown model.arch {arch!r}; known: {', '.join(sorted(MODEL_TABLE))}")
    return MODEL_TABLE[arch][0]


def build_model(config: ModelConfig) -> LanguageModel:
    """Build the model named by ``config.arch`` from its own config dataclass."""
    cfg_cls = config_class(config.arch)  # raises with the list of known archs
    model_cls = MODEL_TABLE[config.arch][1]
    if not isinstance(config, cfg_cls):
        raise TypeError(f"model.arch {config.arch!r} needs a {cfg_cls.__name__}, got {type(config).__name__}")
    if config.vocab_size is None:
        raise ValueError("model.vocab_size is null: set it, or let the trainer take it from the data")
    return model_cls(config)


__all__ = ["MODEL_TABLE", "LanguageModel", "ModelConfig", "build_model", "config_class"]
