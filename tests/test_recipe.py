"""The recipe's edge cases, each checked against the cookbook's own code where it runs."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from conftest import write_split_files
from cookbook import cookbook_build
from modfactory.data.build import build_dataset
from modfactory.data.recipe import RecipeError
from modfactory.data.sources import parse_source
from modfactory.fileio import atomic_output
from modfactory.values import CIVIL_COMMENTS_LABELS, RecipeParams


def comment(text: str, **scores: float) -> dict:
    return {"text": text, **{label: scores.get(label, 0.0) for label in CIVIL_COMMENTS_LABELS}}


def splits_of(rows: list[dict]) -> dict[str, list[dict]]:
    return {"train": rows, "validation": rows, "test": rows}


def stage_rows(out: Path) -> dict[str, Counter]:
    result = {}
    for split in ("train", "validation", "test"):
        lines = (out / f"{split}.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines]
        result[split] = Counter((r["text"], tuple(r["labels"]["moderation"])) for r in records)
    return result


def both(tmp_path: Path, rows: list[dict], n: int = 1000) -> tuple[dict, dict]:
    """(cookbook rows, stage rows) on the same generated source."""
    source = write_split_files(tmp_path / "src", splits_of(rows))
    files = {s: [str(source / f"{s}.jsonl")] for s in ("train", "validation", "test")}
    expected = cookbook_build("json", files, {s: n for s in files}, CIVIL_COMMENTS_LABELS)
    params = RecipeParams(n_train=n, n_validation=n, n_test=n)
    build_dataset(parse_source(str(source)), params, tmp_path / "out", tmp_path / "data")
    return {s: Counter(r) for s, r in expected.items()}, stage_rows(tmp_path / "out")


def test_every_row_flagged_matches_cookbook(tmp_path: Path) -> None:
    rows = [comment(f"bad {i}", toxicity=0.9, insult=0.8 if i % 2 else 0.1) for i in range(97)]
    rows += [comment(f"threat {i}", threat=1.0) for i in range(50)]
    expected, got = both(tmp_path, rows)
    assert got == expected
    assert all(labels != ("safe",) for labels in got["train"])


def test_label_over_the_cap_is_capped_like_the_cookbook(tmp_path: Path) -> None:
    rows = [comment(f"toxic {i}", toxicity=0.9) for i in range(300)]
    rows += [comment(f"insult {i}", insult=0.7) for i in range(100)]
    rows += [comment(f"obscene {i}", obscene=0.7) for i in range(100)]
    rows += [comment(f"fine {i}") for i in range(200)]
    expected, got = both(tmp_path, rows)
    assert got == expected
    toxic = sum(c for (_, labels), c in got["train"].items() if "toxicity" in labels)
    assert toxic == 100  # 20 % of the 500 flagged rows wanted


def test_score_of_exactly_half_is_not_a_flag(tmp_path: Path) -> None:
    rows = [comment(f"half {i}", toxicity=0.5, insult=0.5) for i in range(40)]
    rows += [comment(f"over {i}", toxicity=0.5000001) for i in range(60)]
    rows += [comment(f"clear {i}", insult=0.9) for i in range(60)]
    expected, got = both(tmp_path, rows)
    assert got == expected
    assert not any(text.startswith("half") and labels != ("safe",) for text, labels in got["test"])


def test_empty_and_very_long_texts_pass_through(tmp_path: Path) -> None:
    long_text = "word " * 20_000
    rows = [comment("", toxicity=0.9), comment(long_text, insult=0.9), comment("", obscene=0.9)]
    rows += [comment(f"ok {i}", threat=0.9) for i in range(30)]
    rows += [comment(f"safe {i}") for i in range(30)]
    expected, got = both(tmp_path, rows)
    assert got == expected
    texts = {text for text, _ in got["train"]}
    assert "" in texts and long_text in texts


def test_no_flagged_rows_is_a_clear_error(tmp_path: Path) -> None:
    source = write_split_files(
        tmp_path / "src", splits_of([comment(f"fine {i}") for i in range(50)])
    )
    with pytest.raises(RecipeError, match=r"split 'train' has no row left.*no row flagged"):
        build_dataset(parse_source(str(source)), RecipeParams(), tmp_path / "out", tmp_path / "d")
    assert not (tmp_path / "out" / "train.jsonl").exists()


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_missing_label_column_names_it_and_the_columns_found(tmp_path: Path, fmt: str) -> None:
    rows = [{"text": f"t {i}", "toxicity": 0.9, "insult": 0.1} for i in range(20)]
    source = write_split_files(tmp_path / "src", splits_of(rows), fmt)
    with pytest.raises(RecipeError) as raised:
        build_dataset(parse_source(str(source)), RecipeParams(), tmp_path / "out", tmp_path / "d")
    message = str(raised.value)
    assert "'severe_toxicity'" in message and "'train'" in message
    assert "columns found: text, toxicity, insult" in message


def test_custom_text_and_label_columns(tmp_path: Path) -> None:
    rows = [{"body": f"spam {i}", "spam": 0.9, "abuse": 0.0} for i in range(40)]
    rows += [{"body": f"ham {i}", "spam": 0.0, "abuse": 0.7} for i in range(40)]
    rows += [{"body": f"ok {i}", "spam": 0.0, "abuse": 0.0} for i in range(40)]
    source = write_split_files(tmp_path / "src", splits_of(rows))
    params = RecipeParams(
        text_column="body", label_columns=("spam", "abuse"), max_label_fraction=0.6
    )
    summary = build_dataset(parse_source(str(source)), params, tmp_path / "out", tmp_path / "d")
    assert summary.labels == ["spam", "abuse"]
    assert summary.splits["train"].labels["spam"] > 0
    assert Path(summary.chart).stat().st_size > 10_000


def test_rare_label_is_dropped_and_rows_become_safe(tmp_path: Path) -> None:
    rows = [comment(f"tox {i}", toxicity=0.9) for i in range(150)]
    rows += [comment(f"ins {i}", insult=0.9) for i in range(150)]
    rows += [comment(f"obs {i}", obscene=0.9) for i in range(150)]
    rows += [comment(f"ida {i}", identity_attack=0.9) for i in range(150)]
    rows += [comment(f"sex {i}", sexual_explicit=0.9) for i in range(150)]
    rows += [comment("rare threat", threat=0.9)]
    rows += [comment(f"fine {i}") for i in range(100)]
    expected, got = both(tmp_path, rows)
    assert got == expected
    summary = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert "threat" in summary["dropped_labels"] and "severe_toxicity" in summary["dropped_labels"]
    assert ("rare threat", ("safe",)) in got["train"]


def test_unknown_source_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="neither hf:<dataset>, synthetic"):
        parse_source(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(RecipeError, match=r"no train\* file"):
        build_dataset(
            parse_source(str(tmp_path / "empty")), RecipeParams(), tmp_path / "o", tmp_path
        )


@pytest.mark.slow
def test_two_builds_of_one_synthetic_source_at_once(tmp_path: Path) -> None:
    """Runs may generate the same synthetic source together; every one must succeed."""
    from concurrent.futures import ThreadPoolExecutor

    def build(name: str) -> dict[str, int]:
        summary = build_dataset(
            parse_source("synthetic:3000"), RecipeParams(), tmp_path / name, tmp_path / "d"
        )
        return {split: s.rows for split, s in summary.splits.items()}

    with ThreadPoolExecutor(4) as pool:
        rows = list(pool.map(build, "abcd"))
    assert rows[0] == rows[1] == rows[2] == rows[3]
    assert not list((tmp_path / "d" / "sources" / "synthetic-3000").glob(".*"))


def test_interleaved_atomic_writers_both_land_and_a_failed_one_leaves_no_trace(
    tmp_path: Path,
) -> None:
    target = tmp_path / "train.jsonl"
    with atomic_output(target) as first, atomic_output(target) as second:
        assert first != second
        first.write_text("first")
        second.write_text("second")
    assert target.read_text() == "first"  # the outer block finished last
    with pytest.raises(RuntimeError), atomic_output(target) as broken:
        broken.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["train.jsonl"]


def _kept_by_the_loop(flags, desired: int, fraction: float) -> list[int]:
    """The cookbook's per-row cap loop, literally (the reference for the vectorized one)."""
    counts = [0] * flags.shape[1]
    kept = []
    for position, row in enumerate(flags.tolist()):
        labels = [j for j, flag in enumerate(row) if flag]
        if any((counts[j] + 1) / desired > fraction for j in labels):
            continue
        kept.append(position)
        for j in labels:
            counts[j] += 1
    return kept


@pytest.mark.parametrize("seed", range(6))
def test_the_label_caps_keep_the_rows_the_cookbook_loop_keeps(seed: int) -> None:
    import numpy as np

    from modfactory.data.recipe import _under_the_caps

    rng = np.random.default_rng(seed)
    rows, labels = int(rng.integers(1, 3000)), int(rng.integers(1, 8))
    rates = rng.uniform(0.01, 0.9, labels)
    flags = rng.random((rows, labels)) < rates
    flags[~flags.any(axis=1), int(rng.integers(labels))] = True  # candidates are flagged
    for fraction in (0.05, 0.2, 1 / 3, 0.5, 1.0):
        for desired in (rows, rows + 7, max(1, rows // 2)):
            params = RecipeParams(max_label_fraction=fraction)
            keep = _under_the_caps(flags, desired, params)
            assert np.flatnonzero(keep).tolist() == _kept_by_the_loop(flags, desired, fraction)
