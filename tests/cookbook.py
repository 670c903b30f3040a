"""The cookbook's dataset code, as written in the tutorial, as a test oracle.

Only what the tutorial hard-codes is made a parameter (source, split sizes, label columns);
the shuffle / take / convert / filter / drop / JSONL steps are the tutorial's own code.
"""

from __future__ import annotations

import random

import datasets
import pandas as pd
from datasets import load_dataset

from modfactory.data.sources import STREAM_END_PAUSE

# Not the tutorial's, and no change to its rows: without it each stream's end waits 5 s.
datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = STREAM_END_PAUSE


def cookbook_build(
    builder: str,
    data_files: dict[str, list[str]],
    n: dict[str, int],
    labels: tuple[str, ...],
    seed: int = 42,
) -> dict[str, list[tuple[str, tuple[str, ...]]]]:
    """Per split, the (text, labels) rows the cookbook would write to JSONL."""
    dataset = {
        split: load_dataset(builder, data_files={split: files}, streaming=True)[split]
        for split, files in data_files.items()
    }

    def convert_scores_to_booleans(example, threshold=0.5):
        return {"text": example["text"], **{key: example[key] > threshold for key in labels}}

    samples = {
        split: [
            convert_scores_to_booleans(example)
            for example in dataset[split].shuffle(seed=seed, buffer_size=n[split]).take(n[split])
        ]
        for split in ("train", "validation", "test")
    }

    def filter_dataset(samples, zero_flags_percentage=0.1, max_percentage=0.2):
        zero_flags_samples = []
        non_zero_flags_samples = []
        label_counts = {key: 0 for key in samples[0] if key != "text"}

        for example in samples:
            if not any(example[key] for key in example if key != "text"):
                zero_flags_samples.append(example)
            else:
                non_zero_flags_samples.append(example)

        total_samples = len(non_zero_flags_samples) / (1 - zero_flags_percentage)
        desired_zero_flags = int(total_samples * zero_flags_percentage)
        desired_non_zero_flags = int(total_samples * (1 - zero_flags_percentage))

        zero_flags_samples = zero_flags_samples[:desired_zero_flags]
        filtered_samples = []

        for example in non_zero_flags_samples[:desired_non_zero_flags]:
            add_sample = True
            for key in label_counts:
                if example[key]:  # noqa: SIM102 - the cookbook's code, verbatim
                    if (label_counts[key] + 1) / desired_non_zero_flags > max_percentage:
                        add_sample = False
                        break

            if add_sample:
                filtered_samples.append(example)
                for key in label_counts:
                    if example[key]:
                        label_counts[key] += 1

        filtered_samples += zero_flags_samples
        random.shuffle(filtered_samples)
        return filtered_samples

    train_samples = filter_dataset(samples["train"])
    validation_samples = filter_dataset(samples["validation"])
    test_samples = filter_dataset(samples["test"])

    all_samples = train_samples + validation_samples + test_samples
    all_df = pd.DataFrame(all_samples)
    label_percentages = all_df.drop(columns=["text"]).mean()
    labels_to_remove = label_percentages[label_percentages < 0.01].index.tolist()

    frames = {
        "train": pd.DataFrame(train_samples).drop(columns=labels_to_remove),
        "validation": pd.DataFrame(validation_samples).drop(columns=labels_to_remove),
        "test": pd.DataFrame(test_samples).drop(columns=labels_to_remove),
    }

    def dataset_to_rows(dataset):
        possible_categories = [col for col in dataset.columns if col != "text"]
        rows = []
        for _, row in dataset.iterrows():
            text = row["text"]
            row_labels = [category for category in possible_categories if row[category]]
            if len(row_labels) == 0:
                row_labels = ["safe"]
            rows.append((text, tuple(row_labels)))
        return rows

    return {split: dataset_to_rows(frame) for split, frame in frames.items()}
