"""Synthetic stories with characters to remember: the platform's embedded default corpus.

Each story introduces a few characters with facts (where they live, what they own, their pet, best
friend, favourite colour and food, their job), tells some events that add facts (gifts, things lost
and found, visits), and then refers back to earlier facts: "Later, Mia went back to the red cottage
by the river. She took her brass lantern ...", "Leo visited Mia at the red cottage by the river.",
and question/answer lines ("Q: Where does Mia live? A: In the red cottage by the river.").
Those callbacks can only be predicted by reading the earlier part of the same story, so in-context
memory pays off and a small model's loss falls visibly as it learns to use its context.

Determinism: story ``i`` under ``seed`` is drawn from its own generator seeded with a hash of
``(seed, i)``, using only ``random.Random.random()`` (whose sequence Python guarantees across
versions; ``choice``/``sample`` are not guaranteed). The stream is therefore identical on every
machine and Python version, and a shorter budget gives a prefix of a longer one.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")

# (name, pronoun) pairs; a few non-ASCII names keep multi-byte UTF-8 in the byte-level stream.
NAMES = (
    ("Mia", "she"), ("Leo", "he"), ("Ava", "she"), ("Noah", "he"), ("Zoë", "she"), ("Omar", "he"),
    ("Lily", "she"), ("Finn", "he"), ("Ruby", "she"), ("Hugo", "he"), ("Nora", "she"), ("Ezra", "he"),
    ("Ivy", "she"), ("Theo", "he"), ("Maya", "she"), ("Jonas", "he"), ("Elsa", "she"), ("Kai", "he"),
    ("Rosa", "she"), ("Milo", "he"), ("Iris", "she"), ("Felix", "he"), ("Lena", "she"), ("Arlo", "he"),
    ("Chloé", "she"), ("Tomás", "he"), ("Hana", "she"), ("Ravi", "he"), ("Greta", "she"), ("Otto", "he"),
    ("Amara", "she"), ("Jasper", "he"), ("Wren", "she"), ("Silas", "he"), ("Nina", "she"), ("Björn", "he"),
    ("Talia", "she"), ("Emil", "he"), ("Priya", "she"), ("Luca", "he"), ("Sofia", "she"), ("Idris", "he"),
)  # fmt: skip
PRONOUNS = {"she": ("she", "her", "her"), "he": ("he", "him", "his")}  # subject, object, possessive
COLOURS = (
    "red", "blue", "green", "yellow", "purple", "orange", "white", "black", "silver", "golden", "pink",
    "brown",
)  # fmt: skip
BUILDINGS = (
    "house",
    "cottage",
    "tower",
    "cabin",
    "farmhouse",
    "houseboat",
    "mill",
    "bakery",
    "lighthouse",
    "barn",
)
LOCATIONS = (
    "by the river", "on the hill", "near the forest", "at the end of the lane", "next to the market",
    "beside the lake", "behind the school", "near the old bridge", "on the quiet street", "by the sea",
)  # fmt: skip
TOWNS = (
    "Oakridge", "Willow Creek", "Maple Hollow", "Stonebrook", "Fernvale", "Pinecliff", "Ashford",
    "Brightwater", "Elmstead", "Foxglove", "Mossgate", "Riverbend",
)  # fmt: skip
MATERIALS = (
    "brass",
    "wooden",
    "silver",
    "red",
    "blue",
    "old",
    "shiny",
    "tiny",
    "heavy",
    "striped",
    "paper",
    "glass",
)
OBJECTS = (
    "lantern", "kite", "drum", "compass", "umbrella", "telescope", "violin", "map", "key", "notebook",
    "whistle", "basket", "hat", "scarf", "bicycle", "boat", "clock", "mirror", "flute", "ring",
)  # fmt: skip
PETS = ("cat", "dog", "parrot", "rabbit", "goat", "turtle", "hamster", "owl", "pony", "goldfish")
PET_NAMES = (
    "Pip", "Biscuit", "Pepper", "Mango", "Shadow", "Button", "Clover", "Ziggy", "Pickle", "Dot", "Sunny",
    "Bean",
)  # fmt: skip
FOODS = (
    "apple pie",
    "pancakes",
    "soup",
    "noodles",
    "cherries",
    "bread with honey",
    "rice",
    "plums",
    "cheese",
)
JOBS = (
    "baker", "sailor", "painter", "teacher", "farmer", "doctor", "builder", "gardener", "musician",
    "fisher", "tailor", "librarian",
)  # fmt: skip
PLACES = (
    "the market", "the old bridge", "the park", "the beach", "the library", "the forest path", "the harbour",
    "the school yard", "the hill top", "the train station",
)  # fmt: skip
TIMES = (
    "One morning",
    "One day",
    "That afternoon",
    "On a rainy day",
    "Early one evening",
    "On Sunday",
    "At noon",
)
LATER = ("Later", "The next day", "After a while", "That evening", "A week later", "Soon after", "At sunset")
ENDINGS = (
    "And that is the end of the story.",
    "Everyone slept well that night.",
    "It had been a good day in {town}.",
    "The end.",
    "They all agreed it was the best week of the year.",
    "And the town of {town} was quiet again.",
)  # fmt: skip


class _Rng:
    """choice/randint/sample built on ``random.Random.random()`` alone (see the module docstring)."""

    def __init__(self, seed: int) -> None:
        self._r = random.Random(seed)

    def below(self, n: int) -> int:
        return min(int(self._r.random() * n), n - 1)

    def randint(self, lo: int, hi: int) -> int:
        return lo + self.below(hi - lo + 1)

    def choice(self, seq: Sequence[T]) -> T:
        return seq[self.below(len(seq))]

    def sample(self, seq: Sequence[T], k: int) -> list[T]:
        pool = list(seq)
        return [pool.pop(self.below(len(pool))) for _ in range(k)]

    def chance(self, p: float) -> bool:
        return self._r.random() < p


@dataclass
class _Character:
    name: str
    subj: str
    obj: str
    poss: str
    home: str  # "red cottage by the river" (used after "the")
    items: list[str] = field(default_factory=list)  # "brass lantern" (used after "a"/"the"/possessive)
    pet: tuple[str, str] | None = None  # (kind, name)
    friend: _Character | None = None
    colour: str | None = None
    food: str | None = None
    job: str | None = None

    @property
    def Subj(self) -> str:  # noqa: N802 - sentence-initial pronoun
        return self.subj.capitalize()

    @property
    def Poss(self) -> str:  # noqa: N802
        return self.poss.capitalize()


def _a(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def _story_seed(seed: int, index: int) -> int:
    # Python's hash() of a tuple is not stable across processes; sha256 is.
    digest = hashlib.sha256(f"mosaics-lab-stories:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


class _Story:
    """Builds one story: a list of sentences plus question/answer pairs about earlier facts."""

    def __init__(self, rng: _Rng) -> None:
        self.rng = rng
        self.town = rng.choice(TOWNS)
        self.sentences: list[str] = []
        self.facts: list[tuple[str, str]] = []  # (question, answer) about things said so far
        self.chars: list[_Character] = []

    def _cast(self, n: int) -> list[_Character]:
        rng = self.rng
        chars = []
        for (name, pron), colour, building, loc in zip(
            rng.sample(NAMES, n), rng.sample(COLOURS, n), rng.sample(BUILDINGS, n), rng.sample(LOCATIONS, n)
        ):
            subj, obj, poss = PRONOUNS[pron]
            chars.append(_Character(name, subj, obj, poss, home=f"{colour} {building} {loc}"))
        return chars

    def say(self, sentence: str) -> None:
        self.sentences.append(sentence)

    # --- introductions: each fact is stated once, in one of several phrasings -------------------
    def introduce(self, c: _Character) -> None:
        rng = self.rng
        kid = rng.choice(("girl", "child") if c.subj == "she" else ("boy", "child"))
        self.say(
            rng.choice(
                (
                    f"{c.name} lived in the {c.home}.",
                    f"There was {_a(kid)} named {c.name} who lived in the {c.home}.",
                    f"In the {c.home} lived {c.name}.",
                    f"{c.name}'s home was the {c.home}.",
                )
            )
        )
        self.facts.append((f"Where does {c.name} live?", f"In the {c.home}."))
        kinds = rng.sample(("item", "pet", "colour", "food", "job"), rng.randint(2, 3))
        for kind in kinds:
            if kind == "item":
                item = f"{rng.choice(MATERIALS)} {rng.choice(OBJECTS)}"
                c.items.append(item)
                self.say(
                    rng.choice(
                        (
                            f"{c.Subj} had {_a(item)}.",
                            f"{c.Subj} owned {_a(item)} that {c.subj} carried everywhere.",
                            f"{c.Poss} most precious thing was {_a(item)}.",
                        )
                    )
                )
                self.facts.append((f"What did {c.name} own?", f"{_a(item).capitalize()}."))
            elif kind == "pet":
                c.pet = (rng.choice(PETS), rng.choice(PET_NAMES))
                self.say(
                    rng.choice(
                        (
                            f"{c.Subj} had {_a(c.pet[0])} called {c.pet[1]}.",
                            f"{c.Poss} {c.pet[0]} was named {c.pet[1]}.",
                            f"{c.name} lived with {_a(c.pet[0])}, {c.pet[1]}.",
                        )
                    )
                )
                self.facts.append((f"What is the name of {c.name}'s {c.pet[0]}?", f"{c.pet[1]}."))
            elif kind == "colour":
                c.colour = rng.choice(COLOURS)
                self.say(
                    rng.choice(
                        (
                            f"{c.Poss} favourite colour was {c.colour}.",
                            f"{c.name} loved the colour {c.colour} more than any other.",
                        )
                    )
                )
                self.facts.append((f"What is {c.name}'s favourite colour?", f"{c.colour.capitalize()}."))
            elif kind == "food":
                c.food = rng.choice(FOODS)
                self.say(
                    rng.choice(
                        (f"{c.Subj} liked {c.food} best of all.", f"{c.Poss} favourite food was {c.food}.")
                    )
                )
                self.facts.append((f"What food does {c.name} like best?", f"{c.food.capitalize()}."))
            else:
                c.job = rng.choice(JOBS)
                self.say(rng.choice((f"{c.Subj} was {_a(c.job)}.", f"{c.name} worked as {_a(c.job)}.")))
                self.facts.append((f"What is {c.name}'s job?", f"{c.name} is {_a(c.job)}."))

    def befriend(self, a: _Character, b: _Character) -> None:
        a.friend, b.friend = b, a
        self.say(
            self.rng.choice(
                (
                    f"{a.name}'s best friend was {b.name}.",
                    f"{a.name} and {b.name} were best friends.",
                    f"Every day {a.name} played with {a.poss} best friend, {b.name}.",
                )
            )
        )
        self.facts.append((f"Who is {a.name}'s best friend?", f"{b.name}."))
        self.facts.append((f"Who is {b.name}'s best friend?", f"{a.name}."))

    # --- events: add facts and move things around ----------------------------------------------
    def event(self) -> None:
        rng, chars = self.rng, self.chars
        a, b = rng.sample(chars, 2)
        when = rng.choice(TIMES)
        kind = rng.below(4)
        if kind == 0:  # a gift: b now owns a new thing, given by a
            item = f"{rng.choice(MATERIALS)} {rng.choice(OBJECTS)}"
            b.items.append(item)
            self.say(f"{when}, {a.name} gave {b.name} {_a(item)}.")
            self.say(
                rng.choice((f"{b.name} said thank you.", f"{b.Subj} was very happy.", f"{b.Subj} smiled."))
            )
            self.facts.append((f"What did {a.name} give {b.name}?", f"{_a(item).capitalize()}."))
            self.facts.append((f"Who gave {b.name} the {item}?", f"{a.name}."))
        elif kind == 1 and a.items:  # lost and found: the place and the finder are facts
            item, place = rng.choice(a.items), rng.choice(PLACES)
            self.say(f"{when}, {a.name} lost {a.poss} {item} at {place}.")
            self.say(f"{b.name} found the {item} and brought it back to the {a.home}.")
            self.facts.append((f"Where did {a.name} lose the {item}?", f"At {place}."))
            self.facts.append((f"Who found {a.name}'s {item}?", f"{b.name}."))
        elif kind == 2:  # a visit: the visitor must know the host's home
            self.say(f"{when}, {a.name} walked to the {b.home} to visit {b.name}.")
            if b.pet:
                self.say(f"{b.pet[1]} the {b.pet[0]} ran to the door.")
            self.facts.append((f"Whom did {a.name} visit?", f"{b.name}."))
        else:  # a trip with a new place fact
            place = rng.choice(PLACES)
            self.say(f"{when}, {a.name} and {b.name} went to {place} together.")
            self.facts.append((f"Where did {a.name} and {b.name} go together?", f"To {place}."))

    # --- callbacks: sentences whose details only the earlier story can predict -----------------
    def callback(self) -> None:
        rng, c = self.rng, self.rng.choice(self.chars)
        later = rng.choice(LATER)
        options: list[str] = [f"{later}, {c.name} went back to the {c.home}."]
        if c.items:
            item = rng.choice(c.items)
            options.append(
                f"{later}, {c.name} went back to the {c.home}. {c.Subj} took {c.poss} {item} with {c.obj}."
            )
            options.append(f"{later}, {c.name} looked for {c.poss} {item} in the {c.home} and found it.")
        if c.friend:
            f = c.friend
            options.append(f"{later}, {c.name} visited {c.poss} friend {f.name} at the {f.home}.")
        if c.pet:
            options.append(f"{later}, {c.name} fed {c.pet[1]}, {c.poss} {c.pet[0]}, in the {c.home}.")
        if c.colour:
            options.append(
                f"{later}, {c.name} painted the door of the {c.home} {c.colour}, {c.poss} favourite colour."
            )
        if c.food:
            options.append(
                f"{later}, {c.name} cooked {c.food} for everyone, because it was {c.poss} favourite."
            )
        if c.job:
            options.append(f"{later}, {c.name} the {c.job} went to work.")
        self.say(rng.choice(options))

    def build(self, max_chars: int) -> str:
        rng = self.rng
        # Longer stories get more characters to keep apart; every story has at least two.
        self.chars = self._cast(2 + (max_chars > 900) + (max_chars > 1500 and rng.chance(0.5)))
        opening = rng.choice(
            (
                f"Once upon a time, in the town of {self.town}, there lived {len(self.chars)} friends.",
                f"This is a story about {self.town}.",
                f"In {self.town}, everyone knew each other.",
                f"Long ago, {self.town} was a small and happy town.",
            )
        )
        self.say(opening)
        for c in self.chars:
            self.introduce(c)
        a, b = rng.sample(self.chars, 2)
        self.befriend(a, b)
        body = [self.event if rng.chance(0.55) else self.callback for _ in range(rng.randint(2, 12))]
        for step in body:
            # Leave room for the questions, which are where remembering pays off most.
            if len(" ".join(self.sentences)) > max_chars * 0.6:
                break
            step()
        self.callback()  # at least one callback in every story
        text = " ".join(self.sentences)
        questions = rng.sample(self.facts, min(len(self.facts), rng.randint(2, 6)))
        lines = []
        for q, ans in questions:
            line = f"Q: {q} A: {ans}"
            if len(text) + sum(len(x) + 1 for x in lines) + len(line) > max_chars and lines:
                break
            lines.append(line)
        ending = rng.choice(ENDINGS).format(town=self.town)
        return "\n".join([text, *lines, ending])


def generate_story(seed: int, index: int) -> str:
    """Story ``index`` of the stream under ``seed`` (random access; the same text every call)."""
    rng = _Rng(_story_seed(seed, index))
    # Length target: a few hundred to ~2000 characters, uniform, so short and long stories mix.
    return _Story(rng).build(max_chars=rng.randint(300, 2300))


def _utf8_tokens(text: str) -> int:
    return len(text.encode("utf-8")) + 1  # the byte tokenizer's count, end-of-text token included


def generate_stories(
    num_tokens: int | None = None,
    seed: int = 0,
    *,
    num_chars: int | None = None,
    count_tokens: Callable[[str], int] | None = None,
) -> Iterator[str]:
    """Stories until the budget is reached (the last story may overshoot it by one story).

    ``num_tokens`` counts tokens as the byte tokenizer does (UTF-8 bytes + one end-of-text token per
    story) unless ``count_tokens`` is given; ``num_chars`` counts characters instead. With neither,
    the stream is endless.
    """
    if num_tokens is not None and num_chars is not None:
        raise ValueError("give num_tokens or num_chars, not both")
    budget = num_tokens if num_tokens is not None else num_chars
    if budget is not None and budget < 1:
        raise ValueError(f"the stories budget must be >= 1, got {budget}")
    measure = len if num_chars is not None else (count_tokens or _utf8_tokens)
    used, index = 0, 0
    while budget is None or used < budget:
        story = generate_story(seed, index)
        used += measure(story)
        index += 1
        yield story
