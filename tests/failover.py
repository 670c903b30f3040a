"""A replicated Redis for the failover tests and ``bench/failover.py``: one primary, one
replica and three sentinels (``redis-server --sentinel``, quorum 2), real processes on
loopback. ``kill_primary`` SIGKILLs the primary and returns once the sentinels name the
replica as the new primary; the lost one is then started again as the new primary's replica
(as an orchestrator following Sentinel would), so the pair is whole again. ``stale_replica``
holds the replica's replication still (``CLIENT PAUSE WRITE`` on it), so that writes the
primary acknowledges meanwhile are lost with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis as sync_redis

from emulator_jobs import Timing
from helpers import producer_for, serve_process, settings_for, wait_until, worker_process
from mistral_emulator import MistralEmulator
from modfactory.artifacts import ArtifactStore
from modfactory.backends.local.jobs import JobRecords
from modfactory.backends.local.trainer import PAUSE_ENV
from redis_process import RedisProcess, SentinelProcess

SERVICE = "modfactory"


class ReplicatedRedis:
    """A primary, its replica and three sentinels; ``url`` is the Sentinel URL."""

    def __init__(self, work: Path, *, down_after_ms: int = 1000) -> None:
        self.servers = [RedisProcess(work / "redis-a"), RedisProcess(work / "redis-b")]
        self.servers[1].replica_of = self.servers[0].port
        # A sentinel fsyncs its state file at every change: on a busy disk that stalls it
        # past down-after-milliseconds, and it then takes a healthy primary for dead.
        shm = Path("/dev/shm")
        self._state = Path(tempfile.mkdtemp(dir=shm if shm.is_dir() else work))
        watch = {"quorum": 2, "down_after_ms": down_after_ms, "ping_period_ms": 500}
        self.sentinels = [
            SentinelProcess(self._state, self.servers[0], SERVICE, **watch) for _ in range(3)
        ]
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        self.url = f"redis+sentinel://{hosts}/{SERVICE}/0"  # url_for(db): another database
        self.failovers: list[float] = []  # seconds from each kill to a new primary named
        self.outages: list[tuple[float, float]] = []  # monotonic: killed, pair whole again

    def start(self) -> None:
        for server in self.servers:
            server.start()
        self._wait_for_replica(self.servers[1])
        for sentinel in self.sentinels:
            sentinel.start()
        deadline = time.monotonic() + 30
        while not all(self._knows_everyone(s) for s in self.sentinels):  # hello messages
            assert time.monotonic() < deadline, "the sentinels did not find each other"
            time.sleep(0.05)

    def url_for(self, db: int) -> str:
        return f"{self.url.rsplit('/', 1)[0]}/{db}"

    def stop(self) -> None:
        for process in [*self.sentinels, *self.servers]:
            process.stop()
        shutil.rmtree(self._state, ignore_errors=True)

    def _ask(self, sentinel: SentinelProcess) -> sync_redis.Redis:
        return sync_redis.Redis(port=sentinel.port, socket_timeout=2, decode_responses=True)

    def _knows_everyone(self, sentinel: SentinelProcess) -> bool:
        master = self._ask(sentinel).sentinel_master(SERVICE)
        return master["num-other-sentinels"] == 2 and master["num-slaves"] == 1

    def primary_port(self) -> int:
        """The port the sentinels name as the primary's (a majority of them)."""
        answers = []
        for sentinel in self.sentinels:
            try:
                answers.append(
                    int(self._ask(sentinel).sentinel_get_master_addr_by_name(SERVICE)[1])
                )
            except sync_redis.RedisError:
                continue
        return max(set(answers), key=answers.count)

    def primary(self) -> RedisProcess:
        port = self.primary_port()
        return next(s for s in self.servers if s.port == port)

    def replica(self) -> RedisProcess:
        port = self.primary_port()
        return next(s for s in self.servers if s.port != port)

    def kill_primary(self, *, stale_replica: bool = False) -> float:
        """SIGKILL the primary; wait until every sentinel names the replica and the replica
        answers as primary; start the lost one again as its replica. ``stale_replica``: the
        replica took nothing from the primary since ``stale_replica()`` was called (its
        pause is lifted once the primary is dead). The seconds from the kill to the new
        primary answering as one."""
        lost, heir = self.primary(), self.replica()
        lost.kill()
        killed = time.monotonic()
        if stale_replica:
            sync_redis.Redis(port=heir.port).client_unpause()
        deadline = killed + 60
        while True:
            try:
                named = {int(self._ask(s).sentinel_get_master_addr_by_name(SERVICE)[1])
                         for s in self.sentinels}  # fmt: skip
                role = sync_redis.Redis(port=heir.port, socket_timeout=2).role()[0]
            except sync_redis.RedisError:
                named, role = set(), b""
            if named == {heir.port} and role == b"master":
                break
            assert time.monotonic() < deadline, "no failover within 60 s"
            time.sleep(0.02)
        took = time.monotonic() - killed
        self.failovers.append(took)
        heir.replica_of = None
        lost.replica_of = heir.port
        lost.start()
        self._wait_for_replica(lost)
        self.outages.append((killed, time.monotonic()))
        return took

    def stale_replica(self, seconds: float = 60) -> None:
        """Hold the replica's replication still: what the primary takes from now on is on
        the primary alone (until ``kill_primary(stale_replica=True)``)."""
        sync_redis.Redis(port=self.replica().port).client_pause(int(seconds * 1000), all=False)

    @staticmethod
    def _wait_for_replica(server: RedisProcess) -> None:
        client = sync_redis.Redis(port=server.port, decode_responses=True)
        deadline = time.monotonic() + 30
        while client.info("replication").get("master_link_status") != "up":
            assert time.monotonic() < deadline, "the replica did not sync"
            time.sleep(0.02)


# --- the scenario: runs, serve and corrections through two failovers ---------------------

KEY = "sk-failover-0123456789abcdef0123"
SERVE_TOKEN = "failover-serve-token-0123456789abcdef"
REVIEW_TOKEN = "failover-review-token-0123456789abcdef"
SERVED = "moderation"  # the model serve answers with, and the one corrected


@dataclass
class FailoverReport:
    states: dict[str, str]  # run id -> state, the four runs in flight
    errors: dict[str, str]
    mistral: dict[str, int]  # jobs, starts, uploads of the Mistral run
    trainer_starts: list[int]  # per local run: leases taken to start a trainer (tries)
    trainers_ran: list[int]  # per local run: trainer processes that ran (each counts itself)
    trainers_finished: list[str]  # per local run: its trainer's last state
    moderation: Counter[int]  # status -> answers, of every request sent meanwhile
    moderation_in_outages: Counter[int]  # of those sent from a kill to the pair whole again
    corrections_accepted: int  # 202s
    corrections_refused: Counter[int]  # other statuses
    corrections_missing: list[str]  # accepted, yet not in the next build's data
    failovers: list[float]  # s from each kill to the new primary answering
    job_taken: list[float]  # s from each kill to the first run written by a job
    training_looked_at: list[float]  # s from each kill to a training job looked at again
    wall: float = 0.0
    kills_at: list[str] = field(default_factory=list)  # what was happening at each kill


def _moderate(url: str, stop: threading.Event, answers: list[tuple[float, int]]) -> None:
    """Moderation requests back to back until ``stop``: (when sent, status) each."""
    serve = {"Authorization": f"Bearer {SERVE_TOKEN}"}
    with httpx.Client(base_url=url, timeout=60) as http:
        n = 0
        while not stop.is_set():
            n += 1
            sent = time.monotonic()
            text = f"moderated comment {n}: the council vote went through"
            answer = http.post("/v1/moderations", json={"input": text}, headers=serve)
            answers.append((sent, answer.status_code))


def _correct(url: str, stop: threading.Event, accepted: list[str], refused: Counter) -> None:
    """Corrections back to back until ``stop``: the texts acknowledged (202), the statuses
    of the others."""
    review = {"Authorization": f"Bearer {REVIEW_TOKEN}"}
    with httpx.Client(base_url=url, timeout=60) as http:
        n = 0
        while not stop.is_set():
            n += 1
            text = f"corrected comment {n}: the council vote went through"
            body = {"input": text, "labels": {"toxicity": n % 2 == 0},
                    "request_id": f"failover-{n}", "reviewer": "moderator-1"}  # fmt: skip
            answer = http.post("/v1/feedback", json=body, headers=review)
            if answer.status_code == 202:
                accepted.append(text)
            else:
                refused[answer.status_code] += 1
            time.sleep(0.02)  # a moderator's pace, roughly


async def run_failover(
    work: Path,
    *,
    min_replicas: int = 1,
    rows: int = 2000,
    ha: ReplicatedRedis | None = None,
    db: int = 0,
    say=print,
) -> FailoverReport:
    """A champion trained and served; then three local runs and a Mistral run (emulator) on
    two workers while ``serve`` answers moderation requests and takes corrections; the
    primary SIGKILLed while they train and again while one evaluates; then the next build
    of the corrected model. ``ha``: a ReplicatedRedis to use (its database ``db``; else one
    is started, and stopped at the end)."""
    begin = time.monotonic()
    own = ha is None
    if ha is None:
        ha = ReplicatedRedis(work)
        ha.start()
    failovers_before = len(ha.failovers)
    emulator = MistralEmulator(api_key=KEY)
    emulator.timing = Timing(step=1.5, checkpoints=5)  # 9 s of training
    emulator.__enter__()
    settings = settings_for(
        ha.url_for(db),
        work / "data",
        source=f"synthetic:{rows}",
        local_grid="off",
        job_timeout=30,  # a look waits out a failover well inside its limit (half of this)
        worker_lease=30,  # a trainer works through 12.5 s away: a failover takes 2-3 s, or
        # about 9 s when the sentinels' first election is split (each voted for itself)
        redis_min_replicas=min_replicas,
        mistral_api_key=KEY,
        mistral_server_url=emulator.url,
        mistral_rps=50,
        classify_rps=None,
        serve_refresh_interval=0.5,
        feedback_rate=100000,
        log_format="json",
    )
    tokens = {"MODFACTORY_SERVE_TOKEN": SERVE_TOKEN, "MODFACTORY_REVIEW_TOKEN": REVIEW_TOKEN}
    slow = {PAUSE_ENV: "1.0", **tokens}  # a local trainer fits 6 candidates in about 7 s
    producer = await producer_for(settings)
    store = producer.store
    moderation: list[tuple[float, int]] = []
    accepted: list[str] = []
    refused: Counter[int] = Counter()
    stop = threading.Event()
    job_taken: list[float] = []
    looked_at: list[float] = []
    kills_at: list[str] = []
    try:
        with contextlib.ExitStack() as stack:
            for n in range(2):
                stack.enter_context(worker_process(settings, work / f"worker-{n}.log", **slow))
            _, url = stack.enter_context(serve_process(settings, work / "serve.log", **tokens))
            spec = producer.spec(model_name=SERVED, backend="local")
            champion = (await producer.submit(spec)).run
            champion = await wait_until(store, champion.id, lambda r: r.state.terminal)
            assert str(champion.state) == "succeeded", champion.error
            while (
                httpx.post(
                    f"{url}/v1/moderations",
                    json={"input": "hello"},
                    headers={"Authorization": f"Bearer {SERVE_TOKEN}"},
                    timeout=60,  # the first answer loads the champion: slow on a busy machine
                ).status_code
                != 200
            ):
                await asyncio.sleep(0.1)  # fmt: skip
            say(f"{time.monotonic() - begin:.0f} s: champion {champion.id} served")

            ids = []
            for i in range(3):
                spec = producer.spec(model_name=f"local-{i}", backend="local")
                ids.append((await producer.submit(spec)).run.id)
            spec = producer.spec(model_name="mistral-0", backend="mistral")
            mistral_id = (await producer.submit(spec)).run.id
            ids.append(mistral_id)
            traffic = [
                threading.Thread(target=_moderate, args=(url, stop, moderation), daemon=True),
                threading.Thread(target=_correct, args=(url, stop, accepted, refused), daemon=True),
            ]
            for thread in traffic:
                thread.start()

            async def kill_when(condition, what: str) -> None:
                while True:
                    runs = [await store.get(i) for i in ids]
                    if condition(runs):
                        break
                    if all(r.state.terminal for r in runs):
                        trained = {
                            r.spec.model_name: (
                                r.stages["train"].started_at, r.stages["train"].finished_at
                            )
                            for r in runs
                        }  # fmt: skip
                        raise AssertionError(f"the runs ended before {what}: trained {trained}")
                    await asyncio.sleep(0.1)
                kills_at.append("; ".join(f"{r.spec.model_name}: {r.current_stage}" for r in runs))
                seqs = {r.id: r.training.poll_seq for r in runs}
                killed_at = time.time()
                took = await asyncio.to_thread(ha.kill_primary)
                say(f"{time.monotonic() - begin:.0f} s: primary killed {what}; "
                    f"a new one in {took:.2f} s")  # fmt: skip
                taken = looked = None
                while taken is None or looked is None:
                    runs = [await store.get(i) for i in ids]
                    now = time.time() - killed_at
                    if taken is None and any(r.updated_at.timestamp() > killed_at for r in runs):
                        taken = now
                    if looked is None and any(
                        r.training.poll_seq > seqs[r.id] for r in runs
                    ):  # fmt: skip
                        looked = now
                    if all(r.state.terminal for r in runs):
                        taken, looked = taken or now, looked or now
                    await asyncio.sleep(0.02)
                job_taken.append(taken)
                looked_at.append(looked)

            def training(runs) -> bool:  # seen running by the last look at its job
                def running(run) -> bool:
                    return run.current_stage == "train" and run.training.status == "RUNNING"

                mistral = next(r for r in runs if r.id == mistral_id)
                return running(mistral) and any(running(r) for r in runs if r.id != mistral_id)

            await kill_when(training, "while the runs train")
            await kill_when(
                lambda runs: any(r.current_stage == "evaluate" for r in runs),
                "while a run evaluates",
            )
            finished = [await wait_until(store, i, lambda r: r.state.terminal, 240) for i in ids]
            stop.set()
            for thread in traffic:
                await asyncio.to_thread(thread.join, 90)
            say(f"{time.monotonic() - begin:.0f} s: the runs are over; the next build")

            spec = producer.spec(model_name=SERVED, backend="local")
            following = (await producer.submit(spec)).run
            following = await wait_until(
                store, following.id, lambda r: r.stages["build"].state == "succeeded"
                or r.state.terminal,
            )  # fmt: skip
            artifacts = ArtifactStore.from_settings(settings)
            texts: set[str] = set()
            for key in (
                following.artifacts.train_file,
                following.artifacts.live_file,
                following.artifacts.validation_file,
                following.artifacts.test_file,
            ):
                if key:
                    texts |= {
                        json.loads(line)["text"]
                        for line in artifacts.load_text(key).splitlines()
                        if line
                    }
            missing = [t for t in accepted if t not in texts]
            await producer.cancel(following.id)
    except BaseException:
        if own:
            ha.stop()  # the Redis set started here ends with the run, however it ends
        raise
    finally:
        stop.set()
        emulator.__exit__(None, None, None)

    records = JobRecords(producer.redis, settings.queue_name)
    starts, ran, finished_states = [], [], []
    for run in finished:
        if run.id == mistral_id:
            continue
        job_id = run.artifacts.training_job_id
        starts.append((await records.get(job_id)).trainer_starts)
        progress = await records.progress(job_id)
        ran.append(progress.trainer)
        finished_states.append(progress.state)
    run_of_file = {fid: f["filename"].rsplit("-", 1)[0] for fid, f in emulator.files.items()}
    mistral = {
        "jobs": sum(
            run_of_file.get(job.body["training_files"][0]["file_id"]) == mistral_id
            for job in emulator.jobs.values()
        ),
        "starts": emulator.counts["starts"],
        "uploads": sum(
            n for k, n in emulator.counts.items() if k.startswith(f"upload:{mistral_id}-")
        ),
    }
    await producer.redis.aclose()
    if own:
        ha.stop()
    return FailoverReport(
        states={r.id: str(r.state) for r in finished},
        errors={r.id: r.error or "" for r in finished if str(r.state) != "succeeded"},
        mistral=mistral,
        trainer_starts=starts,
        trainers_ran=ran,
        trainers_finished=finished_states,
        moderation=Counter(status for _, status in moderation),
        moderation_in_outages=Counter(
            status
            for sent, status in moderation
            if any(killed <= sent <= whole for killed, whole in ha.outages[failovers_before:])
        ),
        corrections_accepted=len(accepted),
        corrections_refused=refused,
        corrections_missing=missing,
        failovers=ha.failovers[failovers_before:],
        job_taken=job_taken,
        training_looked_at=looked_at,
        wall=time.monotonic() - begin,
        kills_at=kills_at,
    )
