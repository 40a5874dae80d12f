"""Task evaluators: an oracle that knows every answer scores 1 (TVD 0), a random guesser scores about
chance, sweeps mark lengths a model cannot run as n/a, and user mistakes are clear errors."""

from __future__ import annotations

import pytest

from mosaics_lab.data.tasks import get_task
from mosaics_lab.evaluation.common import EvalError, parse_lengths, parse_shots
from mosaics_lab.evaluation.icl import TaskEvalOptions, evaluate_task
from tests.evaluation.fakes import ChosenLoss, LookupOracle, RandomGuesser

# Small configs of every task (what the evaluator does is independent of the sizes).
TASKS = {
    "mqar": dict(vocab_size=64, seq_len=64, num_kv_pairs=4),
    "regbench": dict(num_train_languages=20, seq_len=64, max_string_len=10, min_strings=3, max_strings=6),
    "manyshot": dict(num_classes=3, pattern_len=4, pattern_vocab=24, num_labels=6),
    "multidoc_qa": dict(num_docs=4, key_vocab=16, value_vocab=16),
    "induction": dict(vocab_size=16, seq_len=32),
}
OPTIONS = TaskEvalOptions(batches=3, batch_size=8, seed=5, lengths=parse_lengths("1x,2x"), shots=[1, 2, 4])
MAIN_METRIC = {
    "mqar": "accuracy",
    "regbench": "accuracy",
    "manyshot": "accuracy",
    "multidoc_qa": "exact_match",
    "induction": "accuracy",
}


def scores(result, name):
    """The metric at every point of a sweep, or the single headline value."""
    if result.points:
        return [p["metrics"][name] for p in result.points]
    return [result.metrics[name]]


@pytest.mark.parametrize("name", sorted(TASKS))
def test_an_oracle_that_knows_the_answers_scores_one(name):
    task = get_task(name, **TASKS[name])
    oracle = LookupOracle(task.vocab_size)
    oracle.add_task(task, OPTIONS)
    result = evaluate_task(oracle, task, OPTIONS)
    assert scores(result, MAIN_METRIC[name]) == pytest.approx([1.0] * len(scores(result, MAIN_METRIC[name])))
    if name == "regbench":
        assert result.metrics["tvd"] == pytest.approx(0.0, abs=1e-6)
    if result.points:
        assert all(p["status"] == "ok" and p["num_examples"] == 24 for p in result.points)
    assert result.info["task_config"] == {**result.info["task_config"], **TASKS[name]}


@pytest.mark.parametrize("name", sorted(TASKS))
def test_a_random_guesser_scores_about_chance(name):
    task = get_task(name, **TASKS[name])
    vocab = task.vocab_size
    result = evaluate_task(RandomGuesser(vocab), task, OPTIONS)
    values = scores(result, MAIN_METRIC[name])
    if name == "regbench":
        # argmax uniform over the 18 symbols, 1 to 3 of them legal: about 2 / 18
        assert 0.02 < values[0] < 0.3 and result.metrics["tvd"] > 0.5
    elif name == "multidoc_qa":
        assert all(v <= 0.1 for v in values), values  # both answer tokens right by luck: (1 / 37) ** 2
    else:
        # greedy over the whole vocabulary: 1 / V expected, a few hits at most over 24 to 96 predictions
        assert all(v <= 4 / vocab + 0.1 for v in values), values


def test_manyshot_scores_each_shot_count_on_its_own_prompts():
    task = get_task("manyshot", **TASKS["manyshot"])
    oracle = LookupOracle(task.vocab_size)
    oracle.add_task(task, TaskEvalOptions(batches=3, batch_size=8, seed=5, shots=[4]))  # only 4 shots known
    result = evaluate_task(oracle, task, OPTIONS)
    assert [p["shots"] for p in result.points] == [1, 2, 4]
    accuracy = [p["metrics"]["accuracy"] for p in result.points]
    assert accuracy[2] == 1.0 and accuracy[0] < 0.5 and accuracy[1] < 0.5
    assert result.metrics == {"accuracy_at_1_shots": accuracy[0], "accuracy_at_4_shots": 1.0}
    assert result.points[0]["chance"] == pytest.approx(1 / 3)


def test_length_sweep_marks_lengths_the_model_cannot_run_as_na():
    task = get_task("induction", **TASKS["induction"])  # seq_len 32
    model = ChosenLoss(lambda t: 1.0, vocab_size=task.vocab_size, max_len=40)
    result = evaluate_task(
        model, task, TaskEvalOptions(batches=1, batch_size=4, lengths=parse_lengths("1x,2x,96"))
    )
    assert [(p["length"], p["status"]) for p in result.points] == [(32, "ok"), (64, "n/a"), (96, "n/a")]
    assert result.points[1]["metrics"] == {"accuracy": None}
    assert "learned positions for 40" in result.points[1]["reason"]
    assert result.info["longest_length"] == 32


def test_multidoc_qa_lengths_scale_the_number_of_documents():
    task = get_task("multidoc_qa", **TASKS["multidoc_qa"])
    oracle = LookupOracle(task.vocab_size)
    opts = TaskEvalOptions(batches=1, batch_size=2, lengths=parse_lengths("1x,4x,200"))
    oracle.add_task(task, opts)
    result = evaluate_task(oracle, task, opts)
    assert [p["num_docs"] for p in result.points] == [4, 16, (200 - task.question_len) // task.doc_len]
    assert [p["length"] for p in result.points] == [
        task.seq_len,
        task.scaled(4).seq_len,
        task.with_context_length(200).seq_len,
    ]


def test_a_task_vocabulary_larger_than_the_model_is_a_clear_error():
    task = get_task("mqar", **TASKS["mqar"])
    with pytest.raises(EvalError, match="64 logits|uses token ids 0 .. 63"):
        evaluate_task(RandomGuesser(32), task, OPTIONS)


def test_a_single_length_task_longer_than_the_model_is_a_clear_error():
    task = get_task("mqar", **TASKS["mqar"])
    with pytest.raises(EvalError, match="seq_len"):
        evaluate_task(ChosenLoss(lambda t: 1.0, vocab_size=64, max_len=32), task, OPTIONS)


@pytest.mark.parametrize("text", ["2y", "1x,,2x", "0x", "x", "1.5x", "-1", ""])
def test_bad_lengths_are_rejected_with_the_expected_form(text):
    with pytest.raises(EvalError, match="1x,2x,4x,8x"):
        parse_lengths(text)


def test_lengths_mix_multiples_and_token_counts():
    specs = parse_lengths("1x, 4X,1000")
    assert [s.resolve(256) for s in specs] == [256, 1024, 1000]


@pytest.mark.parametrize("text", ["1,two", "-1", "1.5", "", "0"])
def test_bad_shots_are_rejected(text):
    with pytest.raises(EvalError, match="--shots"):
        parse_shots(text)
