"""The model table: ``arch`` name -> (config dataclass, model class), and ``build_model``.

Adding a model family is one new file, its config dataclass in ``mosaics_lab.config.models``, and one
line in each table.
"""

from __future__ import annotations

from mosaics_lab.config.models import MODEL_CONFIGS, ModelConfig, config_class
from mosaics_lab.models.base import LanguageModel
from mosaics_lab.models.gpt2 import GPT2
from mosaics_lab.models.llama import Llama
from mosaics_lab.models.mosaic_v1 import MosaicV1
from mosaics_lab.models.mosaic_v2 import MosaicV2

# arch -> (its config dataclass, from the torch-free config floor; its module class)
MODEL_TABLE: dict[str, tuple[type[ModelConfig], type[LanguageModel]]] = {
    arch: (MODEL_CONFIGS[arch], module)
    for arch, module in (("gpt2", GPT2), ("llama", Llama), ("mosaic_v1", MosaicV1), ("mosaic_v2", MosaicV2))
}


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
