"""Names shared across layers (one source of truth): TensorBoard / metrics.jsonl tags, file names."""

TRAIN_LOSS = "train/loss"
TRAIN_LR = "train/lr"
TRAIN_GRAD_NORM = "train/grad_norm"
TRAIN_TOKENS = "train/tokens"
VAL_LOSS = "val/loss"
VAL_PPL = "val/ppl"
PERF_TOKENS_PER_SEC = "perf/tokens_per_sec"
PERF_MFU = "perf/mfu"
MEM_PEAK_GIB = "mem/peak_gib"
HP_VAL_LOSS = "hp/val_loss"
HP_TRAIN_LOSS = "hp/train_loss"

# Metrics a sweep may optimise (objective names are validated against this set or `eval/...`).
OBJECTIVE_METRICS = (VAL_LOSS, VAL_PPL, TRAIN_LOSS)

RECIPE_FILE = "recipe.yaml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
LAST_GOOD_CHECKPOINT = "last_good.ckpt"
TRIAL_LOG = "train.log"  # a sweep trial's stdout + stderr, in its run dir
RUN_META_KEY = "_run"  # section of a run's recipe.yaml with versions, git sha and parameter counts


def memory_tag(layer: int, memory: str, name: str) -> str:
    """`memory/<layer>/<stm|ltm|cmem|pmem>/<name>`: the mosaic's own diagnostics."""
    return f"memory/{layer}/{memory}/{name}"


def eval_tag(task: str, metric: str) -> str:
    """`eval/<task>/<metric>`: what `mosaics-lab eval` writes to a run's TensorBoard."""
    return f"eval/{task}/{metric}"
