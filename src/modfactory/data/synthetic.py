"""A deterministic generator of comments in the ``google/civil_comments`` schema.

For offline demos and tests: the texts are made of a small vocabulary where each label
has its own words, so a classifier can learn them; the scores are fractions of raters
(k / n) like the real data's, including scores of exactly 0.5. Everything it produces is
marked synthetic by the build stage.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from modfactory.fileio import atomic_output
from modfactory.values import CIVIL_COMMENTS_LABELS

if TYPE_CHECKING:  # numpy and pyarrow are imported when data is generated
    import pyarrow as pa

DEFAULT_ROWS = 30_000
# Share of rows carrying each label (the real data's are lower; these keep demos small).
LABEL_RATES = {
    "toxicity": 0.16,
    "severe_toxicity": 0.002,
    "obscene": 0.05,
    "threat": 0.04,
    "insult": 0.10,
    "identity_attack": 0.05,
    "sexual_explicit": 0.04,
}
_SENTENCES = (
    "the council meeting about the new budget was long but the vote went through",
    "I think the article makes a fair point about housing costs in the city",
    "thanks for sharing this story my family lived there for years",
    "the game last night was great and the coach deserves credit",
    "we should look at the numbers before deciding anything about taxes",
    "the weather this week has been lovely for a walk along the river",
    "good comment and well written I agree with most of it",
    "the school board needs more parents at the public meetings",
)
_NEUTRAL = " ".join(_SENTENCES).split()
_WORDS = {
    "toxicity": ["stupid", "garbage", "pathetic", "disgusting", "worthless", "ridiculous"],
    "severe_toxicity": ["scum", "filth", "vermin"],
    "obscene": ["damn", "crap", "hell", "bloody", "freaking", "bullcrap"],
    "threat": ["hurt", "destroy", "punish", "attack", "regret", "smash"],
    "insult": ["idiot", "moron", "loser", "fool", "clown", "imbecile"],
    "identity_attack": ["foreigners", "immigrants", "heathens", "outsiders", "invaders"],
    "sexual_explicit": ["nude", "sexy", "naked", "erotic", "lewd"],
}
SPLIT_FRACTIONS = {"train": 1.0, "validation": 0.1, "test": 0.1}


def split_rows(total: int) -> dict[str, int]:
    """Rows per split for ``synthetic:N`` (N train rows, a tenth each for the others)."""
    return {split: max(1, int(total * fraction)) for split, fraction in SPLIT_FRACTIONS.items()}


def generate_split(
    rows: int, seed: int, labels: tuple[str, ...] = CIVIL_COMMENTS_LABELS
) -> pa.Table:
    """One split as an Arrow table: ``text`` plus a float score column per label."""
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    raters = rng.integers(4, 11, size=rows)
    scores: dict[str, np.ndarray] = {}
    active: dict[str, np.ndarray] = {}
    for label in labels:
        on = rng.random(rows) < LABEL_RATES.get(label, 0.05)
        # Flagged: a majority of raters; otherwise a minority. Every 40th flagged row
        # gets exactly half the raters (score 0.5, which the recipe does not count).
        k_on = np.ceil(raters * rng.uniform(0.51, 1.0, rows))
        k_off = np.floor(raters * rng.uniform(0.0, 0.45, rows))
        k = np.where(on, k_on, k_off)
        half = on & (rng.random(rows) < 0.025)
        k = np.where(half & (raters % 2 == 0), raters / 2, k)
        scores[label] = (k / raters).astype(np.float32)
        active[label] = scores[label] > 0.5
    lengths = rng.integers(4, 30, size=rows)
    neutral = np.array(_NEUTRAL)
    texts = []
    for i in range(rows):
        words = list(neutral[rng.integers(0, len(neutral), lengths[i])])
        for label in labels:
            vocabulary = _WORDS.get(label)
            if vocabulary is None:
                continue
            # Labels are noisy, as raters are: some flagged rows say nothing telling,
            # some safe rows use a flagged word.
            if (active[label][i] and rng.random() < 0.9) or rng.random() < 0.01:
                for _ in range(int(rng.integers(1, 3))):
                    words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(vocabulary)))
        texts.append(" ".join(words))
    return pa.table({"text": texts, **{label: scores[label] for label in labels}})


def write_source(
    directory: Path, total: int = DEFAULT_ROWS, seed: int = 0, fmt: str = "jsonl"
) -> Path:
    """Write ``train``, ``validation`` and ``test`` files once (JSONL or parquet); reuse after.

    JSONL is the default: ``datasets`` pauses 5 s after streaming each parquet split.
    """
    import pyarrow.parquet as pq

    directory.mkdir(parents=True, exist_ok=True)
    for offset, (split, rows) in enumerate(split_rows(total).items()):
        path = directory / f"{split}.{fmt}"
        if path.exists():
            continue
        table = generate_split(rows, seed * 1000 + offset)
        with atomic_output(path) as tmp:  # two builds may write the same source at once
            if fmt == "parquet":
                pq.write_table(table, tmp)
            else:
                with tmp.open("w", encoding="utf-8") as f:
                    for record in table.to_pylist():
                        f.write(json.dumps(record) + "\n")
    return directory
