"""The embedded default task: "Which of these is a <category>?", answered with the option's text.

Generated from a seed, so it needs no download. Built to measure learning honestly on a 135M
model: every option is lower case (no capitalisation give-away), the three distractors come from
three different other categories, option order is shuffled, and evaluation questions use gold
answers that never appear as a gold answer in training. The model answers with the option's
*text*: a model this small cannot bind answers to letters (see docs/design.md).
"""

from __future__ import annotations

import random
import re

from spearfl.tasks.base import Example, Message, Task, TaskData

CATEGORIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "animal": (
        "an animal",
        (
            "dog",
            "cat",
            "horse",
            "cow",
            "lion",
            "tiger",
            "elephant",
            "rabbit",
            "monkey",
            "bear",
            "wolf",
            "fox",
            "deer",
            "sheep",
            "goat",
            "zebra",
            "giraffe",
            "mouse",
            "camel",
            "donkey",
        ),
    ),
    "fruit": (
        "a fruit",
        (
            "apple",
            "banana",
            "grape",
            "mango",
            "pear",
            "peach",
            "cherry",
            "lemon",
            "plum",
            "strawberry",
            "pineapple",
            "watermelon",
            "kiwi",
            "apricot",
            "coconut",
            "papaya",
            "raspberry",
            "blueberry",
            "melon",
            "fig",
        ),
    ),
    "vegetable": (
        "a vegetable",
        (
            "carrot",
            "potato",
            "onion",
            "cabbage",
            "lettuce",
            "spinach",
            "broccoli",
            "cucumber",
            "celery",
            "garlic",
            "pumpkin",
            "radish",
            "turnip",
            "cauliflower",
            "beetroot",
            "leek",
            "zucchini",
            "eggplant",
            "asparagus",
            "kale",
        ),
    ),
    "color": (
        "a color",
        (
            "red",
            "blue",
            "green",
            "yellow",
            "purple",
            "pink",
            "brown",
            "black",
            "white",
            "gray",
            "violet",
            "crimson",
            "turquoise",
            "beige",
            "maroon",
            "magenta",
            "scarlet",
            "indigo",
            "cyan",
            "teal",
        ),
    ),
    "instrument": (
        "a musical instrument",
        (
            "piano",
            "guitar",
            "violin",
            "drum",
            "flute",
            "trumpet",
            "cello",
            "harp",
            "saxophone",
            "clarinet",
            "trombone",
            "banjo",
            "ukulele",
            "accordion",
            "oboe",
            "tuba",
            "harmonica",
            "xylophone",
            "mandolin",
            "bagpipes",
        ),
    ),
    "vehicle": (
        "a vehicle",
        (
            "car",
            "bus",
            "truck",
            "bicycle",
            "motorcycle",
            "train",
            "airplane",
            "boat",
            "ship",
            "helicopter",
            "taxi",
            "van",
            "tractor",
            "scooter",
            "submarine",
            "tram",
            "canoe",
            "yacht",
            "jeep",
            "ambulance",
        ),
    ),
    "body": (
        "a part of the body",
        (
            "hand",
            "foot",
            "head",
            "arm",
            "leg",
            "nose",
            "ear",
            "eye",
            "mouth",
            "knee",
            "elbow",
            "shoulder",
            "finger",
            "toe",
            "neck",
            "chin",
            "ankle",
            "wrist",
            "thumb",
            "forehead",
        ),
    ),
    "job": (
        "a job",
        (
            "doctor",
            "teacher",
            "nurse",
            "farmer",
            "lawyer",
            "pilot",
            "chef",
            "engineer",
            "baker",
            "plumber",
            "dentist",
            "carpenter",
            "firefighter",
            "journalist",
            "electrician",
            "mechanic",
            "architect",
            "cashier",
            "judge",
            "scientist",
        ),
    ),
    "tool": (
        "a tool",
        (
            "hammer",
            "screwdriver",
            "wrench",
            "saw",
            "drill",
            "pliers",
            "shovel",
            "chisel",
            "rake",
            "axe",
            "crowbar",
            "sandpaper",
            "mallet",
            "hoe",
            "trowel",
            "spanner",
            "clamp",
            "vise",
            "pickaxe",
            "sledgehammer",
        ),
    ),
    "clothing": (
        "a piece of clothing",
        (
            "shirt",
            "trousers",
            "dress",
            "skirt",
            "jacket",
            "coat",
            "sweater",
            "sock",
            "hat",
            "scarf",
            "glove",
            "shoe",
            "boot",
            "blouse",
            "jeans",
            "tie",
            "vest",
            "pajamas",
            "hoodie",
            "belt",
        ),
    ),
    "sport": (
        "a sport",
        (
            "football",
            "tennis",
            "basketball",
            "golf",
            "cricket",
            "rugby",
            "hockey",
            "baseball",
            "volleyball",
            "swimming",
            "boxing",
            "skiing",
            "wrestling",
            "badminton",
            "archery",
            "fencing",
            "rowing",
            "surfing",
            "karate",
            "judo",
        ),
    ),
    "country": (
        "a country",
        (
            "france",
            "germany",
            "spain",
            "italy",
            "japan",
            "china",
            "brazil",
            "canada",
            "mexico",
            "india",
            "egypt",
            "kenya",
            "peru",
            "chile",
            "norway",
            "sweden",
            "poland",
            "greece",
            "portugal",
            "argentina",
        ),
    ),
}

# One neutral worked exchange shown before every question: it teaches the reply format only
# (its category is not one of the task's).
_EXAMPLE_QUESTION = "Which of these is a planet?\nOptions: chair, mars, river, bread"
_EXAMPLE_ANSWER = "mars"
_INSTRUCTION = "Reply with one option, exactly as written."

_ARTICLES = re.compile(r"^(?:the|an|a)\s+")
_PUNCT = re.compile(r"[^\w\s-]+")


def normalise(text: str) -> str:
    """Lower case, no punctuation or leading article, single spaces."""
    text = _PUNCT.sub(" ", text.lower())
    text = " ".join(text.split())
    return _ARTICLES.sub("", text)


def _mentions(text: str, option: str) -> bool:
    return re.search(rf"\b{re.escape(option)}\b", text, flags=re.IGNORECASE) is not None


def split_items(seed: int, eval_share: float) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Per category, disjoint lists of gold answers for training and for evaluation."""
    rng = random.Random(f"items-{seed}")
    train: dict[str, list[str]] = {}
    held: dict[str, list[str]] = {}
    for name, (_, items) in CATEGORIES.items():
        shuffled = list(items)
        rng.shuffle(shuffled)
        n_eval = max(1, round(len(shuffled) * eval_share))
        held[name] = shuffled[:n_eval]
        train[name] = shuffled[n_eval:]
    return train, held


def make_question(rng: random.Random, category: str, gold: str, uid: str) -> Example:
    others = [c for c in CATEGORIES if c != category]
    distractors = [rng.choice(CATEGORIES[c][1]) for c in rng.sample(others, 3)]
    options = [gold, *distractors]
    rng.shuffle(options)
    phrase = CATEGORIES[category][0]
    return Example(
        uid=uid,
        question=f"Which of these is {phrase}?",
        options=tuple(options),
        gold=gold,
        label=category,
        meta={"category": category, "gold_position": options.index(gold)},
    )


class EmbeddedCategoryTask(Task):
    """Pick the member of a category among four lower-case options; reply with its text."""

    name = "embedded"
    eval_method = "option_text"

    def __init__(
        self,
        *,
        seed: int = 42,
        num_train_examples: int = 2000,
        num_eval_examples: int = 240,
        eval_share: float = 0.3,
        max_eval_examples: int | None = None,
    ) -> None:
        if max_eval_examples is not None and max_eval_examples < 1:
            raise ValueError(f"max_eval_examples must be >= 1 or None, got {max_eval_examples!r}")
        self.seed = seed
        self.num_train = num_train_examples
        self.num_eval = num_eval_examples
        self.max_eval = max_eval_examples
        self.eval_share = eval_share

    def load(self) -> TaskData:
        """``max_eval_examples`` keeps the first of the eval questions as they are generated
        (categories take turns there, so a cut keeps them balanced), then shuffles them."""
        train_items, eval_items = split_items(self.seed, self.eval_share)
        num_eval = min(self.num_eval, self.max_eval or self.num_eval)
        return TaskData(
            train=self._questions(train_items, self.num_train, "train"),
            eval=self._questions(eval_items, num_eval, "eval"),
        )

    def _questions(self, items: dict[str, list[str]], count: int, part: str) -> list[Example]:
        """Balanced over categories; gold answers cycle through the category's items."""
        rng = random.Random(f"{part}-{self.seed}")
        names = list(items)
        out = []
        for i in range(count):
            category = names[i % len(names)]
            pool = items[category]
            gold = pool[(i // len(names)) % len(pool)]
            out.append(make_question(rng, category, gold, f"{part}-{i}"))
        rng.shuffle(out)
        return out

    # --------------------------------------------------------------- prompts
    def _question_text(self, example: Example) -> str:
        return f"{example.question}\nOptions: {', '.join(example.options)}\n{_INSTRUCTION}"

    def messages(self, example: Example) -> list[Message]:
        return [
            {"role": "user", "content": f"{_EXAMPLE_QUESTION}\n{_INSTRUCTION}"},
            {"role": "assistant", "content": _EXAMPLE_ANSWER},
            {"role": "user", "content": self._question_text(example)},
        ]

    def revision_messages(self, example: Example, previous: str, hint: str) -> list[Message]:
        """The question again, without the options the feedback ruled out, plus the feedback.

        A hint like "it is not X and not Y" leaves two options; re-listing only those is what
        lets a small model act on it. The hint itself never names the answer.
        """
        remaining = [o for o in example.options if not _mentions(hint, o)] or list(example.options)
        question = f"{example.question}\nOptions: {', '.join(remaining)}\n{_INSTRUCTION}"
        convo = self.messages(example)
        convo[-1] = {
            "role": "user",
            "content": f"You answered: {previous.strip()[:80]}\n{hint}\n\n{question}",
        }
        return convo

    # --------------------------------------------------------------- answers
    def extract_answer(self, example: Example, completion: str) -> str | None:
        said = normalise(completion)
        for option in example.options:
            if said == normalise(option):
                return option
        return None

    def is_well_formatted(self, example: Example, completion: str) -> bool:
        return self.extract_answer(example, completion) is not None

    def answer_span(self, example: Example, completion: str) -> tuple[int, int] | None:
        answer = self.extract_answer(example, completion)
        if answer is None:
            return None
        start = completion.lower().find(answer.lower())
        return None if start < 0 else (start, start + len(answer))

    # -------------------------------------------------------------- feedback
    def oracle_hint(self, example: Example, completion: str) -> str:
        """Rule out two wrong options: the wrong answer given (if it was an option) and another.

        Never contains the gold option: only wrong options are named.
        """
        said = self.extract_answer(example, completion)
        wrong = [o for o in example.options if o != example.gold and o != said]
        rng = random.Random(f"hint-{example.uid}-{completion}")
        ruled_out = ([said] if said else []) + rng.sample(wrong, 2 - (1 if said else 0))
        return f"That is not right. It is not {ruled_out[0]}, and it is not {ruled_out[1]}."
