"""A synthetic preference set with known structure, for the demo and the tests.

Prompts come from topics: a few *common* topics with many prompts and several *rare* topics with
few. Every response carries one marker word (a colour) among neutral filler words, and each topic
has its own rule for which marker is preferred. Three rare topics *reverse* a common topic's rule
(beekeeping prefers blue over red where cooking prefers red over blue), so a reward model that
ignores the prompt gets them wrong; two use markers no common topic uses ("novel" rules). A rare
rule is therefore learnt only if the model sees its prompts often enough and reads the prompt.

Prompts are short lower-case questions without punctuation (a word-level tokenizer covers every
word); the same topic's prompts share vocabulary, so MiniLM puts them in one cluster. The
generator is deterministic in its seed; test prompts never appear in the training pairs.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

from lmlab.studies.preference.pairs import make_pair


@dataclass(frozen=True)
class Topic:
    name: str
    kind: str  # common | rare
    rule: str  # reversed | novel | base (the common topics' own rules)
    preferred: str  # marker of the chosen response
    other: str  # marker of the rejected response
    verbs: tuple[str, ...]
    nouns: tuple[str, ...]
    contexts: tuple[str, ...]


TOPICS = (
    Topic("cooking", "common", "base", "red", "blue",
          ("cook", "bake", "season", "roast", "simmer"),
          ("rice", "onions", "bread", "soup", "lentils", "pasta", "chicken", "carrots",
           "potatoes", "beans", "noodles", "garlic", "mushrooms", "eggs", "tomatoes"),
          ("for dinner", "in a small kitchen", "for a family meal", "on a weeknight",
           "without an oven", "for a picnic")),
    Topic("gardening", "common", "base", "green", "amber",
          ("plant", "prune", "water", "grow", "fertilise"),
          ("roses", "tulips", "hedges", "basil", "apple trees", "lavender", "ferns", "ivy",
           "strawberries", "sunflowers", "peonies", "mint", "lilies", "shrubs", "daisies"),
          ("in the garden", "in spring", "in clay soil", "on a balcony", "in a shady yard",
           "before the frost")),
    Topic("travel", "common", "base", "violet", "teal",
          ("book", "plan", "pack for", "budget for", "find cheap"),
          ("flights", "trains", "hotels", "a city break", "a road trip", "ferries",
           "a hostel", "a tour", "museum tickets", "a rental car", "a backpacking trip",
           "a beach holiday", "airport transfers", "a ski trip", "a camping trip"),
          ("in europe", "for a long weekend", "with children", "on a tight budget",
           "in the summer", "for a business trip")),
    Topic("beekeeping", "rare", "reversed", "blue", "red",
          ("feed", "inspect", "move", "calm"),
          ("bees", "a hive", "a queen bee", "honey frames", "a swarm", "the brood", "drones",
           "a bee colony"),
          ("in winter", "after a storm", "near the orchard", "during a honey flow")),
    Topic("astronomy", "rare", "reversed", "amber", "green",
          ("observe", "photograph", "track", "find"),
          ("saturn", "the andromeda galaxy", "a comet", "meteor showers", "jupiter moons",
           "a nebula", "the milky way", "venus"),
          ("with a telescope", "from a city", "on a clear night", "with binoculars")),
    Topic("calligraphy", "rare", "reversed", "teal", "violet",
          ("practise", "ink", "letter", "flourish"),
          ("gothic script", "italic hands", "brush strokes", "copperplate", "uncial letters",
           "a nib pen", "serif capitals", "a broad edge pen"),
          ("on vellum", "with walnut ink", "for a wedding card", "on rough paper")),
    Topic("sailing", "rare", "novel", "olive", "coral",
          ("tie", "reef", "trim", "rig"),
          ("a bowline", "the mainsail", "a jib", "a cleat hitch", "the halyard",
           "a spinnaker", "the boom", "a mooring line"),
          ("in strong wind", "on a dinghy", "before docking", "at night")),
    Topic("falconry", "rare", "novel", "gold", "silver",
          ("train", "hood", "fly", "weigh"),
          ("a falcon", "a hawk", "a kestrel", "a merlin", "a harris hawk", "an owl",
           "a goshawk", "a peregrine"),
          ("on the lure", "in an open field", "before hunting", "in the mews")),
)  # fmt: skip

FILLER = (
    "you", "can", "try", "this", "first", "then", "keep", "it", "simple", "and", "check",
    "again", "later", "maybe", "use", "a", "little", "more", "care", "each", "time", "so",
    "that", "works", "well", "most", "days", "here", "is", "one", "way", "to", "do", "the",
)  # fmt: skip
OPENERS = ("how do i", "what is the best way to", "can you tell me how to", "how should i")


@dataclass
class SyntheticSpec:
    common_prompts: int = 300  # training prompts per common topic
    rare_prompts: int = 8  # training prompts per rare topic
    test_prompts: int = 40  # held-out prompts per topic
    response_words: int = 8  # filler words around the marker
    seed: int = 0


def _prompts(t: Topic, n: int, rnd: random.Random) -> list[str]:
    combos = list(itertools.product(OPENERS, t.verbs, t.nouns, t.contexts))
    if n > len(combos):
        raise ValueError(f"topic {t.name} has only {len(combos)} distinct prompts, {n} asked")
    return [f"{o} {v} {noun} {c}" for o, v, noun, c in rnd.sample(combos, n)]


def _response(marker: str, words: int, rnd: random.Random) -> str:
    body = [rnd.choice(FILLER) for _ in range(words)]
    body.insert(rnd.randrange(words + 1), marker)
    return " ".join(body)


def _pair(t: Topic, prompt: str, spec: SyntheticSpec, rnd: random.Random) -> dict:
    return make_pair(
        "synthetic",
        [{"role": "user", "content": prompt}],
        _response(t.preferred, spec.response_words, rnd),
        _response(t.other, spec.response_words, rnd),
        topic=t.name,
        kind=t.kind,
        rule=t.rule,
    )


def generate(spec: SyntheticSpec) -> tuple[list[dict], list[dict]]:
    """(training pairs, held-out test pairs), one pair per prompt; no test prompt is trained on."""
    rnd = random.Random(spec.seed)
    train, test = [], []
    for t in TOPICS:
        n_train = spec.common_prompts if t.kind == "common" else spec.rare_prompts
        prompts = _prompts(t, n_train + spec.test_prompts, rnd)
        train += [_pair(t, p, spec, rnd) for p in prompts[:n_train]]
        test += [_pair(t, p, spec, rnd) for p in prompts[n_train:]]
    rnd.shuffle(train)
    return train, test


def vocabulary() -> list[str]:
    """Every word the generator can write (for a word-level tokenizer)."""
    words: set[str] = set(FILLER)
    for o in OPENERS:
        words.update(o.split())
    for t in TOPICS:
        words.update([t.preferred, t.other])
        for phrase in (*t.verbs, *t.nouns, *t.contexts):
            words.update(phrase.split())
    return sorted(words)
