"""The study: creating or joining it (the grid enqueued exactly once), checking that a joining
launcher runs the same sweep, its sampler and pruner, and the names of what it records per trial."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence

import optuna
from optuna.exceptions import DuplicatedStudyError
from optuna.storages import BaseStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from mosaics_lab.sweeps.optuna_adapter import retry_history
from mosaics_lab.sweeps.spec import CELL_ATTR, Sweep, SweepError, encode_choice

READY_ATTR = "mosaics_lab:cells_enqueued"  # study user attr: set once the creator enqueued every cell
FINGERPRINT_ATTR = "mosaics_lab:sweep"  # study user attr: what the sweep varies (see Sweep.fingerprint)
READY_WAIT_S = 120.0  # how long a joining launcher waits for the creator to enqueue the grid
# Trial user attributes
WORKER_ATTR = "worker"  # host:pid:start-time of the launcher running it (sweeps.workers)
RUN_DIR_ATTR = "run_dir"
ERROR_ATTR = "error"
LOG_TAIL_ATTR = "log_tail"
EXIT_ATTR = "exit_code"
STATUS_ATTR = "status"  # the run's summary.json status


def build_sampler(sweep: Sweep, seed: int) -> optuna.samplers.BaseSampler:
    s = sweep.spec.sampler
    if s.type == "tpe":
        # constant_liar: parallel workers see running trials as bad, so they do not all sample one spot
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=s.startup_trials, constant_liar=True)
    # random, and grid (whose trials are all enqueued with fixed values: the sampler is never asked)
    return optuna.samplers.RandomSampler(seed=seed)


def build_pruner(sweep: Sweep) -> optuna.pruners.BasePruner:
    p = sweep.spec.pruner
    if p.type == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.startup_trials, n_warmup_steps=p.warmup_steps)
    if p.type == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=max(1, p.warmup_steps),
            max_resource=max(sweep.total_steps, max(1, p.warmup_steps) + 1),
            reduction_factor=p.reduction_factor,
        )
    return optuna.pruners.NopPruner()


def open_study(sweep: Sweep, storage: BaseStorage, create: bool = True) -> optuna.Study:
    """Create the study (and enqueue the grid, exactly once) or join it, checking it is the same sweep.

    Creating a study is atomic in every storage, so exactly one launcher creates it and that one
    enqueues the grid cells, then marks the study ready; the others wait for the mark.
    """
    name, direction = sweep.study, sweep.spec.objective.direction
    pruner = build_pruner(sweep)
    if create:
        try:
            study = optuna.create_study(
                study_name=name,
                storage=storage,
                sampler=build_sampler(sweep, sweep.spec.sampler.seed),
                pruner=pruner,
                direction=direction,
            )
        except DuplicatedStudyError:
            pass
        else:
            study.set_user_attr(FINGERPRINT_ATTR, sweep.fingerprint())
            for cell in sweep.cells:
                params = {k: encode_choice(v) for k, v in cell.params.items()}
                study.enqueue_trial(params, user_attrs={CELL_ATTR: cell.index})
            study.set_user_attr(READY_ATTR, len(sweep.cells))
            return study
    try:
        existing = optuna.load_study(study_name=name, storage=storage)
    except KeyError as exc:
        raise SweepError(
            f"no study named {name!r} in this storage yet; run `mosaics-lab sweep` first"
        ) from exc
    # A joining (or resuming) launcher must not replay the creator's random draws: derive its seed
    # from the study's progress and this process.
    n_existing = len(existing.get_trials(deepcopy=False))
    digest = hashlib.sha256(f"{sweep.spec.sampler.seed}:{n_existing}:{os.getpid()}".encode()).hexdigest()
    study = optuna.load_study(
        study_name=name, storage=storage, sampler=build_sampler(sweep, int(digest[:8], 16)), pruner=pruner
    )
    if create:  # a launcher about to run trials; --status shows whatever is there
        _check_same_sweep(study, sweep)
    return study


def _check_same_sweep(study: optuna.Study, sweep: Sweep) -> None:
    deadline = time.monotonic() + READY_WAIT_S
    while READY_ATTR not in study.user_attrs:
        if time.monotonic() >= deadline:
            raise SweepError(
                f"study {sweep.study!r} exists but its grid was never fully enqueued (did its first launcher "
                "die while creating it?); delete it (optuna delete-study --study-name NAME --storage URL, or "
                "remove the journal file) or pass --study NEW_NAME"
            )
        time.sleep(0.5)
    if study.direction.name.lower() != sweep.spec.objective.direction:
        raise SweepError(
            f"study {sweep.study!r} was created to {study.direction.name.lower()} its objective; the sweep "
            f"file says {sweep.spec.objective.direction}. Use --study NEW_NAME for a new study."
        )
    recorded = study.user_attrs.get(FINGERPRINT_ATTR, {})
    current = sweep.fingerprint()
    # A key the creator did not record (an older mosaics-lab) is not compared.
    differ = sorted(k for k in recorded if recorded[k] != current.get(k))
    if "size" in differ:
        was, now = (json.loads(f.get("size", "null")) for f in (recorded, current))
        was_text, now_text = (f"--size {x}" if x else "no --size" for x in (was, now))
        raise SweepError(
            f"study {sweep.study!r} was created with {was_text}; this launcher has {now_text}. "
            f"Run it with {was_text}, or pass --study NEW_NAME to start a new study."
        )
    if differ:
        raise SweepError(
            f"study {sweep.study!r} was created from a different sweep (it differs in: {', '.join(differ)}); "
            "its finished trials would not be comparable. Restore the sweep file and overrides, or pass "
            "--study NEW_NAME to start a new study."
        )


def superseded_numbers(trials: Sequence[FrozenTrial]) -> set[int]:
    """Failed trials that were re-enqueued (their retry stands in for them)."""
    out: set[int] = set()
    for t in trials:
        out.update(retry_history(t))
    return out


def retry(study: optuna.Study, frozen: FrozenTrial, max_retry: int | None) -> bool:
    """Re-enqueue ``frozen`` with its parameters (Optuna's own retry callback); False if out of retries."""
    before = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    RetryHeartbeatStaleTrialCallback(max_retry=max_retry)(study, frozen)
    return len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,))) > before


def retry_failed(study: optuna.Study) -> list[int]:
    """Re-enqueue every failed trial that no retry stands in for yet (``--retry-failed``: after fixing
    what made them fail); each retry runs in its trial's run dir, so it resumes from its checkpoint.
    Returns the numbers of the trials re-enqueued."""
    trials = study.get_trials(deepcopy=False)
    superseded = superseded_numbers(trials)
    failed = [t for t in trials if t.state == TrialState.FAIL and t.number not in superseded]
    return [t.number for t in failed if retry(study, t, max_retry=None)]
