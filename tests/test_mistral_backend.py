"""The mistral backend's error handling, call by call (real SDK, over HTTP, emulator)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mistral_emulator import MistralEmulator
from modfactory.backends.base import BackendError, BackendUnavailable, JobRequest
from modfactory.backends.mistral import MistralBackend
from modfactory.settings import Settings

KEY = "sk-unit-0123456789"


@pytest.fixture
def emulator() -> Iterator[MistralEmulator]:
    with MistralEmulator(api_key=KEY) as emulator:
        yield emulator


def backend_for(emulator: MistralEmulator, **more: object) -> MistralBackend:
    return MistralBackend(Settings(mistral_api_key=KEY, mistral_server_url=emulator.url, **more))


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
