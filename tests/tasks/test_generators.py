"""Invariants of the synthetic task generators: targets, determinism, disjoint splits, validation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mosaics_lab.data.tasks import (
    IGNORE_INDEX,
    MQAR,
    TASKS,
    Automaton,
    Induction,
    MultiDocQA,
    RegBench,
    get_task,
)
from mosaics_lab.data.tasks.multidoc_qa import COLON, DOC, END, NUM_SPECIAL, QMARK, QUESTION

# Small configs so that the whole file runs in seconds.
SMALL = {
    "mqar": {"vocab_size": 256, "seq_len": 64, "num_kv_pairs": 8},
    "regbench": {"num_train_languages": 50, "seq_len": 256},
    "manyshot": {"num_shots": 3},
    "multidoc_qa": {"num_docs": 8},
    "induction": {"seq_len": 64},
}


def small(name: str, **overrides):
    return get_task(name, **{**SMALL[name], **overrides})


# --- registry and validation ------------------------------------------------------------------------


def test_registry_holds_every_task_under_its_name():
    assert set(TASKS) == {"mqar", "regbench", "manyshot", "multidoc_qa", "induction"}
    for name, cls in TASKS.items():
        assert isinstance(get_task(name), cls)


def test_unknown_task_name_suggests_the_nearest():
    with pytest.raises(ValueError, match=r"'mqr'.*did you mean 'mqar'"):
        get_task("mqr")


def test_unknown_field_is_named_with_the_nearest_field():
    with pytest.raises(ValueError, match=r"'num_kv_pair'.*did you mean 'num_kv_pairs'"):
        get_task("mqar", num_kv_pair=4)


@pytest.mark.parametrize(
    ("name", "kwargs", "field"),
    [
        ("mqar", {"num_kv_pairs": 0}, "num_kv_pairs"),
        ("mqar", {"seq_len": 60, "num_kv_pairs": 16}, "seq_len"),  # fewer slots than queries
        ("mqar", {"vocab_size": 16, "num_kv_pairs": 8}, "vocab_size"),  # not enough distinct keys
        ("mqar", {"power_a": 0.0}, "power_a"),
        ("mqar", {"random_non_queries": "yes"}, "random_non_queries"),
        ("mqar", {"seq_len": 256.0}, "seq_len"),
        ("regbench", {"num_train_languages": 0}, "num_train_languages"),
        ("regbench", {"min_states": 3}, "min_states"),  # 3 out-edges need 3 other states
        ("regbench", {"max_strings": 5}, "max_strings"),
        ("regbench", {"min_alphabet": 19}, "min_alphabet"),
        ("manyshot", {"noise": 1.5}, "noise"),
        ("manyshot", {"num_labels": 3}, "num_labels"),  # fewer labels than classes
        ("manyshot", {"num_classes": True}, "num_classes"),
        ("multidoc_qa", {"num_docs": 100, "key_vocab": 4, "key_len": 3}, "num_docs"),
        ("multidoc_qa", {"gold_depth": 1.2}, "gold_depth"),
        ("induction", {"vocab_size": 2}, "vocab_size"),
        ("induction", {"seq_len": 2}, "seq_len"),
    ],
)
def test_bad_argument_raises_value_error_naming_the_field(name, kwargs, field):
    with pytest.raises(ValueError, match=field):
        get_task(name, **kwargs)


def test_bad_split_is_rejected():
    with pytest.raises(ValueError, match="split"):
        next(small("induction").examples("dev", 1, 0))


# --- generic invariants, determinism and disjoint splits ---------------------------------------------


@pytest.mark.parametrize("name", sorted(SMALL))
def test_examples_have_the_declared_shape_vocab_and_targets(name):
    task = small(name)
    for ex in task.examples("train", 8, seed=0):
        assert ex.input_ids.shape == ex.labels.shape == (task.seq_len,)
        assert ex.input_ids.dtype == ex.labels.dtype == np.int64
        assert ex.input_ids.min() >= 0 and ex.input_ids.max() < task.vocab_size
        targets = ex.labels[ex.labels != IGNORE_INDEX]
        assert len(targets) > 0 and targets.min() >= 0 and targets.max() < task.vocab_size


@pytest.mark.parametrize("name", sorted(SMALL))
def test_same_seed_gives_identical_examples_and_another_seed_differs(name):
    task = small(name)
    a = task.batch("train", 6, seed=3)
    b = task.batch("train", 6, seed=3)
    c = task.batch("train", 6, seed=4)
    np.testing.assert_array_equal(a["input_ids"], b["input_ids"])
    np.testing.assert_array_equal(a["labels"], b["labels"])
    assert not np.array_equal(a["input_ids"], c["input_ids"])
    # Random access regenerates the same example as the stream.
    np.testing.assert_array_equal(task.example_at("train", 5, seed=3).input_ids, a["input_ids"][5])


@pytest.mark.parametrize("name", sorted(SMALL))
def test_train_and_test_splits_share_no_example(name):
    task = small(name)
    train = {ex.input_ids.tobytes() for ex in task.examples("train", 60, seed=0)}
    test = {ex.input_ids.tobytes() for ex in task.examples("test", 60, seed=0)}
    validation = {ex.input_ids.tobytes() for ex in task.examples("validation", 60, seed=0)}
    assert not train & test and not train & validation and not test & validation


# --- MQAR ------------------------------------------------------------------------------------------


def test_mqar_target_is_the_value_bound_to_the_queried_key():
    task = small("mqar")
    half = task.vocab_size // 2
    for ex in task.examples("train", 40, seed=1):
        context = ex.input_ids[: 2 * task.num_kv_pairs]
        keys, values = context[0::2], context[1::2]
        assert len(set(keys.tolist())) == task.num_kv_pairs
        assert keys.min() >= 1 and keys.max() < half
        assert values.min() >= half and values.max() < task.vocab_size
        bound = dict(zip(keys.tolist(), values.tolist()))
        positions = np.flatnonzero(ex.labels != IGNORE_INDEX)
        assert len(positions) == task.num_kv_pairs
        assert positions.min() >= 2 * task.num_kv_pairs
        assert np.all((positions - 2 * task.num_kv_pairs) % 2 == 0)  # the first token of a two-token slot
        # every key is queried exactly once, and the label is its value
        assert sorted(ex.input_ids[positions].tolist()) == sorted(keys.tolist())
        for t in positions:
            assert ex.labels[t] == bound[int(ex.input_ids[t])]


def test_mqar_fillers_are_zero_without_random_non_queries():
    task = small("mqar", random_non_queries=False)
    ex = task.example(np.random.default_rng(0))
    query_region = ex.input_ids[2 * task.num_kv_pairs :]
    non_query = np.ones(len(query_region), dtype=bool)
    non_query[np.flatnonzero(ex.labels != IGNORE_INDEX) - 2 * task.num_kv_pairs] = False
    assert np.all(query_region[non_query] == 0)
    assert np.any(small("mqar").example(np.random.default_rng(0)).input_ids[2 * task.num_kv_pairs :] != 0)


def test_mqar_power_law_favours_slots_near_the_context():
    def mean_slot(power_a: float) -> float:
        task = MQAR(vocab_size=256, seq_len=256, num_kv_pairs=4, power_a=power_a)
        positions = [np.flatnonzero(ex.labels != IGNORE_INDEX) for ex in task.examples("train", 200, 0)]
        return float(np.mean((np.concatenate(positions) - 8) // 2))

    num_slots = (256 - 8) // 2
    assert mean_slot(0.01) < 0.25 * num_slots  # strongly skewed to early slots
    assert abs(mean_slot(1.0) - (num_slots - 1) / 2) < 0.1 * num_slots  # power_a = 1 is uniform


# --- RegBench ---------------------------------------------------------------------------------------


def _split_strings(task: RegBench, ex) -> list[np.ndarray]:
    tokens = ex.input_ids[: ex.meta["length"]]
    cuts = np.flatnonzero(tokens == task.sep_id)
    return [s for s in np.split(tokens, cuts) if len(s)]


def test_regbench_automata_follow_the_published_recipe():
    task = small("regbench")
    for i in range(task.num_train_languages):
        transitions = task.train_automaton(i).transitions
        assert 4 <= transitions.shape[0] <= 12
        for state, row in enumerate(transitions):
            dests = row[row >= 0]
            assert 1 <= len(dests) <= 3
            assert state not in dests  # no self loops
            assert len(set(dests.tolist())) == len(dests)


def test_regbench_every_string_is_accepted_by_its_automaton():
    task = small("regbench", seq_len=2048)  # long enough that nothing is truncated
    for ex in task.examples("train", 20, seed=0):
        automaton = ex.meta["automaton"]
        strings = [s[s != task.sep_id] for s in _split_strings(task, ex)]
        assert 10 <= len(strings) <= 19
        assert all(1 <= len(s) <= 49 for s in strings)
        for s in strings:
            assert automaton.accepts(s)
        # a string the automaton cannot read is rejected (the walk check is not vacuous)
        state0_missing = np.flatnonzero(automaton.transitions[0] < 0)
        assert not automaton.accepts(np.array([state0_missing[0]]))


def test_regbench_legal_next_is_the_automaton_state_reached_by_the_prefix():
    task = small("regbench")
    for ex in task.examples("train", 10, seed=2):
        automaton = ex.meta["automaton"]
        legal, score = ex.meta["legal_next"], ex.meta["score_mask"]
        state, seen_sep = 0, False
        for t in range(ex.meta["length"]):
            token = int(ex.input_ids[t])
            if token == task.sep_id:
                state, seen_sep = 0, True
            else:
                state = automaton.next_state(state, token)
            expected = np.zeros(task.vocab_size, dtype=bool)
            expected[automaton.outgoing(state)] = True
            np.testing.assert_array_equal(legal[t], expected)
            nxt = int(ex.input_ids[t + 1]) if t + 1 < ex.meta["length"] else None
            if nxt is not None and nxt < task.num_symbols:
                assert ex.labels[t] == nxt and legal[t, nxt]
                assert score[t] == seen_sep  # scored from the first separator on
            else:
                assert ex.labels[t] == IGNORE_INDEX and not score[t]
        assert not legal[ex.meta["length"] :].any() and np.all(ex.labels[ex.meta["length"] :] == IGNORE_INDEX)


def test_regbench_next_symbols_are_uniform_over_outgoing_edges():
    task = small("regbench")
    automaton = next(a for a in map(task.train_automaton, range(50)) if len(a.outgoing(0)) == 3)
    rng = np.random.default_rng(0)
    firsts = np.array([automaton.sample(1, rng)[0] for _ in range(3000)])
    counts = np.array([(firsts == s).sum() for s in automaton.outgoing(0)])
    assert counts.sum() == 3000  # only legal symbols
    assert np.all(np.abs(counts / 3000 - 1 / 3) < 0.04)


def test_regbench_training_cycles_over_its_languages_and_eval_languages_are_disjoint():
    task = small("regbench")
    train = list(task.examples("train", 2 * task.num_train_languages, seed=0))
    train_fps = {ex.meta["automaton"].fingerprint() for ex in train}
    assert len(train_fps) <= task.num_train_languages
    assert train[0].meta["language"] == train[task.num_train_languages].meta["language"] == ("train", 0)
    assert train_fps <= task.train_fingerprints
    for split in ("validation", "test"):
        for ex in task.examples(split, 100, seed=0):
            assert ex.meta["automaton"].fingerprint() not in task.train_fingerprints
    # Validation and test draw their automata from different seeds too.
    validation = task.example_at("validation", 0, seed=0).meta["automaton"].transitions
    test = task.example_at("test", 0, seed=0).meta["automaton"].transitions
    assert validation.shape != test.shape or not np.array_equal(validation, test)
    # The training languages depend on language_seed only, not on the example seed.
    other = next(task.examples("train", 1, seed=9)).meta["automaton"]
    np.testing.assert_array_equal(other.transitions, train[0].meta["automaton"].transitions)


def test_regbench_eval_rejects_an_automaton_equal_to_a_training_language():
    # Tiny automata (4 states, 1 edge each, 4 symbols) collide often: the redraw must kick in.
    task = RegBench(num_train_languages=300, num_symbols=4, min_alphabet=1, max_out_edges=1, max_states=4)
    train = task.train_fingerprints
    seeds_alone = 0
    for i in range(100):
        seq = np.random.SeedSequence(task.language_seed, spawn_key=(1, 2, i, 0))
        seeds_alone += task.sample_automaton(np.random.default_rng(seq)).fingerprint() in train
        assert task.eval_automaton("test", i).fingerprint() not in train
    assert seeds_alone > 0  # disjoint seeds alone would have leaked training languages


def test_regbench_eval_fails_clearly_when_the_training_pool_covers_every_language():
    # 2 states, 1 edge each, 1 symbol: a single language exists, so no evaluation language can be new.
    task = RegBench(
        num_train_languages=5, num_symbols=1, min_alphabet=1, max_out_edges=1, min_states=2, max_states=2
    )
    with pytest.raises(ValueError, match="num_train_languages"):
        task.eval_automaton("test", 0)


def test_automaton_fingerprint_is_the_language():
    base = np.full((4, 3), -1)
    base[0, 0], base[1, 1], base[2, 2], base[3, 0] = 1, 2, 3, 1  # 0 -a-> 1 -b-> 2 -c-> 3 -a-> 1
    relabelled = np.full((4, 3), -1)  # the same automaton with states 1 and 3 swapped
    relabelled[0, 0], relabelled[3, 1], relabelled[2, 2], relabelled[1, 0] = 3, 2, 1, 3
    assert Automaton(base).fingerprint() == Automaton(relabelled).fingerprint()
    # 0 -a-> 1 and 0 -b-> 2 where 1 and 2 both only read c back to 0: 1 and 2 are one state.
    redundant = np.full((3, 3), -1)
    redundant[0, 0], redundant[0, 1], redundant[1, 2], redundant[2, 2] = 1, 2, 0, 0
    merged = np.full((3, 3), -1)
    merged[0, 0], merged[0, 1], merged[1, 2] = 1, 1, 0
    assert Automaton(redundant).fingerprint() == Automaton(merged).fingerprint()
    different = base.copy()
    different[3, 0] = -1
    different[3, 2] = 1
    assert Automaton(different).fingerprint() != Automaton(base).fingerprint()


# --- many-shot classification -------------------------------------------------------------------------


def test_manyshot_labels_are_permuted_per_prompt_and_consistent_within():
    task = small("manyshot")
    item = task.pattern_len + 2
    maps = set()
    for ex in task.examples("train", 60, seed=0):
        mapping = ex.meta["class_to_label"]
        assert len(set(mapping.tolist())) == task.num_classes
        assert mapping.min() >= task.pattern_vocab and mapping.max() < task.arrow_id
        label_tokens = ex.input_ids[item - 1 : task.num_shots * task.num_classes * item : item]
        np.testing.assert_array_equal(label_tokens, mapping[ex.meta["shot_classes"]])
        # every round shows each class once
        rounds = ex.meta["shot_classes"].reshape(task.num_shots, task.num_classes)
        assert all(sorted(r.tolist()) == list(range(task.num_classes)) for r in rounds)
        assert (
            ex.labels[-1] == mapping[ex.meta["query_class"]] and ex.meta["query_position"] == task.seq_len - 1
        )
        maps.add(tuple(mapping.tolist()))
    assert len(maps) > 40  # 16*15*14*13 possible maps: they vary across prompts


def test_manyshot_without_noise_the_query_repeats_its_class_shots():
    task = small("manyshot", noise=0.0)
    item = task.pattern_len + 2
    for ex in task.examples("train", 20, seed=1):
        query = ex.input_ids[-task.pattern_len - 1 : -1]
        shots = ex.input_ids[: -task.pattern_len - 1].reshape(-1, item)
        same = [np.array_equal(s[: task.pattern_len], query) for s in shots]
        # exactly the shots of the query class match, and all carry the query's label
        np.testing.assert_array_equal(same, ex.meta["shot_classes"] == ex.meta["query_class"])
        assert set(shots[np.array(same), -1].tolist()) == {ex.labels[-1]}
        protos = ex.meta["prototypes"]
        assert not set(protos[0].tolist()) & set(protos[1].tolist())  # class sub-vocabularies disjoint


def test_manyshot_batch_for_shots_labels_only_the_query():
    task = small("manyshot")
    for n in (1, 2, 4, 8, 16):
        batch = task.batch_for_shots(n, batch_size=4, seed=0)
        assert batch["input_ids"].shape == (4, dataclasses.replace(task, num_shots=n).seq_len)
        assert np.all((batch["labels"] != IGNORE_INDEX).sum(axis=1) == 1)
        assert np.all(batch["labels"][:, -1] != IGNORE_INDEX)
        assert all(m["num_shots"] == n for m in batch["meta"])
    trained = next(task.examples("train", 1, 0))
    assert (trained.labels != IGNORE_INDEX).sum() == task.num_shots * task.num_classes + 1


# --- multi-document QA --------------------------------------------------------------------------------


def _parse_docs(task: MultiDocQA, ex) -> tuple[np.ndarray, np.ndarray]:
    docs = ex.input_ids[: task.num_docs * task.doc_len].reshape(task.num_docs, task.doc_len)
    assert (
        np.all(docs[:, 0] == DOC)
        and np.all(docs[:, 1 + task.key_len] == COLON)
        and np.all(docs[:, -1] == END)
    )
    return docs[:, 1 : 1 + task.key_len], docs[:, 2 + task.key_len : -1]


def test_multidoc_gold_document_is_present_once_and_answers_the_question():
    task = small("multidoc_qa", key_vocab=4)  # 16 possible keys: distractors share tokens with the gold key
    depths = set()
    for ex in task.examples("train", 50, seed=0):
        keys, values = _parse_docs(task, ex)
        question = ex.input_ids[task.num_docs * task.doc_len :]
        assert question[0] == QUESTION and question[1 + task.key_len] == QMARK
        query_key = question[1 : 1 + task.key_len]
        gold = np.flatnonzero((keys == query_key).all(axis=1))
        assert len(gold) == 1 and gold[0] == ex.meta["gold_index"]
        assert len({k.tobytes() for k in keys}) == task.num_docs  # distractor keys differ from the gold key
        positions = np.flatnonzero(ex.labels != IGNORE_INDEX)
        np.testing.assert_array_equal(ex.labels[positions], values[gold[0]])
        np.testing.assert_array_equal(ex.input_ids[positions + 1], values[gold[0]])  # teacher-forced answer
        assert keys.min() >= NUM_SPECIAL and values.min() >= NUM_SPECIAL + task.key_vocab
        depths.add(int(gold[0]))
    assert len(depths) > 4


def test_multidoc_gold_depth_and_context_length_helpers():
    task = small("multidoc_qa", gold_depth=1.0)
    assert all(ex.meta["gold_index"] == task.num_docs - 1 for ex in task.examples("test", 5, 0))
    assert small("multidoc_qa", gold_depth=0.0).example(np.random.default_rng(0)).meta["gold_index"] == 0
    for factor in (1, 2, 4, 8):
        scaled = task.scaled(factor)
        assert scaled.num_docs == factor * task.num_docs
        assert next(scaled.examples("test", 1, 0)).input_ids.shape == (scaled.seq_len,)
    fitted = task.with_context_length(1000)
    assert fitted.seq_len <= 1000 < fitted.seq_len + fitted.doc_len


# --- induction ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("seq_len", [3, 256, 4096])
def test_induction_target_follows_the_first_special_token(seq_len):
    task = Induction().with_seq_len(seq_len)
    for ex in task.examples("train", 30, seed=0):
        specials = np.flatnonzero(ex.input_ids == task.special_id)
        assert len(specials) == 2 and specials[1] == seq_len - 1
        assert np.flatnonzero(ex.labels != IGNORE_INDEX).tolist() == [seq_len - 1]
        assert ex.labels[-1] == ex.input_ids[specials[0] + 1] == ex.meta["target"]
        assert ex.labels[-1] != task.special_id
