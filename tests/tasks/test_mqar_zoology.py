"""MQAR against Zoology's published generator, point by point (reports/mqar_generator.md).

Zoology: HazyResearch/zoology, ``zoology/data/multiquery_ar.py`` (``associative_recall.py`` before
January 2026). These tests pin the properties the report verified: the key / value halves of the
vocabulary, the constraints, the layout (an answer's key sits once in the context, followed by that
value; the label is at the query key), the law of the query slots (successive sampling without
replacement from p(j) ∝ a (j + 1) ** (a - 1), measured over many draws against the exact law), the
fillers, and the output itself (a change to it makes the data prepared under data/icl/ stale).
"""

from __future__ import annotations

import hashlib
import itertools
from collections import Counter

import numpy as np
import pytest
from scipy import stats

from mosaics_lab.data.tasks import IGNORE_INDEX, MQAR

# Zoology's study setting (Figure 2, the (256, 16) cell, vocabulary 8,192, power_a 0.01).
ZOOLOGY = {"vocab_size": 8192, "seq_len": 256, "num_kv_pairs": 16, "power_a": 0.01}


def _parse(task: MQAR, ex) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(keys, values, slots): the context's pairs in context order and the slot each key is queried in."""
    k = task.num_kv_pairs
    keys, values = ex.input_ids[0 : 2 * k : 2], ex.input_ids[1 : 2 * k : 2]
    where = {int(ex.input_ids[t]): int(t) for t in np.flatnonzero(ex.labels != IGNORE_INDEX)}
    slots = np.array([(where[int(key)] - 2 * k) // 2 for key in keys])
    return keys, values, slots


def _successive_sampling_law(num_slots: int, k: int, power_a: float) -> dict[tuple[int, ...], float]:
    """Exact probability of each ordered slot tuple (slot of key 1, ..., slot of key k)."""
    w = power_a * np.arange(1, num_slots + 1, dtype=np.float64) ** (power_a - 1)
    w /= w.sum()
    law = {}
    for tup in itertools.permutations(range(num_slots), k):
        prob, left = 1.0, 1.0
        for s in tup:
            prob *= w[s] / left
            left -= w[s]
        law[tup] = prob
    return law


def _chi2_pvalue(observed: np.ndarray, expected: np.ndarray, min_expected: float = 5.0) -> float:
    """Pearson's chi-square p-value, the smallest-expectation cells merged until each holds min_expected."""
    order = np.argsort(expected)[::-1]
    obs, exp = observed[order].astype(float), expected[order].astype(float)
    cells_o, cells_e, acc_o, acc_e = [], [], 0.0, 0.0
    for o, e in zip(obs, exp):
        acc_o, acc_e = acc_o + o, acc_e + e
        if acc_e >= min_expected:
            cells_o.append(acc_o)
            cells_e.append(acc_e)
            acc_o = acc_e = 0.0
    cells_o[-1] += acc_o
    cells_e[-1] += acc_e
    return float(stats.chisquare(cells_o, cells_e).pvalue)


# --- vocabulary ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("vocab_size", [64, 65])
def test_keys_are_the_lower_half_without_0_and_values_the_upper_half(vocab_size):
    task = MQAR(vocab_size=vocab_size, seq_len=64, num_kv_pairs=8, random_non_queries=False)
    half = vocab_size // 2
    rng = np.random.default_rng(0)
    keys_seen, values_seen = set(), set()
    for _ in range(3000):
        ex = task.example(rng)
        keys, values, _ = _parse(task, ex)
        keys_seen |= set(keys.tolist())
        values_seen |= set(values.tolist())
        # Without random fillers the query region holds only the query keys and the filler 0.
        region = ex.input_ids[2 * task.num_kv_pairs :]
        assert set(region.tolist()) <= set(keys.tolist()) | {0}
        assert set(ex.labels[ex.labels != IGNORE_INDEX].tolist()) == set(values.tolist())
    assert keys_seen == set(range(1, half))  # every id of the lower half but 0, and nothing else
    assert values_seen == set(range(half, vocab_size))  # the whole upper half (33 ids when V is odd)


# --- constraints --------------------------------------------------------------------------------------


def test_zoologys_constraints_seq_len_at_least_4k_and_enough_keys():
    # seq_len = 4K is the tightest Zoology allows: K slots for K queries, so every slot is used.
    tight = MQAR(vocab_size=64, seq_len=32, num_kv_pairs=8)
    for ex in tight.examples("train", 20, seed=0):
        assert sorted(_parse(tight, ex)[2].tolist()) == list(range(8))
    with pytest.raises(ValueError, match="seq_len"):
        MQAR(vocab_size=64, seq_len=31, num_kv_pairs=8)
    # Keys are distinct ids of 1 .. V/2 - 1 (Zoology fails inside numpy; ours names the field).
    MQAR(vocab_size=64, seq_len=128, num_kv_pairs=31)
    with pytest.raises(ValueError, match="vocab_size"):
        MQAR(vocab_size=64, seq_len=128, num_kv_pairs=32)
    MQAR(vocab_size=64, seq_len=128, num_kv_pairs=8, power_a=1.0)
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="power_a"):
            MQAR(vocab_size=64, seq_len=128, num_kv_pairs=8, power_a=bad)


def test_deliberate_widenings_odd_seq_len_and_vocab_not_above_seq_len():
    # Zoology asserts an even seq_len; an odd one here ends in one unlabelled filler.
    odd = MQAR(vocab_size=64, seq_len=33, num_kv_pairs=8, random_non_queries=False)
    assert odd.num_slots == 8
    for ex in odd.examples("train", 20, seed=0):
        assert ex.input_ids[-1] == 0 and ex.labels[-1] == IGNORE_INDEX
    # Zoology asserts vocab_size > seq_len; the generator does not need it (recipes/icl run V = L = 256).
    same = MQAR(vocab_size=256, seq_len=256, num_kv_pairs=16)
    assert len(np.flatnonzero(same.example(np.random.default_rng(0)).labels != IGNORE_INDEX)) == 16


# --- layout and labels --------------------------------------------------------------------------------


@pytest.mark.parametrize("random_non_queries", [True, False])
def test_each_answer_is_the_value_its_key_was_bound_to_earlier_in_the_context(random_non_queries):
    task = MQAR(**ZOOLOGY, random_non_queries=random_non_queries)
    k, context = task.num_kv_pairs, 2 * task.num_kv_pairs
    for ex in task.examples("train", 200, seed=5):
        x, y = ex.input_ids, ex.labels
        keys = x[0:context:2]
        assert len(set(keys.tolist())) == k  # no key repeats in the context
        positions = np.flatnonzero(y != IGNORE_INDEX)
        assert len(positions) == k and positions.min() >= context
        assert np.all((positions - context) % 2 == 0)  # the first token of a two-token slot
        assert sorted(x[positions].tolist()) == sorted(keys.tolist())  # each key queried exactly once
        for t in positions:
            bound = np.flatnonzero(x[0:context:2] == x[t])
            assert len(bound) == 1  # the key sits once in the context, before the query ...
            assert x[2 * bound[0] + 1] == y[t]  # ... followed by the answer
            # The label is at the query key (the prediction made after reading it), not after it.
            assert y[t + 1] == IGNORE_INDEX
        assert np.array_equal(np.sort(ex.meta["query_positions"]), positions)


def test_queries_are_not_in_context_order_but_lean_towards_it():
    task = MQAR(**ZOOLOGY)
    in_order = [bool(np.all(np.diff(_parse(task, ex)[2]) > 0)) for ex in task.examples("train", 300, seed=1)]
    assert not all(in_order)  # the queries are not sorted by their keys' context position
    slots = np.stack([_parse(task, ex)[2] for ex in task.examples("train", 300, seed=2)])
    # ... but key 1 is sampled first, so it lands nearer the context than key 16 on average.
    assert slots[:, 0].mean() < slots[:, -1].mean()


# --- the law of the query slots (Zoology's "gaps") ----------------------------------------------------


def test_ordered_query_slots_follow_successive_power_law_sampling_exactly():
    # seq_len 20, K 3: 7 slots, 210 ordered tuples, each tuple's exact probability enumerated.
    task = MQAR(vocab_size=40, seq_len=20, num_kv_pairs=3, power_a=0.3, random_non_queries=False)
    law = _successive_sampling_law(task.num_slots, 3, 0.3)
    n = 20_000
    rng = np.random.default_rng(12)
    counts = Counter(tuple(_parse(task, task.example(rng))[2].tolist()) for _ in range(n))
    assert set(counts) <= set(law)
    tuples = sorted(law)
    observed = np.array([counts.get(t, 0) for t in tuples])
    expected = n * np.array([law[t] for t in tuples])
    assert _chi2_pvalue(observed, expected) > 1e-3


@pytest.mark.parametrize("power_a", [0.01, 1.0])
def test_first_query_slot_follows_the_power_law_at_zoologys_setting(power_a):
    # The first key's slot is the first draw: exactly p(j) ∝ a (j + 1) ** (a - 1) over the 112 slots.
    task = MQAR(**{**ZOOLOGY, "power_a": power_a})
    n = 4000
    first = np.array([_parse(task, ex)[2][0] for ex in task.examples("train", n, seed=3)])
    j = np.arange(1, task.num_slots + 1, dtype=np.float64)
    p = power_a * j ** (power_a - 1)
    p /= p.sum()
    np.testing.assert_allclose(task.slot_probabilities(), p)
    observed = np.bincount(first, minlength=task.num_slots)
    assert _chi2_pvalue(observed, n * p) > 1e-3
    if power_a == 0.01:
        # A power law, not a uniform: slot 0 takes ~19 %, the last slot ~0.2 %.
        assert observed[0] / n > 0.15 and observed[-10:].sum() / n < 0.03


# --- fillers ------------------------------------------------------------------------------------------


def test_random_fillers_are_uniform_over_the_whole_vocabulary():
    task = MQAR(vocab_size=32, seq_len=64, num_kv_pairs=4)
    fillers = []
    for ex in task.examples("train", 500, seed=0):
        region = np.arange(2 * task.num_kv_pairs, task.seq_len)
        is_query = np.isin(region, np.flatnonzero(ex.labels != IGNORE_INDEX))
        fillers.append(ex.input_ids[region[~is_query]])
    fillers = np.concatenate(fillers)
    observed = np.bincount(fillers, minlength=task.vocab_size)
    # Uniform over 0 .. V - 1, keys and values included (Zoology replaces the 0s by randint(V)).
    assert _chi2_pvalue(observed, np.full(task.vocab_size, len(fillers) / task.vocab_size)) > 1e-3


# --- the output itself --------------------------------------------------------------------------------


def test_output_is_pinned():
    """A change here changes every dataset prepared under data/icl/ (the manifest records the task's
    arguments and the seed, not the generator's code): add a generator version to the manifest so
    old directories are refused, or find what changed numpy's Generator stream."""
    digests = {}
    for rnq in (True, False):
        batch = MQAR(**ZOOLOGY, random_non_queries=rnq).batch("train", 4, seed=0)
        blob = batch["input_ids"].tobytes() + batch["labels"].tobytes()
        digests[rnq] = hashlib.sha256(blob).hexdigest()[:16]
    assert digests == PINNED_DIGESTS, digests


PINNED_DIGESTS = {True: "edc954444f8e5213", False: "332b3e69b60ce262"}
