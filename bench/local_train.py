"""Benchmark: the local model chosen on validation against plain TF-IDF + logistic regression.

Builds a data set of the cookbook's size (``--source``, default ``synthetic:340000``: about
100,000 training rows after the recipe's filter) with the cookbook's recipe, then fits in
a fresh process each: plain TF-IDF word + character n-grams with one logistic regression
per label (C = 1), and the model MODFACTORY_LOCAL_GRID chooses (``--grid small`` or
``full``). Prints wall time, peak memory, and per label the validation and test PR-AUC
of both, with the macro averages.

    python bench/local_train.py [--source synthetic:340000] [--grid small]
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def fit_and_score(split_dir: str, grid: str) -> dict:
    """In a fresh process: fit, then score validation and test (what the parent prints)."""
    from sklearn.metrics import average_precision_score

    from modfactory.backends.local.selection import fit_all, scores
    from modfactory.data.recipe import TARGET, read_jsonl

    def load(split: str) -> tuple[list[str], list[list[str]]]:
        rows = read_jsonl(Path(split_dir) / f"{split}.jsonl")
        return [r["text"] for r in rows], [r["labels"][TARGET] for r in rows]

    train, valid, test = load("train"), load("validation"), load("test")
    labels = sorted({label for row in train[1] for label in row} - {"safe"})
    start = time.perf_counter()
    bundle, choices = fit_all(train, valid, labels, grid, 0, lambda *_: None)  # type: ignore[arg-type]
    took = time.perf_counter() - start
    found = {}
    for name, (texts, truth) in (("validation", valid), ("test", test)):
        predicted = scores(bundle, texts)
        found[name] = {
            label: float(
                average_precision_score([label in t for t in truth], [p[label] for p in predicted])
            )
            for label in labels
        }
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    chosen = {c.label: f"{c.weighting} C={c.C:g}" for c in choices}
    return {"seconds": took, "peak_mb": peak_mb, "rows": len(train[0]), "chosen": chosen, **found}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="synthetic:340000")
    parser.add_argument("--grid", default="small", choices=["small", "full"])
    args = parser.parse_args()
    from modfactory.data.build import build_dataset
    from modfactory.data.sources import parse_source
    from modfactory.values import RecipeParams

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "dataset"
        print(f"building {args.source} with the cookbook's recipe…", flush=True)
        summary = build_dataset(parse_source(args.source), RecipeParams(), out, Path(tmp) / "d")
        rows = {split: s.rows for split, s in summary.splits.items()}
        print(f"rows after the filter: {rows}", flush=True)
        spawn = multiprocessing.get_context("spawn")
        results = {}
        for name, grid in (("plain TF-IDF + LR", "off"), (f"chosen ({args.grid} grid)", args.grid)):
            print(f"fitting {name}…", flush=True)
            with spawn.Pool(1) as pool:
                results[name] = pool.apply(fit_and_score, (str(out), grid))
    report(results)


def report(results: dict[str, dict]) -> None:
    names = list(results)
    labels = list(results[names[0]]["test"])
    print()
    for name, r in results.items():
        print(f"{name:<26} {r['seconds']:>7.1f} s   peak {r['peak_mb']:>6,.0f} MB   "
              f"({r['rows']:,} training rows)")  # fmt: skip
    print(f"\n{'label':<18}" + "".join(f"{n + ' val / test':>38}" for n in names) + "   chosen")
    for label in [*labels, "macro"]:
        cells = []
        for name in names:
            r = results[name]
            val = (
                np.mean(list(r["validation"].values()))
                if label == "macro"
                else r["validation"][label]
            )
            test = np.mean(list(r["test"].values())) if label == "macro" else r["test"][label]
            cells.append(f"{val:>30.3f} / {test:.3f}")
        chosen = "" if label == "macro" else results[names[1]]["chosen"].get(label, "")
        print(f"{label:<18}" + "".join(cells) + f"   {chosen}")
    plain, chosen = (np.mean(list(results[n]["test"].values())) for n in names)
    cost = results[names[1]]["seconds"] / results[names[0]]["seconds"]
    print(f"\ntest macro PR-AUC: {plain:.4f} plain, {chosen:.4f} chosen ({chosen - plain:+.4f}); "
          f"the grid costs {cost:.1f}x the plain model's time")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
