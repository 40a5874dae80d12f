"""The synthetic stories: deterministic by seed, callbacks to earlier facts, budgets honoured."""

from __future__ import annotations

import re

import pytest

from mosaics_lab.data.stories import NAMES, generate_stories

NAME_LIST = [name for name, _ in NAMES]


def test_same_seed_gives_identical_text_and_other_seeds_differ():
    a = list(generate_stories(30_000, seed=7))
    assert a == list(generate_stories(30_000, seed=7))
    assert a != list(generate_stories(30_000, seed=8))


def test_a_smaller_budget_gives_a_prefix_of_the_stream():
    long = list(generate_stories(40_000, seed=1))
    short = list(generate_stories(10_000, seed=1))
    assert long[: len(short)] == short


def _body_and_questions(story: str) -> tuple[str, list[str]]:
    lines = story.split("\n")
    return lines[0], [line for line in lines[1:] if line.startswith("Q: ")]


def test_every_story_refers_back_to_a_character_introduced_earlier():
    for story in generate_stories(60_000, seed=3):
        body, questions = _body_and_questions(story)
        assert questions, story
        first_half, later = story[: len(story) // 2], story[len(story) // 2 :]
        introduced = {n for n in NAME_LIST if re.search(rf"\b{n}\b", first_half)}
        assert introduced, story
        assert any(re.search(rf"\b{n}\b", later) for n in introduced), story


def test_answers_repeat_facts_stated_earlier_in_the_same_story():
    checked = 0
    for story in generate_stories(100_000, seed=4):
        body, questions = _body_and_questions(story)
        for q in questions:
            where = re.fullmatch(r"Q: Where does (\S+) live\? A: In the (.+)\.", q)
            if where:
                name, home = where.groups()
                # The home is stated with its owner in the body: the answer needs the context.
                assert f"the {home}" in body and name in body, story
                checked += 1
            friend = re.fullmatch(r"Q: Who is (\S+)'s best friend\? A: (\S+)\.", q)
            if friend:
                a, b = friend.groups()
                assert a in body and b in body, story
                checked += 1
    assert checked > 20


@pytest.mark.parametrize("budget", [5_000, 50_000])
def test_token_budget_is_honoured_within_one_story(budget):
    stories = list(generate_stories(budget, seed=0))
    used = sum(len(s.encode("utf-8")) + 1 for s in stories)  # byte tokens + one end-of-text each
    assert budget <= used < budget + 2600
    assert used - (len(stories[-1].encode("utf-8")) + 1) < budget


def test_char_budget_and_story_lengths():
    stories = list(generate_stories(num_chars=80_000, seed=2))
    total = sum(len(s) for s in stories)
    assert 80_000 <= total < 80_000 + 2600
    lengths = [len(s) for s in stories]
    assert min(lengths) >= 200 and max(lengths) <= 2600
    assert max(lengths) - min(lengths) > 800  # lengths vary: short and long stories mix


def test_vocabulary_and_templates_vary_across_stories():
    stories = list(generate_stories(60_000, seed=5))
    openings = {s.split(".")[0].split(" ")[0] for s in stories}
    names = {n for s in stories for n in NAME_LIST if n in s}
    assert len(openings) >= 3 and len(names) >= 30
