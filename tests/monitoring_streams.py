"""Text streams for the drift and feedback tests (and benchmarks/monitoring.py).

``reviews``: short English reviews whose sentiment rests on one cue word, the
distribution the sentiment classifier of ``tests/runtimes/test_explain.py`` was
trained on. ``shifted``: German sentences about trains, weather and meetings —
another language and another topic, the shift the monitor must catch.
"""

from __future__ import annotations

import random

SUBJECTS = (
    "the movie",
    "the food",
    "the service",
    "this book",
    "the music",
    "the hotel",
    "the concert",
    "the coffee",
    "the show",
    "the acting",
    "the story",
    "the room",
)
VERBS = ("was", "is", "felt", "seemed", "looked")
CUES = {"pos": ("great", "really great", "great overall"), "neg": ("awful", "really awful")}
EXTRAS = ("", "", " today", " again", " to me", " as usual")

GERMAN_SUBJECTS = (
    "Der Zug nach Hamburg",
    "Das Wetter in München",
    "Die Besprechung am Montag",
    "Der Bus zum Flughafen",
    "Die Baustelle vor dem Bahnhof",
    "Unsere Abteilungsleiterin",
)
GERMAN_PREDICATES = (
    "hatte heute zwanzig Minuten Verspätung",
    "war überraschend kalt und windig",
    "dauerte deutlich länger als geplant",
    "wurde wegen Bauarbeiten umgeleitet",
    "verschiebt die Entscheidung auf nächste Woche",
)


def reviews(n: int, seed: int) -> list[tuple[str, str]]:
    """``n`` (text, true label) pairs from the training distribution."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        label = rng.choice(("pos", "neg"))
        text = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(CUES[label])}"
        out.append((text + rng.choice(EXTRAS), label))
    return out


def shifted(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.choice(GERMAN_SUBJECTS)} {rng.choice(GERMAN_PREDICATES)}." for _ in range(n)]


def v2_texts(texts: list[str]) -> dict[str, object]:
    """A V2 infer body of BYTES texts."""
    return {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]}
