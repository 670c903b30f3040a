"""Benchmark: serving a local champion over HTTP against scoring it in one process.

Trains two local models on synthetic data (``modfactory run``, embedded redis-server),
starts ``modfactory serve`` (real uvicorn, its own process) and sends
``POST /v1/moderations`` from this process with 1, 16 and 64 requests in flight, one
text or 32 texts per request. Prints texts/s and p50 / p99 latency per case, and the
reference: the same model scoring the same texts in this process, without HTTP, in
batches of 1 and of 32. Then promotes the other model (``modfactory promote --force``,
another process) while a client sends requests without pause, and prints the time from
the promotion to the first answer of the new champion, and whether any request failed.

    python bench/serve.py [--texts 4000] [--rows 30000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from modfactory.artifacts import ArtifactStore
from modfactory.backends.local import LocalBackend
from modfactory.data.synthetic import generate_split
from modfactory.store.embedded_redis import EmbeddedRedis, free_port

TOKEN = "bench-serve-token-0123456789abcdef0123"


def cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "modfactory", *args], env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        sys.exit(f"modfactory {' '.join(args)} failed: {done.stderr[-2000:]}")
    return done.stdout


def train_two(env: dict[str, str], rows: int) -> list[dict]:
    runs = []
    for seed in (1, 2):
        print(f"training a local model on synthetic:{rows} (trainer seed {seed})…", flush=True)
        runs.append(
            json.loads(
                cli(
                    env,
                    "run",
                    "--source",
                    f"synthetic:{rows}",
                    "-H",
                    f"seed={seed}",
                    "--worker",
                    "--json",
                )
            )
        )
    return runs


async def reference(data_dir: Path, model_id: str, texts: list[str], batch: int) -> float:
    """Texts/s of the model scoring ``texts`` in this process, ``batch`` at a time."""
    score = await LocalBackend(ArtifactStore(data_dir)).scorer(model_id)
    await score(texts[:32])  # warm
    start = time.perf_counter()
    for i in range(0, len(texts), batch):
        await score(texts[i : i + batch])
    return len(texts) / (time.perf_counter() - start)


class Connection:
    """One keep-alive HTTP/1.1 connection, as lean as a client gets (httpx spends more
    CPU per request than the server does on a single text, on the same two cores)."""

    def __init__(self, url: str) -> None:
        self.host, self.port = url.removeprefix("http://").split(":")

    async def open(self) -> Connection:
        self.reader, self.writer = await asyncio.open_connection(self.host, int(self.port))
        return self

    async def post(self, body: bytes) -> tuple[int, bytes]:
        head = (
            f"POST /v1/moderations HTTP/1.1\r\nHost: {self.host}\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        status_line = await self.reader.readline()
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        return int(status_line.split()[1]), await self.reader.readexactly(length)

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def load(
    url: str, texts: list[str], batch: int, concurrency: int
) -> tuple[float, float, float]:
    """(texts/s, p50 ms, p99 ms) of sending ``texts`` in requests of ``batch``."""
    bodies = [
        json.dumps({"input": texts[i : i + batch]}).encode() for i in range(0, len(texts), batch)
    ]
    latencies: list[float] = []
    pending = iter(bodies)
    connections = [await Connection(url).open() for _ in range(concurrency)]
    await connections[0].post(bodies[0])  # warm

    async def client(connection: Connection) -> None:
        for body in pending:
            sent = time.perf_counter()
            status, answer = await connection.post(body)
            latencies.append(time.perf_counter() - sent)
            if status != 200:
                raise SystemExit(f"HTTP {status}: {answer[:300]!r}")

    start = time.perf_counter()
    await asyncio.gather(*(client(c) for c in connections))
    took = time.perf_counter() - start
    for connection in connections:
        await connection.close()
    cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    return len(texts) / took, cuts[49] * 1000, cuts[98] * 1000


def texts_per_call(url: str) -> tuple[float, float]:
    """(scoring calls, texts scored) so far, from the server's batch histogram."""
    from prometheus_client.parser import text_string_to_metric_families

    families = text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text)
    batch = next(f for f in families if f.name == "modfactory_serve_batch_texts")
    values = {s.name: s.value for s in batch.samples}
    return values["modfactory_serve_batch_texts_count"], values["modfactory_serve_batch_texts_sum"]


async def swap(url: str, env: dict[str, str], to: str) -> tuple[float, float, int, int]:
    """Promote ``to`` while 4 clients send requests: (s from the command's start and from
    its end to the first answer by ``to``, requests sent, requests failed)."""
    seen: list[tuple[float, int, str]] = []
    stop = asyncio.Event()
    headers = {"Authorization": f"Bearer {TOKEN}"}

    async def client() -> None:
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as http:
            while not stop.is_set():
                r = await http.post("/v1/moderations", json={"input": ["a text to score"]})
                seen.append(
                    (
                        time.perf_counter(),
                        r.status_code,
                        r.headers.get("x-modfactory-champion-run", ""),
                    )
                )

    clients = [asyncio.create_task(client()) for _ in range(4)]
    await asyncio.sleep(1)
    asked = time.perf_counter()
    await asyncio.to_thread(cli, env, "promote", to, "--force")
    returned = time.perf_counter()
    while not any(run == to for _, _, run in seen):
        await asyncio.sleep(0.01)
    first = min(t for t, _, run in seen if run == to)
    await asyncio.sleep(0.5)
    stop.set()
    await asyncio.gather(*clients)
    failed = sum(1 for _, status, _ in seen if status != 200)
    return first - asked, first - returned, len(seen), failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=4000, help="texts sent per case")
    parser.add_argument("--rows", type=int, default=30000, help="synthetic rows per model")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        redis = EmbeddedRedis(Path(tmp) / "redis", fsync="everysec")
        redis_url = redis.start()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("MODFACTORY_")},
            "MODFACTORY_DATA_DIR": str(data_dir),
            "MODFACTORY_REDIS_URL": redis_url,
            "MODFACTORY_SERVE_TOKEN": TOKEN,
            "MODFACTORY_LOG_FORMAT": "json",
        }
        serve = None
        try:
            runs = train_two(env, args.rows)
            champion = json.loads(cli(env, "models", "--json"))[0]["champion"]
            other = next(r["id"] for r in runs if r["id"] != champion["run_id"])
            port = free_port()
            log = (Path(tmp) / "serve.log").open("wb")
            serve = subprocess.Popen(
                [sys.executable, "-m", "modfactory", "serve", "--port", str(port)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            url = f"http://127.0.0.1:{port}"
            for _ in range(300):
                try:
                    httpx.get(f"{url}/metrics", timeout=1)
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
            texts = generate_split(args.texts, seed=9).column("text").to_pylist()
            asyncio.run(report(url, env, data_dir, champion["model_id"], texts, other))
        finally:
            if serve is not None:
                serve.terminate()
                serve.wait(20)
            redis.stop()


async def report(
    url: str, env: dict[str, str], data_dir: Path, model_id: str, texts: list[str], other: str
) -> None:
    print(
        f"\n{len(texts):,} texts per case; server and client share this machine's "
        f"{os.cpu_count()} cores\n"
    )
    ref = {batch: await reference(data_dir, model_id, texts, batch) for batch in (1, 32)}
    print(
        f"{'case':<34}{'texts/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'vs in-process':>15}"
        f"{'texts/call':>12}"
    )
    for batch in (1, 32):
        print(
            f"{f'in-process, batches of {batch}':<34}{ref[batch]:>10,.0f}{'':>9}{'':>9}{'1.00':>15}"
        )
    for batch in (1, 32):
        for concurrency in (1, 16, 64):
            sent = texts if batch > 1 else texts[: max(500, len(texts) // 4)]
            calls_before = texts_per_call(url)
            rate, p50, p99 = await load(url, sent, batch, concurrency)
            calls = texts_per_call(url)
            per_call = (calls[1] - calls_before[1]) / max(1, calls[0] - calls_before[0])
            name = f"HTTP, {batch} text{'s' if batch > 1 else ''}/request, {concurrency} in flight"
            print(
                f"{name:<34}{rate:>10,.0f}{p50:>9.1f}{p99:>9.1f}{rate / ref[batch]:>15.2f}"
                f"{per_call:>12.1f}"
            )
    since_ask, since_return, sent, failed = await swap(url, env, other)
    print(
        f"\npromotion of {other}: first answer from it {since_ask:.2f} s after "
        f"`modfactory promote` started ({since_return:.2f} s after it returned); "
        f"{sent} requests meanwhile, {failed} failed"
    )


if __name__ == "__main__":
    main()
