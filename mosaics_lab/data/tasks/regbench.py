"""RegBench: in-context language learning (Akyürek, Wang, Kim, Andreas, 2024).

Each example is a handful of strings from ONE random probabilistic finite automaton (PFA); the
model must infer the language in context and predict legal next symbols.

Automata (the published generator, defaults below): the number of states is uniform in
``min_states .. max_states`` (4 .. 12); an alphabet of ``min_alphabet .. num_symbols`` (4 .. 18)
symbols is drawn from the ``num_symbols`` = 18 symbol ids; every state gets 1 .. ``max_out_edges``
(1 .. 3) outgoing edges, labelled with distinct alphabet symbols and leading to distinct other
states (no self loops); state 0 is the start state and every state is accepting. The automaton is
deterministic in symbol -> state, and a string is sampled by walking from the start state, choosing
an outgoing edge uniformly at random at every step.

Examples: ``min_strings .. max_strings`` (10 .. 19) strings of lengths ``min_string_len ..
max_string_len`` (1 .. 49), joined by the separator token, padded (or truncated) to ``seq_len``.
Token ids: symbols 0 .. num_symbols - 1, then SEP = num_symbols, then PAD = num_symbols + 1.

Targets, scoring and the true next-symbol distribution (generator and metric agree on these):
- ``labels[t]`` is the next token when it is a symbol (inside a string, or the first symbol after
  a separator); it is -100 when the next token is a separator, padding, or cut off by truncation.
  String lengths are drawn independently of the automaton, so *where a string ends* is not part of
  the language: the separator is never a target and never part of the scored distribution.
- The true next-symbol distribution after reading ``input_ids[: t + 1]`` is uniform over the
  outgoing edges of the state reached by the current string's prefix (the start state right after a
  separator). ``meta["legal_next"][t]`` holds that set as a (L, vocab_size) bool mask.
- ``meta["score_mask"][t]`` is True where the label is a symbol and the position lies at or after
  the first separator: within the first string nothing about the language has been seen yet, so
  those positions are trained on but not scored (a choice made here; the paper scores all tokens).
- The metric renormalises the model's distribution over the symbol ids (``support_mask``), so
  probability mass on SEP/PAD or on extra model vocabulary is neither a reward nor a penalty.

Disjoint splits: automata are drawn from ``language_seed``, not from the example seed, so the set
of languages is a property of the config. Training example i uses training automaton
``i % num_train_languages``; each validation/test example gets its own automaton. The two families
are seeded from disjoint spawn keys, and in addition an evaluation automaton whose *language*
equals a training one (compared through the canonical minimal DFA, ``Automaton.fingerprint``)
is rejected and redrawn.
"""

from __future__ import annotations

import dataclasses
from functools import cached_property
from typing import ClassVar

import numpy as np

from mosaics_lab.data.tasks.base import (
    IGNORE_INDEX,
    SyntheticTask,
    TaskExample,
    check_int,
    split_key,
)

# Spawn keys under language_seed: the training pool, and the evaluation automata of each split.
_TRAIN_LANGUAGES = 0
_EVAL_LANGUAGES = 1
# Redraws of an evaluation automaton whose language is a training one, before giving up.
_MAX_EVAL_ATTEMPTS = 1000


@dataclasses.dataclass(frozen=True)
class Automaton:
    """A deterministic, all-accepting automaton with uniform transition probabilities.

    ``transitions[s, a]`` is the state reached from ``s`` by symbol ``a``, or -1 (no edge). The start
    state is 0.
    """

    transitions: np.ndarray  # (num_states, num_symbols) int64

    @property
    def num_states(self) -> int:
        return self.transitions.shape[0]

    def outgoing(self, state: int) -> np.ndarray:
        """Symbols with an edge out of ``state``, ascending."""
        return np.flatnonzero(self.transitions[state] >= 0)

    def next_state(self, state: int, symbol: int) -> int:
        """The state after ``symbol``, or -1 when ``state`` has no such edge."""
        return int(self.transitions[state, symbol])

    def accepts(self, string: np.ndarray) -> bool:
        """Every state accepts, so a string is in the language iff its walk never leaves the edges."""
        state = 0
        for symbol in string:
            state = self.next_state(state, int(symbol))
            if state < 0:
                return False
        return True

    def sample(self, length: int, rng: np.random.Generator) -> np.ndarray:
        """A string of ``length`` symbols: a walk from the start taking a uniform outgoing edge."""
        out = np.empty(length, dtype=np.int64)
        draws = rng.random(length)
        state = 0
        for i in range(length):
            symbols = self.outgoing(state)
            symbol = symbols[int(draws[i] * len(symbols))]
            out[i] = symbol
            state = int(self.transitions[state, symbol])
        return out

    def fingerprint(self) -> bytes:
        """A canonical form of the language: equal bytes iff the two automata accept the same strings.

        Minimal DFAs of equal languages are isomorphic, so: keep the reachable states, merge
        equivalent ones (Moore refinement; every real state accepts, a missing edge goes to an
        implicit rejecting sink), then number the classes in breadth-first order from the start,
        visiting symbols in ascending order.
        """
        num_symbols = self.transitions.shape[1]
        reachable, frontier = {0}, [0]
        while frontier:
            state = frontier.pop()
            for symbol in self.outgoing(state):
                nxt = int(self.transitions[state, symbol])
                if nxt not in reachable:
                    reachable.add(nxt)
                    frontier.append(nxt)
        states = sorted(reachable)
        block = dict.fromkeys(states, 0)  # all accepting: one initial block (the sink is apart)
        while True:
            signatures = {
                s: (block[s], *(block.get(int(self.transitions[s, a]), -1) for a in range(num_symbols)))
                for s in states
            }
            ids: dict[tuple[int, ...], int] = {}
            refined = {s: ids.setdefault(signatures[s], len(ids)) for s in states}
            if len(ids) == len(set(block.values())):
                break
            block = refined
        order: dict[int, int] = {block[0]: 0}
        queue, rows = [0], []
        representative = {block[s]: s for s in reversed(states)}
        while queue:
            state = representative[block[queue.pop(0)]]
            row = []
            for symbol in range(num_symbols):
                nxt = int(self.transitions[state, symbol])
                if nxt < 0:
                    row.append(-1)
                    continue
                if block[nxt] not in order:
                    order[block[nxt]] = len(order)
                    queue.append(nxt)
                row.append(order[block[nxt]])
            rows.append(row)
        return np.asarray(rows, dtype=np.int16).tobytes()


@dataclasses.dataclass
class RegBench(SyntheticTask):
    """In-context language learning on random PFAs; metrics: greedy accuracy and TVD (see module doc)."""

    name: ClassVar[str] = "regbench"

    num_train_languages: int = 2500
    seq_len: int = 512
    language_seed: int = 0
    num_symbols: int = 18
    min_states: int = 4
    max_states: int = 12
    min_alphabet: int = 4
    max_out_edges: int = 3
    min_strings: int = 10
    max_strings: int = 19
    min_string_len: int = 1
    max_string_len: int = 49

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_int(owner, "num_train_languages", self.num_train_languages, min_value=1)
        check_int(owner, "seq_len", self.seq_len, min_value=2)
        check_int(owner, "language_seed", self.language_seed, min_value=0)
        check_int(owner, "num_symbols", self.num_symbols, min_value=1)
        check_int(owner, "max_out_edges", self.max_out_edges, min_value=1)
        # Every state needs max_out_edges distinct other states to point to (no self loops).
        check_int(owner, "min_states", self.min_states, min_value=self.max_out_edges + 1)
        check_int(owner, "max_states", self.max_states, min_value=self.min_states)
        check_int(
            owner, "min_alphabet", self.min_alphabet, min_value=self.max_out_edges, max_value=self.num_symbols
        )
        check_int(owner, "min_strings", self.min_strings, min_value=1)
        check_int(owner, "max_strings", self.max_strings, min_value=self.min_strings)
        check_int(owner, "min_string_len", self.min_string_len, min_value=1)
        check_int(owner, "max_string_len", self.max_string_len, min_value=self.min_string_len)

    @property
    def sep_id(self) -> int:
        return self.num_symbols

    @property
    def pad_id(self) -> int:
        return self.num_symbols + 1

    @property
    def vocab_size(self) -> int:
        return self.num_symbols + 2

    # --- automata --------------------------------------------------------------------------------

    def sample_automaton(self, rng: np.random.Generator) -> Automaton:
        """One random automaton under the published recipe (module docstring)."""
        num_states = int(rng.integers(self.min_states, self.max_states + 1))
        alphabet_size = int(rng.integers(self.min_alphabet, self.num_symbols + 1))
        alphabet = rng.choice(self.num_symbols, size=alphabet_size, replace=False)
        transitions = np.full((num_states, self.num_symbols), -1, dtype=np.int64)
        for state in range(num_states):
            num_edges = int(rng.integers(1, self.max_out_edges + 1))
            symbols = rng.choice(alphabet, size=num_edges, replace=False)
            others = np.delete(np.arange(num_states), state)
            transitions[state, symbols] = rng.choice(others, size=num_edges, replace=False)
        return Automaton(transitions)

    def train_automaton(self, index: int) -> Automaton:
        """Training language ``index`` (0 .. num_train_languages - 1), a pure function of the config."""
        check_int(type(self).__name__, "index", index, min_value=0, max_value=self.num_train_languages - 1)
        seq = np.random.SeedSequence(self.language_seed, spawn_key=(_TRAIN_LANGUAGES, index))
        return self.sample_automaton(np.random.default_rng(seq))

    @cached_property
    def train_fingerprints(self) -> frozenset[bytes]:
        """Canonical forms of all training languages (built once, on the first evaluation example)."""
        return frozenset(self.train_automaton(i).fingerprint() for i in range(self.num_train_languages))

    def eval_automaton(self, split: str, index: int) -> Automaton:
        """The automaton of evaluation example ``index``: disjoint seeds, and never a training language."""
        if split == "train":
            raise ValueError("eval_automaton is for 'validation' or 'test'; training uses train_automaton")
        for attempt in range(_MAX_EVAL_ATTEMPTS):
            seq = np.random.SeedSequence(
                self.language_seed, spawn_key=(_EVAL_LANGUAGES, split_key(split), index, attempt)
            )
            automaton = self.sample_automaton(np.random.default_rng(seq))
            if automaton.fingerprint() not in self.train_fingerprints:
                return automaton
        # Only tiny automaton spaces get here (the training pool covers almost every language).
        raise ValueError(
            f"could not draw a {split} language outside the {self.num_train_languages} training languages "
            f"in {_MAX_EVAL_ATTEMPTS} attempts; lower num_train_languages or widen the automaton ranges "
            "(num_symbols, max_states, max_out_edges)"
        )

    # --- examples ----------------------------------------------------------------------------------

    def example(self, rng: np.random.Generator) -> TaskExample:
        """An example from a fresh automaton drawn from ``rng`` (not tied to any split's languages)."""
        return self.example_from(self.sample_automaton(rng), rng)

    def split_example(self, split: str, index: int, rng: np.random.Generator) -> TaskExample:
        if split_key(split) == split_key("train"):
            language = index % self.num_train_languages
            example = self.example_from(self.train_automaton(language), rng)
        else:
            language = index
            example = self.example_from(self.eval_automaton(split, index), rng)
        example.meta["language"] = (split, language)
        return example

    def example_from(self, automaton: Automaton, rng: np.random.Generator) -> TaskExample:
        """Strings of ``automaton`` joined by SEP, padded/truncated to ``seq_len``, with targets and masks.

        meta: ``automaton``; ``strings`` (as sampled, before truncation); ``legal_next`` (L, vocab_size)
        bool; ``score_mask`` (L,) bool; ``num_symbols``; ``length`` (tokens before padding); and, from
        ``examples``/``example_at``, ``language`` = (split, index of the automaton in that split).
        """
        num_strings = int(rng.integers(self.min_strings, self.max_strings + 1))
        lengths = rng.integers(self.min_string_len, self.max_string_len + 1, size=num_strings)
        strings = [automaton.sample(int(n), rng) for n in lengths]
        pieces: list[np.ndarray] = []
        for i, string in enumerate(strings):
            if i:
                pieces.append(np.array([self.sep_id], dtype=np.int64))
            pieces.append(string)
        tokens = np.concatenate(pieces)[: self.seq_len]
        n = len(tokens)

        input_ids = np.full(self.seq_len, self.pad_id, dtype=np.int64)
        input_ids[:n] = tokens
        labels = np.full(self.seq_len, IGNORE_INDEX, dtype=np.int64)
        nxt = tokens[1:]
        is_symbol = nxt < self.num_symbols
        labels[: n - 1][is_symbol] = nxt[is_symbol]

        # The state after reading input_ids[: t + 1]: reset to the start at every separator.
        legal_next = np.zeros((self.seq_len, self.vocab_size), dtype=bool)
        state = 0
        for t in range(n):
            token = int(tokens[t])
            state = 0 if token == self.sep_id else automaton.next_state(state, token)
            assert state >= 0, "a sampled string left the automaton's edges"
            legal_next[t, : self.num_symbols] = automaton.transitions[state] >= 0

        seps = np.flatnonzero(tokens == self.sep_id)
        first_scored = int(seps[0]) if len(seps) else n
        score_mask = labels != IGNORE_INDEX
        score_mask[:first_scored] = False
        meta = {
            "automaton": automaton,
            "strings": strings,
            "legal_next": legal_next,
            "score_mask": score_mask,
            "num_symbols": self.num_symbols,
            "length": n,
        }
        return TaskExample(input_ids, labels, meta)
