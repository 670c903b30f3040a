"""Benchmark: classifying the test split the cookbook's way vs the evaluate stage's way.

Against the Mistral emulator (tests/mistral_emulator.py) answering every request after
400 ms and allowing 5 requests per second (429 above), classify ``--texts`` texts
(default 1,000): first as the cookbook does, one text per request, one request after the
other; then as the evaluate stage does (batches of MODFACTORY_CLASSIFY_BATCH_SIZE,
MODFACTORY_CLASSIFY_CONCURRENCY in flight, at most MODFACTORY_CLASSIFY_RPS requests per
second). Prints both wall times, the speed-up (target: at least 50x) and the peak request rate
the emulator saw in any one second (target: never over the limit, no 429).

    python bench/evaluate.py [--texts 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from mistral_emulator import MistralEmulator, trained_model  # noqa: E402
from modfactory.artifacts import ArtifactStore, Folder, checkpoint_prefix  # noqa: E402
from modfactory.backends.mistral import MistralBackend  # noqa: E402
from modfactory.data.synthetic import generate_split  # noqa: E402
from modfactory.evaluation.classify import classify_texts  # noqa: E402
from modfactory.settings import Settings  # noqa: E402

KEY = "bench-key"
LATENCY, LIMIT = 0.4, 5


async def bench(texts_wanted: int) -> None:
    texts = generate_split(texts_wanted, seed=3).column("text").to_pylist()
    with MistralEmulator(api_key=KEY) as emulator, tempfile.TemporaryDirectory() as tmp:
        emulator.timing.validating = emulator.timing.queued = emulator.timing.step = 0.05
        settings = Settings(
            mistral_api_key=KEY,
            mistral_server_url=emulator.url,
            mistral_rps=LIMIT,
            classify_rps=None,
        )
        backend = MistralBackend(settings)
        model = await trained_model(backend, Path(tmp))
        emulator.faults.latency, emulator.faults.rate_limit = LATENCY, LIMIT

        def window() -> tuple[int, int]:
            peak, limited = emulator.peak_rate(), emulator.counts["rate_limited"]
            emulator.request_times.clear()
            emulator.counts["rate_limited"] = 0
            return peak, limited

        window()
        print(f"cookbook way: {len(texts)} requests, one after the other…", flush=True)
        start = time.perf_counter()
        for text in texts:
            await backend.classify(model, [text])
        cookbook = time.perf_counter() - start
        cookbook_peak, cookbook_429 = window()

        print("evaluate stage's way…", flush=True)
        start = time.perf_counter()
        results = await classify_texts(
            backend.classify,
            model,
            texts,
            Folder(ArtifactStore(tmp), checkpoint_prefix("bench", "test")),
            batch_size=settings.classify_batch_size,
            concurrency=settings.classify_concurrency,
        )
        stage = time.perf_counter() - start
        stage_peak, stage_429 = window()
        assert len(results) == len(texts)
        await backend.close()

    print()
    print(f"emulator: {LATENCY * 1000:.0f} ms per request, at most {LIMIT} requests/s")
    print(f"{len(texts):,} texts")
    print(f"{'procedure':<44}{'wall (s)':>10}{'peak req/s':>12}{'429s':>6}")
    rows = [
        ("cookbook: 1 text per request, sequential", cookbook, cookbook_peak, cookbook_429),
        (
            f"evaluate: batch {settings.classify_batch_size}, "
            f"{settings.classify_concurrency} in flight, {settings.mistral_rps:g}/s",
            stage,
            stage_peak,
            stage_429,
        ),
    ]
    for label, wall, peak, refused in rows:
        print(f"{label:<44}{wall:>10.1f}{peak:>12}{refused:>6}")
    speedup = cookbook / stage
    never_over = max(cookbook_peak, stage_peak) <= LIMIT and not (cookbook_429 or stage_429)
    print(
        f"speed-up: {speedup:.0f}x (target at least 50x: {'met' if speedup >= 50 else 'NOT met'})"
    )
    print(f"over the limit: {'never' if never_over else 'YES'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=1000)
    asyncio.run(bench(parser.parse_args().texts))


if __name__ == "__main__":
    main()
