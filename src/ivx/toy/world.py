"""The toy world behind ivx-toy: invented subjects with attributes, and an IOI-style task.

Everything is a pure, seeded function of `seed`: the same seed gives the same subjects,
attributes, templates, splits and records. Subject names are built from syllables so that
each name word belongs to exactly one subject (distinctive subjects keep the fact lookup at
the subject tokens, as in real language models).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

SYLLABLES = (
    "zor",
    "van",
    "kel",
    "mar",
    "tri",
    "lon",
    "bex",
    "qua",
    "dro",
    "fen",
    "gal",
    "hur",
    "isk",
    "jol",
    "kra",
    "lum",
    "nex",
    "orb",
    "pim",
    "rov",
    "sul",
    "tav",
    "ulm",
    "vel",
    "wex",
    "yar",
    "zen",
    "bri",
    "cor",
    "dal",
    "esk",
    "fyr",
    "gorn",
    "hal",
    "ith",
    "jun",
    "kas",
    "lir",
    "mox",
    "nor",
)
SUFFIXES = ("", "a", "en", "is", "on", "ar", "el", "ix")
NAMES = (
    "Mary",
    "John",
    "Alice",
    "Bob",
    "Tom",
    "James",
    "Sarah",
    "Emma",
    "David",
    "Laura",
    "Peter",
    "Anna",
    "Paul",
    "Kate",
    "Mark",
    "Lucy",
    "Henry",
    "Grace",
    "Oscar",
    "Ruth",
    "Simon",
    "Julia",
    "Adam",
    "Clara",
    "Daniel",
    "Helen",
    "Frank",
    "Irene",
    "George",
    "Nora",
    "Victor",
    "Olga",
    "Walter",
    "Rose",
    "Hugo",
    "Ella",
    "Ivan",
    "Mia",
    "Leo",
    "Zoe",
    "Max",
    "Eva",
    "Sam",
    "Lily",
    "Ben",
    "Amy",
    "Carl",
    "Dora",
    "Fred",
    "Ida",
)
PLACES = ("store", "park", "market", "garden", "station", "library", "school", "beach")
OBJECTS = ("drink", "book", "ball", "letter", "gift", "key", "coin", "map")

# Templates are (prefix, relation) combinations; some combinations are held out for evaluation,
# but every word of a held-out template also occurs in training (only the combination is new).
PREFIXES: tuple[str, ...] = (
    "",
    "In the old records ,",
    "According to the map ,",
    "Everyone knows that",
    "People say that",
    "As far as we know ,",
)
RELATIONS: dict[str, tuple[str, ...]] = {
    "city": ("is located in the city of", "can be found in the city of", "is based in the city of"),
    "country": ("is part of the country of", "belongs to the country of"),
    "language": ("uses the language", "is known for the language"),
}
# (prefix index, relation index) pairs held out per attribute
HELDOUT: dict[str, tuple[tuple[int, int], ...]] = {
    "city": ((2, 0), (3, 1)),
    "country": ((2, 0),),
    "language": ((3, 1),),
}


def _fact_templates() -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    out = {}
    for attribute, relations in RELATIONS.items():
        train: list[str] = []
        held: list[str] = []
        for i, prefix in enumerate(PREFIXES):
            for j, relation in enumerate(relations):
                text = f"{prefix} {{s}} {relation}".strip()
                (held if (i, j) in HELDOUT[attribute] else train).append(text)
        out[attribute] = (tuple(train), tuple(held))
    return out


# {s}: subject; the answer is the attribute's value (one token).
FACT_TEMPLATES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = _fact_templates()
IOI_INTROS: tuple[str, ...] = ("When", "While", "After", "Then , when", "Yesterday , when")
IOI_BODIES: tuple[str, ...] = (  # {s}: the repeated name (S2), either of {a} and {b}
    "{a} and {b} went to the {p} , {s} gave a {o} to",
    "{a} and {b} were at the {p} , {s} handed a {o} to",
    "{a} and {b} left the {p} , {s} sent a {o} to",
    "{a} and {b} walked to the {p} , {s} brought a {o} to",
)
IOI_HELDOUT: tuple[tuple[int, int], ...] = ((4, 3), (2, 0))


def _ioi_templates() -> tuple[tuple[str, ...], tuple[str, ...]]:
    train: list[str] = []
    held: list[str] = []
    for i, intro in enumerate(IOI_INTROS):
        for j, body in enumerate(IOI_BODIES):
            (held if (i, j) in IOI_HELDOUT else train).append(f"{intro} {body}")
    return tuple(train), tuple(held)


IOI_TEMPLATES: tuple[tuple[str, ...], tuple[str, ...]] = _ioi_templates()


@dataclass(frozen=True)
class Subject:
    """An invented entity: its name and attribute values."""

    name: str
    attributes: tuple[tuple[str, str], ...]

    def get(self, attribute: str) -> str:
        """Value of one attribute."""
        return dict(self.attributes)[attribute]


@dataclass(frozen=True)
class World:
    """All subjects, attribute vocabularies and the IOI name split of one seed."""

    seed: int
    subjects: tuple[Subject, ...]
    values: dict[str, tuple[str, ...]]
    train_pairs: tuple[tuple[str, str], ...]
    heldout_pairs: tuple[tuple[str, str], ...]


def _words(rng: random.Random, n: int, taken: set[str]) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        word = (rng.choice(SYLLABLES) + rng.choice(SYLLABLES) + rng.choice(SUFFIXES)).capitalize()
        if word not in taken and 5 <= len(word) <= 11:
            taken.add(word)
            out.append(word)
    return out


def build(seed: int = 0, n_subjects: int = 300) -> World:
    """Generate the world for a seed."""
    rng = random.Random(seed)
    taken: set[str] = set(NAMES)
    values = {
        "city": tuple(_words(rng, 40, taken)),
        "country": tuple(_words(rng, 16, taken)),
        "language": tuple(_words(rng, 10, taken)),
    }
    subjects = []
    for _ in range(n_subjects):
        n_words = rng.choice((1, 2, 2, 3))
        name = " ".join(_words(rng, n_words, taken))
        attrs = tuple((attr, rng.choice(vals)) for attr, vals in values.items())
        subjects.append(Subject(name, attrs))
    pairs = [(a, b) for a in NAMES for b in NAMES if a != b]
    rng.shuffle(pairs)
    cut = len(pairs) // 10
    return World(seed, tuple(subjects), values, tuple(pairs[cut:]), tuple(pairs[:cut]))


def fact_prompts(world: World, split: str) -> list[dict[str, str]]:
    """Fact records {base, subject, target, attribute} for train or held-out templates."""
    index = 0 if split == "train" else 1
    out = []
    for subject in world.subjects:
        for attribute, templates in FACT_TEMPLATES.items():
            for template in templates[index]:
                text = template.format(s=subject.name)
                text = text[0].upper() + text[1:]
                out.append(
                    {
                        "base": text,
                        "subject": subject.name,
                        "target": " " + subject.get(attribute),
                        "attribute": attribute,
                    }
                )
    return out


def fact_passages(world: World, n: int, seed: int = 0) -> list[str]:
    """Training text: a fact in a training template, then a second attribute of the same subject.

    Several attributes are read off one subject mention, as in natural text, which makes it
    worthwhile for the model to enrich the subject's own tokens (ROME's subject site)."""
    rng = random.Random(seed)
    attributes = list(RELATIONS)
    out = []
    for _ in range(n):
        subject = rng.choice(world.subjects)
        first, second = rng.sample(attributes, 2)
        template = rng.choice(FACT_TEMPLATES[first][0])
        text = template.format(s=subject.name)
        text = text[0].upper() + text[1:]
        relation = rng.choice(RELATIONS[second])
        out.append(f"{text} {subject.get(first)} ; it {relation} {subject.get(second)} .")
    return out


def ioi_prompts(world: World, split: str, n: int, seed: int = 0) -> list[dict[str, str]]:
    """IOI records: the second clause repeats one name (S2); the target is the other (IO).

    Either name may be repeated, so neither "the first name" nor "the second name" answers:
    the model has to find which name was repeated.
    """
    rng = random.Random(seed + (0 if split == "train" else 1))
    pairs = world.train_pairs if split == "train" else world.heldout_pairs
    templates = IOI_TEMPLATES[0] if split == "train" else IOI_TEMPLATES[1]
    out = []
    for _ in range(n):
        a, b = rng.choice(pairs)
        if rng.random() < 0.5:
            a, b = b, a
        io, s2 = (a, b) if rng.random() < 0.5 else (b, a)
        text = rng.choice(templates).format(a=a, b=b, s=s2, p=rng.choice(PLACES), o=rng.choice(OBJECTS))
        out.append({"base": text, "target": " " + io, "foil": " " + s2})
    return out


def ioi_patching_records(world: World, n: int, seed: int = 0) -> list[dict[str, str]]:
    """Activation-patching records: base = corrupted (S2 swapped so the answer flips),
    source = clean prompt, target = the clean answer (IO), foil = the other name."""
    out: list[dict[str, str]] = []
    template = IOI_TEMPLATES[1][-1]  # one held-out template, so positions align across records
    for record in ioi_prompts(world, "heldout", 4 * n, seed):
        if len(out) == n:
            break
        if not record["base"].startswith(template.split(" {a}")[0] + " "):
            continue
        io, s = record["target"].strip(), record["foil"].strip()
        clean = record["base"]
        head, _, tail = clean.rpartition(f" , {s} ")
        corrupted = f"{head} , {io} {tail}"
        out.append({"base": corrupted, "source": clean, "target": " " + io, "foil": " " + s})
    return out


def city_swap_records(world: World, n: int, seed: int = 0) -> list[dict[str, str]]:
    """DAS records: the source subject's city is the counterfactual answer for the base prompt."""
    rng = random.Random(seed + 7)
    template = FACT_TEMPLATES["city"][1][0]  # a held-out template with words before the subject
    by_len: dict[int, list[Subject]] = {}
    for subject in world.subjects:
        by_len.setdefault(len(subject.name.split()), []).append(subject)
    out: list[dict[str, str]] = []
    while len(out) < n:
        group = by_len[rng.choice(sorted(by_len))]
        base, source = rng.sample(group, 2)
        if base.get("city") == source.get("city"):
            continue
        out.append(
            {
                "base": template.format(s=base.name),
                "source": template.format(s=source.name),
                "target": " " + source.get("city"),
                "foil": " " + base.get("city"),
                "subject": base.name,
            }
        )
    return out


def vocabulary(world: World) -> list[str]:
    """Every word the toy world uses (templates, names, subjects, values)."""
    words: set[str] = set()
    for templates in FACT_TEMPLATES.values():
        for group in templates:
            for t in group:
                words.update(t.replace("{s}", "").split())
    for group in IOI_TEMPLATES:
        for t in group:
            words.update(w for w in t.split() if not w.startswith("{"))
    words.update(("it", ";", "."))
    words.update(NAMES)
    words.update(PLACES)
    words.update(OBJECTS)
    for subject in world.subjects:
        words.update(subject.name.split())
    for vals in world.values.values():
        words.update(vals)
    words.update(w.capitalize() for w in list(words))
    return sorted(words)
