"""The mistral backend's error handling, call by call (real SDK, over HTTP, emulator)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from mistral_emulator import MistralEmulator
from modfactory.backends.base import BackendError, BackendUnavailable, JobRequest
from modfactory.backends.mistral import MistralBackend
from modfactory.settings import Settings

KEY = "sk-unit-0123456789"


def backend_for(emulator: MistralEmulator, **more: object) -> MistralBackend:
    settings = {"mistral_retry_backoff": 0.05, **more}  # retries at test speed
    return MistralBackend(
        Settings(mistral_api_key=KEY, mistral_server_url=emulator.url, **settings)
    )


async def uploaded(backend: MistralBackend, tmp_path: Path) -> str:
    data = tmp_path / "train.jsonl"
    data.write_text('{"text": "you idiot", "labels": {"moderation": ["insult"]}}\n')
    return (await backend.upload_file(data, tag="run-unit-train")).id


async def test_429_retry_after_is_honoured_and_5xx_retried(
    emulator: MistralEmulator, tmp_path: Path
) -> None:
    backend = backend_for(emulator)
    file_id = await uploaded(backend, tmp_path)
    emulator.faults.retry_after = 0.4
    emulator.faults.next_statuses = [429, 503, 502]
    requests = emulator.counts["requests"]
    start = time.monotonic()
    job = await backend.create_job(
        JobRequest(
            model="ministral-3b-latest",
            training_file_id=file_id,
            validation_file_ids=[],
            hyperparameters={"training_steps": 10},
            suffix="mfunit",
        )
    )
    assert time.monotonic() - start >= 0.4
    assert job.status == "QUEUED"
    assert emulator.counts["requests"] - requests == 3 + 2  # three refused, then list + create
    assert emulator.counts["jobs_created"] == 1
    await backend.close()


async def test_retries_are_bounded(emulator: MistralEmulator) -> None:
    backend = backend_for(emulator, mistral_max_retries=2)
    emulator.faults.next_statuses = [503] * 10
    with pytest.raises(BackendUnavailable, match=r"get job j-1 after 3 attempts \(HTTP 503\)"):
        await backend.get_job("j-1")
    assert emulator.counts["faults"] == 3
    await backend.close()


async def test_a_slow_api_times_out_and_is_retried_a_bounded_number_of_times(
    emulator: MistralEmulator,
) -> None:
    backend = backend_for(emulator, mistral_timeout=0.3, mistral_max_retries=1)
    emulator.faults.latency = 1.0
    start = time.monotonic()
    with pytest.raises(BackendUnavailable, match=r"after 2 attempts \(ReadTimeout\)"):
        await backend.get_job("j-1")
    assert time.monotonic() - start < 5
    await backend.close()


async def test_422_names_the_field_at_fault_and_is_not_retried(
    emulator: MistralEmulator, tmp_path: Path
) -> None:
    backend = backend_for(emulator)
    file_id = await uploaded(backend, tmp_path)
    request = JobRequest(
        model="ministral-3b-latest",
        training_file_id=file_id,
        validation_file_ids=[],
        hyperparameters={"learning_rate": 5},
        suffix="mfbad",
    )
    with pytest.raises(
        BackendError,
        match=r"HTTP 422\): hyperparameters.learning_rate: 5.0 is greater than the maximum of 1",
    ) as raised:
        await backend.create_job(request)
    assert not isinstance(raised.value, BackendUnavailable)
    assert emulator.counts["jobs_created"] == 0
    assert len(emulator.invalid_requests) == 1  # the request we meant to be invalid
    emulator.invalid_requests.clear()  # (the fixture checks that no other one was sent)
    await backend.close()


async def test_a_wrong_key_is_named_and_never_shown(
    emulator: MistralEmulator, tmp_path: Path
) -> None:
    backend = MistralBackend(
        Settings(mistral_api_key="sk-not-the-key-42", mistral_server_url=emulator.url)
    )
    with pytest.raises(BackendError, match=r"HTTP 401.*MISTRAL_API_KEY") as raised:
        await backend.get_job("j-1")
    assert "sk-not-the-key-42" not in str(raised.value)
    assert emulator.counts["unauthorized"] == 1
    await backend.close()


def test_hyperparameters_are_checked_before_any_request(emulator: MistralEmulator) -> None:
    backend = backend_for(emulator)
    assert backend.hyperparameters({}) == {"training_steps": 200, "learning_rate": 5e-05}
    with pytest.raises(BackendError, match=r"training_steps=2\.5 is out of range: an integer"):
        backend.hyperparameters({"training_steps": 2.5})
    with pytest.raises(BackendError, match="no hyperparameter 'epoch'"):
        backend.hyperparameters({"epoch": 2})
    assert emulator.counts["requests"] == 0


# --- lost answers: the request was carried out, its answer never came -------------------
def job_request(file_id: str, suffix: str) -> JobRequest:
    return JobRequest(
        model="ministral-3b-latest",
        training_file_id=file_id,
        validation_file_ids=[],
        hyperparameters={"training_steps": 10},
        suffix=suffix,
    )


async def validated(backend: MistralBackend, job_id: str) -> None:
    while (await backend.get_job(job_id)).status != "VALIDATED":
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("how", ["5xx", "drop"])
async def test_an_upload_whose_answer_is_lost_is_found_not_repeated(
    emulator: MistralEmulator, tmp_path: Path, how: str
) -> None:
    backend = backend_for(emulator)
    emulator.faults.lose_how = how
    emulator.faults.lose_next["upload"] = 1
    file_id = await uploaded(backend, tmp_path)
    assert emulator.counts["answers_lost"] == 1
    assert emulator.counts["uploads"] == 1 and file_id in emulator.files
    await backend.close()


async def test_a_job_creation_whose_answer_is_lost_makes_one_job(
    emulator: MistralEmulator, tmp_path: Path
) -> None:
    backend = backend_for(emulator)
    file_id = await uploaded(backend, tmp_path)
    emulator.faults.lose_next["create_job"] = 1
    job = await backend.create_job(job_request(file_id, "mflost"))
    assert emulator.counts["answers_lost"] == 1
    assert emulator.counts["jobs_created"] == 1 and job.id in emulator.jobs
    await backend.close()


async def test_a_start_whose_answer_is_lost_or_refused_409_is_one_start(
    emulator: MistralEmulator, tmp_path: Path
) -> None:
    backend = backend_for(emulator)
    file_id = await uploaded(backend, tmp_path)
    job = await backend.create_job(job_request(file_id, "mfstart"))
    await validated(backend, job.id)
    emulator.faults.lose_next["start_job"] = 1
    started = await backend.start_job(job.id)
    assert started.status in ("QUEUED", "RUNNING") and emulator.counts["starts"] == 1
    again = await backend.start_job(job.id)  # the API answers 409: it is started already
    assert again.status in ("QUEUED", "RUNNING", "SUCCESS") and emulator.counts["starts"] == 1
    await backend.close()


async def test_cancel_is_idempotent_even_when_its_answer_is_lost(
    emulator: MistralEmulator, tmp_path: Path
) -> None:
    backend = backend_for(emulator)
    file_id = await uploaded(backend, tmp_path)
    job = await backend.create_job(job_request(file_id, "mfcancel"))
    emulator.faults.lose_next["cancel_job"] = 1
    assert (await backend.cancel_job(job.id)).status == "CANCELLED"
    assert (await backend.cancel_job(job.id)).status == "CANCELLED"
    assert emulator.counts["cancels"] == 1
    await backend.close()


@pytest.mark.slow
async def test_twenty_runs_worth_of_side_effects_at_30_percent_lost_answers_happen_once_each(
    emulator: MistralEmulator, tmp_path: Path
) -> None:
    """Upload train + validation, create, start — 20 times at once, 30 % of all answers
    lost after the work was done (5xx or a dropped connection): 40 files, 20 jobs, 20 starts."""
    backend = backend_for(emulator, mistral_rps=None, mistral_max_retries=10)
    emulator.faults.lose_rate = 0.3

    async def one_run(i: int) -> None:
        ids = []
        for split in ("train", "validation"):
            data = tmp_path / f"{i}-{split}.jsonl"
            data.write_text(f'{{"text": "row {i}", "labels": {{"moderation": ["insult"]}}}}\n')
            ids.append((await backend.upload_file(data, tag=f"run-{i}-{split}")).id)
        job = await backend.create_job(job_request(ids[0], f"mfrun{i}"))
        await validated(backend, job.id)
        await backend.start_job(job.id)

    await asyncio.gather(*(one_run(i) for i in range(20)))
    assert emulator.counts["answers_lost"] >= 20
    assert emulator.counts["uploads"] == 40
    assert sorted(n for k, n in emulator.counts.items() if k.startswith("upload:")) == [1] * 40
    assert (emulator.counts["jobs_created"], emulator.counts["starts"]) == (20, 20)
    await backend.close()


async def test_a_job_status_the_sdk_does_not_know_is_kept_as_it_is(
    emulator: MistralEmulator, tmp_path: Path
) -> None:
    backend = backend_for(emulator)
    file_id = await uploaded(backend, tmp_path)
    job = await backend.create_job(job_request(file_id, "mfodd"))
    emulator.faults.odd_status = "PAUSED_FOR_MAINTENANCE"
    seen = await backend.get_job(job.id)
    assert seen.status == "PAUSED_FOR_MAINTENANCE" and not seen.known and not seen.terminal
    await backend.close()


@pytest.mark.slow
async def test_a_batch_job_is_created_once_whatever_its_answers_and_reads_as_classify(
    emulator: MistralEmulator, tmp_path: Path
) -> None:
    from mistral_emulator import trained_model

    backend = backend_for(emulator)
    model = await trained_model(backend, tmp_path, suffix="mfbatch")
    requests = [["you stupid idiot", "the council met"], ["idiot"], ["a calm day"]]
    metadata = {"modfactory_score": "score-unit", "shard": "0"}
    emulator.faults.lose_next.update({"upload": 1, "create_batch": 1})
    emulator.faults.lose_rate = 0.3
    job = await backend.submit_batch(model, requests, "score-unit-00000", metadata)
    again = await backend.submit_batch(model, requests, "score-unit-00000", metadata)
    assert again.id == job.id
    assert emulator.counts["batch_jobs_created"] == 1
    assert emulator.counts["upload:score-unit-00000.jsonl"] == 1
    other = await backend.submit_batch(
        model, requests, "score-unit-00001", {**metadata, "shard": "1"}
    )
    assert other.id != job.id and emulator.counts["batch_jobs_created"] == 2
    while not job.terminal:
        await asyncio.sleep(0.05)
        job = await backend.get_batch(job.id)
    assert job.status == "SUCCESS" and job.total_requests == 3
    results = await backend.batch_results(job)
    emulator.faults.lose_rate = 0
    assert results == [await backend.classify(model, texts) for texts in requests]
    cancelled = await backend.cancel_batch(other.id)
    assert cancelled.status in ("CANCELLED", "SUCCESS")
    assert (await backend.cancel_batch(other.id)).status == cancelled.status
    assert emulator.counts["answers_lost"] > 0
    await backend.close()


@pytest.mark.slow
async def test_a_batch_request_that_failed_is_named(
    emulator: MistralEmulator, tmp_path: Path
) -> None:
    backend = backend_for(emulator)
    job = await backend.submit_batch("ft:classifier:nope", [["hello"]], "score-x-00000", {"s": "1"})
    while not job.terminal:
        await asyncio.sleep(0.05)
        job = await backend.get_batch(job.id)
    with pytest.raises(BackendError, match=r"request 0 failed: model not found"):
        await backend.batch_results(job)
    await backend.close()


@pytest.mark.slow
async def test_the_emulator_holds_batch_requests_to_the_spec(
    emulator: MistralEmulator, tmp_path: Path
) -> None:
    """What the backend must not send is refused as the API would: a metadata key over 32
    characters (422), and an input line whose body is no classification request."""
    backend = backend_for(emulator)
    with pytest.raises(BackendError, match=r"HTTP 422\): metadata: .* is too long"):
        await backend.submit_batch("ft:classifier:x", [["hi"]], "score-y-00000", {"k" * 33: "v"})
    assert emulator.counts["batch_jobs_created"] == 0
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"custom_id": "0", "body": {"inputs": ["hi"]}}\n')
    uploaded_file = await backend._upload(bad, "bad.jsonl", "batch")
    job = await backend.client.batch.jobs.get_async(
        job_id=(
            await backend.client.batch.jobs.create_async(
                input_files=[uploaded_file.id], endpoint="/v1/classifications", model="m"
            )
        ).id
    )
    while job.status not in ("SUCCESS", "FAILED"):
        await asyncio.sleep(0.05)
        job = await backend.client.batch.jobs.get_async(job_id=job.id)
    assert job.failed_requests == 1
    assert len(emulator.invalid_requests) == 2 and "line 0" in emulator.invalid_requests[1]
    emulator.invalid_requests.clear()  # the requests we meant to be invalid
    await backend.close()
