"""Each model family's config dataclass and the arch -> config table: the torch-free ground floor.

A model is built from its own dataclass (`mosaics_lab.models.build_model`); the recipe schema types
its `model` section with the dataclass of `model.arch`. Nothing here imports torch, so loading and
validating a recipe or a sweep file never does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional


@dataclass
class ModelConfig:
    """Keys every architecture accepts, so recipes for different archs differ only where they must."""

    arch: str = "gpt2"
    vocab_size: Optional[int] = None  # None: taken from the data's tokenizer at build time
    block_size: int = 256  # training context length T (a memory mosaic runs at any length)
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.vocab_size is not None and self.vocab_size < 2:
            raise ValueError(
                f"model.vocab_size must be >= 2 (or null for the tokenizer's), got {self.vocab_size}"
            )
        if self.n_embd % self.n_head:
            raise ValueError(
                f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")

    def match_knob(self) -> Optional[str]:
        """The width-free field that a recipe's `match_params_of` adjusts (None: the model has none)."""
        return None

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head


def swiglu_hidden(n_embd: int, multiple_of: int = 64) -> int:
    """Llama's default SwiGLU width: 2/3 of 4d, rounded up to a multiple (same params as a 4d MLP)."""
    hidden = int(2 * 4 * n_embd / 3)
    return multiple_of * math.ceil(hidden / multiple_of)


# ---- gpt2 --------------------------------------------------------------------------------------


@dataclass
class GPT2Config(ModelConfig):
    arch: str = "gpt2"
    d_ff: Optional[int] = None  # MLP hidden width; None = 4 * n_embd
    bias: bool = True
    tie_embeddings: bool = True

    def match_knob(self) -> str:
        return "d_ff"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.d_ff is not None and self.d_ff < 1:
            raise ValueError(f"model.d_ff must be >= 1 (or null for 4 * n_embd), got {self.d_ff}")

    @property
    def hidden(self) -> int:
        return self.d_ff if self.d_ff is not None else 4 * self.n_embd


# ---- llama -------------------------------------------------------------------------------------


@dataclass
class LlamaConfig(ModelConfig):
    arch: str = "llama"
    d_ff: Optional[int] = None  # SwiGLU hidden width; None = 2/3 * 4d rounded up to a multiple of 64
    n_kv_head: Optional[int] = None  # grouped-query attention; None = n_head (plain MHA)
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False

    def match_knob(self) -> str:
        return "d_ff"

    def __post_init__(self) -> None:
        super().__post_init__()
        kv = self.kv_heads
        if kv < 1 or self.n_head % kv:
            raise ValueError(f"model.n_kv_head ({self.n_kv_head}) must divide model.n_head ({self.n_head})")
        if self.head_size % 2:
            raise ValueError(f"RoPE needs an even head size, got n_embd / n_head = {self.head_size}")
        if self.d_ff is not None and self.d_ff < 1:
            raise ValueError(f"model.d_ff must be >= 1 (or null for the SwiGLU default), got {self.d_ff}")

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head if self.n_kv_head is not None else self.n_head

    @property
    def hidden(self) -> int:
        return self.d_ff if self.d_ff is not None else swiglu_hidden(self.n_embd)


# ---- mosaic_v1 ---------------------------------------------------------------------------------

V1_PERSISTENT_KINDS = ("pmem", "mlp", "swiglu")
MEMORY_DROPOUTS = ("weights", "retrieval")

# A GPT-2 block has 12 d^2 parameters; the contextual memory has 3 d^2 and the persistent memory
# 2 d^2 (key extractor, c_proj) + 2 P S d (banks), so P S = 3.5 d matches it.
PMEM_PAIRS_PER_CHANNEL = 3.5


@dataclass
class MosaicV1Config(ModelConfig):
    arch: str = "mosaic_v1"
    persistent: str = "pmem"  # what replaces the MLP: pmem (persistent memory) | mlp (GELU) | swiglu
    # Learned pairs per bank and head; None = auto: 3.5 d / pmem_count, which matches a GPT-2 block's
    # 12 d^2 parameters (2688 for d 768). Only for persistent: pmem.
    pmem_size: Optional[int] = None
    pmem_count: int = 1  # P banks; the persistent memory averages their retrievals
    # c_max: key scale s = exp(min(10 phi, c_max)) in the contextual memory; the persistent memory's
    # query carries the whole bandwidth exp(min(2 * 10 phi', c_max)) (the authors' clamp).
    key_scale_max: float = math.log(65535)
    # Dropout in the memories, None = model.dropout. Where it acts (memory_dropout):
    #   weights: on the attention weights of the contextual and the persistent memory (the authors');
    #   retrieval: on the contextual memory's retrieved output only, per head before c_proj (earlier
    #   mosaics-lab behaviour, kept for comparisons).
    ic_dropout: Optional[float] = None
    memory_dropout: str = "weights"
    # Dropout on the embedding and on every residual branch (after c_proj). None = model.dropout.
    hd_dropout: Optional[float] = None
    # Biases on the LayerNorms and on every projection (keys, values, outputs, MLP), as the authors'
    # `bias: true`; False: no bias anywhere.
    bias: bool = False
    norm_eps: float = 1e-10  # guards the key and value normalisations (the authors' 1e-10)
    tie_embeddings: bool = True
    d_ff: Optional[int] = None  # hidden width for persistent: mlp (None = 4d) | swiglu (None = Llama's)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.persistent not in V1_PERSISTENT_KINDS:
            raise ValueError(
                f"model.persistent must be one of {V1_PERSISTENT_KINDS}, got {self.persistent!r}"
            )
        if self.pmem_size is not None and self.pmem_size < 1:
            raise ValueError(f"model.pmem_size must be >= 1 (or null for auto = 3.5 d), got {self.pmem_size}")
        if self.pmem_size is not None and self.persistent != "pmem":
            raise ValueError(
                f"model.pmem_size is for persistent: pmem, but model.persistent is {self.persistent!r}; "
                "set model.d_ff instead (or null)"
            )
        if self.d_ff is not None and self.d_ff < 1:
            raise ValueError(f"model.d_ff must be >= 1 (or null for the default width), got {self.d_ff}")
        if self.d_ff is not None and self.persistent == "pmem":
            raise ValueError(
                "model.d_ff is for persistent: mlp|swiglu; for pmem set model.pmem_size (or null)"
            )
        if self.pmem_count < 1:
            raise ValueError(f"model.pmem_count must be >= 1, got {self.pmem_count}")
        if self.key_scale_max <= 0:
            raise ValueError(f"model.key_scale_max must be > 0, got {self.key_scale_max}")
        if self.memory_dropout not in MEMORY_DROPOUTS:
            raise ValueError(
                f"model.memory_dropout must be one of {', '.join(MEMORY_DROPOUTS)}, "
                f"got {self.memory_dropout!r}"
            )
        if self.norm_eps <= 0:
            raise ValueError(f"model.norm_eps must be > 0, got {self.norm_eps}")
        for name in ("ic_dropout", "hd_dropout"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                raise ValueError(f"model.{name} must be in [0, 1) (or null for model.dropout), got {value}")

    def match_knob(self) -> str:
        return "pmem_size" if self.persistent == "pmem" else "d_ff"

    @property
    def pairs(self) -> int:
        if self.pmem_size is not None:
            return self.pmem_size
        return max(1, round(PMEM_PAIRS_PER_CHANNEL * self.n_embd / self.pmem_count))

    @property
    def ic_p(self) -> float:
        return self.dropout if self.ic_dropout is None else self.ic_dropout

    @property
    def hd_p(self) -> float:
        return self.dropout if self.hd_dropout is None else self.hd_dropout


# ---- mosaic_v2 ---------------------------------------------------------------------------------

MEMORIES = ("stm+ltm", "stm_only", "ltm_only")
V2_PERSISTENT_KINDS = ("swiglu", "pmem", "none")
KEY_EXTRACTORS = ("gated", "decay_only", "gate_only", "leaky", "none")
GATE_GRANULARITIES = ("head", "channel")
VALUE_PEEKS = ("learned", "none", "future_only")
BANDWIDTHS = ("adaptive", "fixed")


@dataclass
class MosaicV2Config(ModelConfig):
    arch: str = "mosaic_v2"
    # Persistent memory. d_ff: SwiGLU hidden width; None = 2/3 * 4C rounded up to a multiple of 64.
    # With `persistent: pmem` it sizes the bank instead (see pmem_size).
    d_ff: Optional[int] = None
    persistent: str = "swiglu"  # swiglu (paper) | pmem (v1's learned pairs) | none (no FFN sub-layer)
    # Learned pairs per head of `persistent: pmem`; None = the size whose parameter count equals the
    # SwiGLU of d_ff (S = 1.5 d_ff - C), so that d_ff stays the one knob parameter matching turns.
    pmem_size: Optional[int] = None
    memories: str = "stm+ltm"  # which contextual memories the block has: stm+ltm | stm_only | ltm_only
    # Key extractor, a 2 x 2 of (decay: input-dependent | one learned constant per head) x
    # (gate: input-dependent | none), plus `none` = just the normalised W_phi x:
    #   gated = (input, input) [paper]; decay_only = (input, none); gate_only = (constant, input);
    #   leaky = (constant, none) [v1]; none.
    key_extractor: str = "gated"
    # One log-gate per head (paper) or one per channel (C gates). The decay stays per head either
    # way: leaky_average takes one decay per (B, H, T).
    gate_granularity: str = "head"
    # Value peeking, v_t from gamma_h * W_psi x_t + (1 - gamma_h) * W_psi x_{t+1}:
    #   learned: gamma_h ~ U(0, 1), trained (paper); none: gamma = 1, v_t from x_t only (no peeking);
    #   future_only: gamma = 0, v_t from x_{t+1} only.
    value_peek: str = "learned"
    stm_window: int = 256  # h
    stm_inclusive: bool = False  # False: the STM holds h - 1 pairs (lags 1..h-1); True: h (lags 1..h)
    # LTM delay m during training: [lo, hi] = uniform integer in lo..hi drawn once per optimiser step
    # (stochastic m is what lets the model extrapolate); [m] = fixed. See MosaicV2.begin_step.
    ltm_delay_train: list[int] = field(default_factory=lambda: [64, 256])
    ltm_delay_eval: int = 64  # m in eval mode
    # Bandwidth schedules, separately for each contextual memory.
    #   adaptive: beta(n) = beta1 n^alpha + beta0, all learned per head (paper);
    #   fixed: one learned beta per head whatever n (v1 style: beta = s^2, s = exp(min(10 phi, c_max))).
    # *_alpha_frozen: alpha fixed to this value in [0, 1] (not a parameter); *_beta0_zero: no beta0.
    stm_bandwidth: str = "adaptive"
    stm_alpha_frozen: Optional[float] = None
    stm_beta0_zero: bool = False
    ltm_bandwidth: str = "adaptive"
    ltm_alpha_frozen: Optional[float] = None
    ltm_beta0_zero: bool = False
    norm_eps: float = 1e-5
    tie_embeddings: bool = False

    def match_knob(self) -> str:
        return "d_ff"

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, allowed in (
            ("memories", MEMORIES),
            ("persistent", V2_PERSISTENT_KINDS),
            ("key_extractor", KEY_EXTRACTORS),
            ("gate_granularity", GATE_GRANULARITIES),
            ("value_peek", VALUE_PEEKS),
            ("stm_bandwidth", BANDWIDTHS),
            ("ltm_bandwidth", BANDWIDTHS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"model.{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}"
                )
        if self.d_ff is not None and self.d_ff < 1:
            raise ValueError(f"model.d_ff must be >= 1 (or null for the SwiGLU default), got {self.d_ff}")
        if self.pmem_size is not None and (self.persistent != "pmem" or self.pmem_size < 1):
            raise ValueError(
                f"model.pmem_size ({self.pmem_size}) needs model.persistent: pmem and a value >= 1; "
                "leave it null otherwise"
            )
        if self.gate_granularity == "channel" and self.key_extractor not in ("gated", "gate_only"):
            raise ValueError(
                f"model.gate_granularity: channel needs a key extractor with a gate (gated, gate_only); "
                f"model.key_extractor is {self.key_extractor!r}"
            )
        fewest = 1 if self.stm_inclusive else 2
        if self.stm_window < fewest:
            raise ValueError(
                f"model.stm_window must be >= {fewest} (the STM holds "
                f"{'h' if self.stm_inclusive else 'h - 1'} pairs), got {self.stm_window}"
            )
        delays = list(self.ltm_delay_train)
        if len(delays) not in (1, 2) or min(delays) < 1 or delays[0] > delays[-1]:
            raise ValueError(
                f"model.ltm_delay_train must be [m] or [lo, hi] with 1 <= lo <= hi, got {delays}; "
                "a delay of 0 would let a query see its own pair, whose value peeks at the next token"
            )
        if self.ltm_delay_eval < 1:
            raise ValueError(f"model.ltm_delay_eval must be >= 1, got {self.ltm_delay_eval}")
        for memory in ("stm", "ltm"):
            schedule = getattr(self, f"{memory}_bandwidth")
            alpha = getattr(self, f"{memory}_alpha_frozen")
            if schedule != "adaptive" and (alpha is not None or getattr(self, f"{memory}_beta0_zero")):
                raise ValueError(
                    f"model.{memory}_alpha_frozen and model.{memory}_beta0_zero apply to "
                    f"model.{memory}_bandwidth: adaptive, not {schedule!r}"
                )
            if alpha is not None and not 0.0 <= alpha <= 1.0:
                raise ValueError(
                    f"model.{memory}_alpha_frozen must be in [0, 1] (alpha = min(|th|, 1)), got {alpha}"
                )

    @property
    def hidden(self) -> int:
        return self.d_ff if self.d_ff is not None else swiglu_hidden(self.n_embd)

    @property
    def bank_size(self) -> int:
        """S of `persistent: pmem`: 2 C^2 + 2 S C parameters (W_k, c_proj, K, V) = 3 C d_ff of a SwiGLU."""
        if self.pmem_size is not None:
            return self.pmem_size
        return max(1, round(1.5 * self.hidden - self.n_embd))


MODEL_CONFIGS: dict[str, type[ModelConfig]] = {
    "gpt2": GPT2Config,
    "llama": LlamaConfig,
    "mosaic_v1": MosaicV1Config,
    "mosaic_v2": MosaicV2Config,
}


def config_class(arch: str) -> type[ModelConfig]:
    if arch not in MODEL_CONFIGS:
        raise ValueError(f"unknown model.arch {arch!r}; known: {', '.join(sorted(MODEL_CONFIGS))}")
    return MODEL_CONFIGS[arch]
