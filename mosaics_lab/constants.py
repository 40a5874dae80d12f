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


def hp_eval_tag(task: str, metric: str) -> str:
    """`hp/<task>/<metric>`: an eval's headline metric as a column of TensorBoard's HPARAMS tab."""
    return f"hp/{task}/{metric}"


# The eval columns of the HPARAMS tab, listed in every run's hparams experiment config at training
# (TensorBoard takes the column list from one run's config, any one, so every run lists them all, and
# a column stays empty until `mosaics-lab eval` fills it). `metric@<point>` is a swept metric at one
# point: a multiple of the training length (`@4x`) or a shot count (`@16-shot`).
HP_EVAL_METRICS = tuple(
    hp_eval_tag(task, metric)
    for task, metrics in (
        ("val", ("loss",)),
        ("per_position", ("in_context_gain", "loss_slope_per_doubling")),
        ("extrapolation", ("loss@1x", "loss@2x", "loss@4x", "loss@8x")),
        ("mqar", ("accuracy",)),
        ("regbench", ("accuracy", "tvd")),
        ("manyshot", ("accuracy@1-shot", "accuracy@16-shot")),
        ("multidoc_qa", ("exact_match@1x", "exact_match@8x")),
        ("induction", ("accuracy@1x", "accuracy@8x")),
    )
    for metric in metrics
)
