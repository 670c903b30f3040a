"""A Mistral API emulator on loopback, following ``mistral-openapi.yaml`` (Mistral's spec).

Serves what modfactory uses: files (upload, list, get, download), fine-tuning jobs (list,
create, get, start, cancel) with a time-driven status progression and checkpoints,
classifications, and batch jobs on ``/v1/classifications`` (list by metadata, create, get,
cancel; each input line checked against the spec when the job runs, the output file
written as the API does). Every request is validated against the spec's request schema (bodies,
query parameters, multipart fields); an invalid one is answered 422 *and* recorded in
``invalid_requests``, which tests assert stays empty. Faults can be injected *before* a
request is carried out (a share answered 429 with Retry-After or 503, forced statuses)
or *after* it (``lose_rate`` / ``lose_next``: the request is executed, then its answer is
lost — a 5xx or a dropped connection, as a proxy timeout or a network cut does), plus
slow responses, FAILED_VALIDATION, FAILED, statuses the SDK does not know, a rejected
key, and hooks that run just before a response is sent (to kill a worker between a
request and its answer). ``counts`` tallies what cost money.

This module is the server and its faults; the checks against the spec are in
``emulator_spec``, the jobs' timeline and the models' answers in ``emulator_jobs``.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import random
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from emulator_jobs import (
    BatchRun,
    Job,
    Timing,
    batch_status,
    batch_view,
    job_view,
    moderation_scores,
    naive_bayes,
)
from emulator_spec import SpecChecker

_LOCK = threading.RLock()  # re-entrant: answers are sent (and counted) under it too


@dataclass
class Faults:
    """What goes wrong, and how often."""

    rate: float = 0.0  # share of requests answered 429 or 503 instead
    next_statuses: list[int] = field(default_factory=list)  # answers for the next requests
    rate_limit: float | None = None  # requests per second over any 1 s window; above: 429
    fail_classify_after: int | None = None  # classify answers 400 after this many successes
    retry_after: float = 0.05  # seconds, sent with each 429
    latency: float = 0.0  # seconds added to every response
    fail_validation: str | None = None  # jobs end FAILED_VALIDATION with this message
    fail_training: str | None = None  # jobs end FAILED with this message
    lose_rate: float = 0.0  # share of requests executed whose answer is then lost
    lose_next: Counter[str] = field(default_factory=Counter)  # route -> answers to lose
    lose_how: str = "mixed"  # "5xx", "drop" (connection closed, no answer) or "mixed"
    odd_status: str | None = None  # job GETs answer this status (one the SDK does not know)
    echo_next: Counter[str] = field(default_factory=Counter)  # route -> 400s quoting the request
    seed: int = 1
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)


class MistralEmulator:
    """``with MistralEmulator() as emulator:`` serves on ``emulator.url``."""

    def __init__(self, api_key: str = "test-key", quote: float = 6.56) -> None:
        self.api_key = api_key
        self.quote = quote
        self.faults = Faults()
        self.timing = Timing()
        self.files: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, Job] = {}
        self.batches: dict[str, BatchRun] = {}
        self.counts: Counter[str] = Counter()
        self.invalid_requests: list[str] = []
        self.hooks: dict[str, Callable[[dict[str, Any]], None]] = {}
        self.request_times: list[float] = []
        self.classified_batches: Counter[tuple[str, ...]] = Counter()
        self.spec = SpecChecker()
        self._server = _QuietServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(  # a 50 ms poll: shut down at once, not in 0.5 s
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> MistralEmulator:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def peak_rate(self) -> int:
        """The most requests that arrived within any one second."""
        times = sorted(self.request_times)
        peak, start = 0, 0
        for end, t in enumerate(times):
            while t - times[start] >= 1.0:
                start += 1
            peak = max(peak, end - start + 1)
        return peak

    # --- validation against the spec ------------------------------------------------------
    # --- state -------------------------------------------------------------------------------
    def job_json(self, job: Job, detailed: bool = True) -> dict[str, Any]:
        """The job as the API shows it now."""
        return job_view(
            job,
            self.timing,
            quote=self.quote,
            fail_validation=self.faults.fail_validation,
            fail_training=self.faults.fail_training,
            detailed=detailed,
        )

    def classify(self, model: str, texts: list[str]) -> list[dict[str, Any]] | None:
        """Naive Bayes over the job's training file: a real, if small, classifier."""
        job = next(
            (j for j in self.jobs.values() if self.job_json(j, False)["fine_tuned_model"] == model),
            None,
        )
        if job is None:
            return None
        nb = self.files[job.body["training_files"][0]["file_id"]].setdefault(
            "nb", naive_bayes(self.files[job.body["training_files"][0]["file_id"]]["content"])
        )
        return [{"moderation": {"scores": nb(text)}} for text in texts]

    def batch_json(self, run: BatchRun) -> dict[str, Any]:
        """The batch job as the API shows it now; its output file is written (once) when
        it has run."""
        with _LOCK:
            status, completed = batch_status(run, self.timing, time.time())
            if status == "SUCCESS" and run.output_file is None:
                self._write_batch_output(run)
            return batch_view(run, status, completed)

    def _write_batch_output(self, run: BatchRun) -> None:
        """Each input line carried out as its endpoint would (``/v1/classifications``),
        its body checked against the spec; the answers written to the output file."""
        model = run.body.get("model")
        out = []
        for file_id in run.body.get("input_files") or []:
            for number, line in enumerate(self.files[file_id]["content"].decode().splitlines()):
                if not line.strip():
                    continue
                request = json.loads(line)
                errors = self.spec.check_body("BatchRequest", request)
                body = {"model": model, **request.get("body", {})}
                errors += self.spec.check_body("ClassificationRequest", body)
                custom_id = request.get("custom_id", str(number))
                if errors:
                    self.invalid_requests.append(f"batch {run.id} line {number}: {errors}")
                    run.failed += 1
                    out.append({"custom_id": custom_id, "error": {"message": str(errors)}})
                    continue
                texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
                results = self.classify(body["model"], texts)
                if results is None:
                    run.failed += 1
                    response = {"status_code": 404, "body": {"message": "model not found"}}
                else:
                    self.counts["batch_texts"] += len(texts)
                    answer = {"id": uuid.uuid4().hex, "model": body["model"], "results": results}
                    response = {"status_code": 200, "body": answer}
                out.append(
                    {
                        "id": uuid.uuid4().hex,
                        "custom_id": custom_id,
                        "response": response,
                        "error": None,
                    }
                )
        content = "".join(json.dumps(row) + "\n" for row in out).encode()
        file_id = str(uuid.uuid4())
        self.files[file_id] = {
            "id": file_id,
            "object": "file",
            "bytes": len(content),
            "created_at": int(time.time()),
            "filename": f"{run.id}.jsonl",
            "purpose": "batch",
            "sample_type": "batch_result",
            "num_lines": len(out),
            "mimetype": "application/jsonl",
            "source": "mistral",
            "signature": None,
            "content": content,
        }
        run.output_file = file_id


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up (a timeout under test) is not an emulator error."""
        import sys

        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


ROUTES = [  # (method, path pattern, the spec's path, handler: ``_<name>``)
    ("post", r"/v1/files", "/v1/files", "upload"),
    ("get", r"/v1/files", "/v1/files", "list_files"),
    ("get", r"/v1/files/(?P<id>[^/]+)", "/v1/files/{file_id}", "get_file"),
    ("get", r"/v1/files/(?P<id>[^/]+)/content", "/v1/files/{file_id}/content", "download"),
    ("get", r"/v1/fine_tuning/jobs", "/v1/fine_tuning/jobs", "list_jobs"),
    ("post", r"/v1/fine_tuning/jobs", "/v1/fine_tuning/jobs", "create_job"),
    ("get", r"/v1/fine_tuning/jobs/(?P<id>[^/]+)", "/v1/fine_tuning/jobs/{job_id}", "get_job"),
    (
        "post",
        r"/v1/fine_tuning/jobs/(?P<id>[^/]+)/start",
        "/v1/fine_tuning/jobs/{job_id}/start",
        "start_job",
    ),
    (
        "post",
        r"/v1/fine_tuning/jobs/(?P<id>[^/]+)/cancel",
        "/v1/fine_tuning/jobs/{job_id}/cancel",
        "cancel_job",
    ),
    ("get", r"/v1/batch/jobs", "/v1/batch/jobs", "list_batches"),
    ("post", r"/v1/batch/jobs", "/v1/batch/jobs", "create_batch"),
    ("get", r"/v1/batch/jobs/(?P<id>[^/]+)", "/v1/batch/jobs/{job_id}", "get_batch"),
    (
        "post",
        r"/v1/batch/jobs/(?P<id>[^/]+)/cancel",
        "/v1/batch/jobs/{job_id}/cancel",
        "cancel_batch",
    ),
    ("post", r"/v1/classifications", "/v1/classifications", "classify"),
    ("post", r"/v1/moderations", "/v1/moderations", "moderate"),
]


def _handler(emulator: MistralEmulator) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go in two writes
        _lose = False  # lose this request's answer (it is carried out all the same)

        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def _send(
            self,
            status: int,
            body: Any,
            headers: dict[str, str] | None = None,
            *,
            raw: bytes | None = None,
        ) -> None:
            if self._lose:  # the request was carried out; its answer never arrives
                self._lose = False
                with _LOCK:
                    emulator.counts["answers_lost"] += 1
                    how = emulator.faults.lose_how
                    if how == "mixed":
                        how = emulator.faults.rng.choice(["5xx", "drop"])
                    lost_status = emulator.faults.rng.choice([500, 502, 503, 504])
                if how == "drop":
                    self.close_connection = True
                    return
                status, body, headers = lost_status, {"message": "upstream timed out"}, {}
                raw = None
            data = json.dumps(body).encode() if raw is None else raw
            self.send_response(status)
            self.send_header(
                "content-type", "application/json" if raw is None else "application/octet-stream"
            )
            self.send_header("content-length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def _invalid(self, errors: list[str]) -> None:
            emulator.invalid_requests.append(f"{self.command} {self.path}: {errors}")
            detail = []
            for error in errors:
                where, _, message = error.partition(": ")
                detail.append(
                    {"loc": ["body", *where.split(".")], "msg": message, "type": "value_error"}
                )
            self._send(422, {"object": "error", "detail": detail})

        def do_GET(self) -> None:
            self._route("get")

        def do_POST(self) -> None:
            self._route("post")

        def _route(self, method: str) -> None:
            arrived = time.monotonic()  # as a rate limiter in front of an API sees it
            self._lose = False
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            if len(raw) < length:  # the client gave up mid-request (a cancelled call)
                self.close_connection = True
                return
            if self._refused_up_front(arrived):
                return
            url = urlparse(self.path)
            query = parse_qs(url.query)
            for verb, pattern, spec_path, name in ROUTES:
                match = re.fullmatch(pattern, url.path)
                if verb == method and match:
                    errors = emulator.spec.check_query(spec_path, method, query)
                    if errors:
                        return self._invalid(errors)
                    if self._echoed_or_marked_lost(name, raw):
                        return
                    return getattr(self, f"_{name}")(raw, query, **match.groupdict())
            self._send(404, {"message": f"no route {method.upper()} {url.path}"})

        def _refused_up_front(self, arrived: float) -> bool:
            """Answer what is refused before any work: the rate limit, a wrong key,
            injected 429s and 503s. True when answered."""
            faults = emulator.faults
            with _LOCK:
                emulator.counts["requests"] += 1
                emulator.request_times.append(arrived)
                recent = emulator.request_times[-int(faults.rate_limit or 0) - 2 :]
                over = faults.rate_limit is not None and (
                    sum(1 for t in recent if arrived - t < 1.0) > faults.rate_limit
                )
            if over:
                emulator.counts["rate_limited"] += 1
                self._send(429, {"message": "rate limit"}, {"retry-after": "1"})
                return True
            if faults.latency:
                time.sleep(faults.latency)
            if self.headers.get("authorization") != f"Bearer {emulator.api_key}":
                emulator.counts["unauthorized"] += 1
                self._send(401, {"message": "Unauthorized", "request_id": uuid.uuid4().hex})
                return True
            with _LOCK:
                roll = faults.rng.random()
                forced = faults.next_statuses.pop(0) if faults.next_statuses else None
            retry_after = {"retry-after": str(faults.retry_after)}
            if forced is not None:
                emulator.counts["faults"] += 1
                self._send(
                    forced, {"message": f"injected {forced}"}, retry_after if forced == 429 else {}
                )
                return True
            if roll < faults.rate:
                emulator.counts["faults"] += 1
                if roll < faults.rate / 2:
                    self._send(429, {"message": "Requests rate limit exceeded"}, retry_after)
                else:
                    self._send(503, {"message": "Service unavailable"})
                return True
            return False

        def _echoed_or_marked_lost(self, name: str, raw: bytes) -> bool:
            """An error page quoting the request (answered: True), or this request's answer
            marked to be lost once it is carried out."""
            with _LOCK:
                faults = emulator.faults
                if faults.echo_next[name] > 0:  # a careless API or proxy's error page
                    faults.echo_next[name] -= 1
                    quoted = {
                        "authorization": self.headers.get("authorization"),
                        "body": raw.decode(errors="replace")[:4000],
                    }
                    self._send(400, {"message": f"bad request {quoted}"})
                    return True
                if faults.lose_next[name] > 0:
                    faults.lose_next[name] -= 1
                    self._lose = True
                elif faults.lose_rate and faults.rng.random() < faults.lose_rate:
                    self._lose = True
            return False

        def _json_body(self, raw: bytes, schema: str) -> Any:
            try:
                body = json.loads(raw)
            except ValueError:
                self._invalid(["body is not JSON"])
                return None
            errors = emulator.spec.check_body(schema, body)
            if errors:
                self._invalid(errors)
                return None
            return body

        def _hook(self, name: str, payload: dict[str, Any]) -> None:
            hook = emulator.hooks.get(name)
            if hook:
                hook(payload)

        # --- files ---
        def _upload(self, raw: bytes, query: dict[str, list[str]]) -> None:
            content_type = self.headers.get("content-type", "")
            if not content_type.startswith("multipart/form-data"):
                return self._invalid([f"content-type {content_type!r} is not multipart/form-data"])
            message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                f"content-type: {content_type}\r\n\r\n".encode() + raw
            )
            fields, file_part = {}, None
            for part in message.iter_parts():
                name = part.get_param("name", header="content-disposition")
                if name == "file":
                    file_part = part
                else:
                    fields[name] = (
                        part.get_content().strip()
                        if isinstance(part.get_content(), str)
                        else part.get_content().decode()
                    )
            errors = [] if file_part is not None else ["file: required"]
            unknown = set(fields) - emulator.spec.upload_fields()
            errors += [f"{name}: unknown field" for name in unknown]
            if "purpose" in fields:
                errors += emulator.spec.check_body("FilePurpose", fields["purpose"])
            if errors:
                return self._invalid(errors)
            content = file_part.get_payload(decode=True)
            file_id = str(uuid.uuid4())
            record = {
                "id": file_id,
                "object": "file",
                "bytes": len(content),
                "created_at": int(time.time()),
                "filename": file_part.get_filename(),
                "purpose": fields.get("purpose", "fine-tune"),
                "sample_type": "instruct",
                "num_lines": content.count(b"\n"),
                "mimetype": "application/jsonl",
                "source": "upload",
                "signature": None,
            }
            with _LOCK:
                emulator.files[file_id] = {**record, "content": content}
                emulator.counts["uploads"] += 1
                emulator.counts[f"upload:{record['filename']}"] += 1
            self._hook("upload", record)
            self._send(200, record)

        def _list_files(self, raw: bytes, query: dict[str, list[str]]) -> None:
            search = query.get("search", [""])[0]
            purpose = query.get("purpose", [None])[0]
            data = [
                {k: v for k, v in f.items() if k not in ("content", "nb")}
                for f in emulator.files.values()
                if search in f["filename"] and (purpose is None or f["purpose"] == purpose)
            ]
            self._send(200, {"data": data, "object": "list", "total": len(data)})

        def _get_file(self, raw: bytes, query: dict[str, list[str]], id: str) -> None:
            f = emulator.files.get(id)
            if f is None:
                return self._send(404, {"message": f"file {id} not found"})
            self._send(
                200, {k: v for k, v in f.items() if k not in ("content", "nb")} | {"deleted": False}
            )

        def _download(self, raw: bytes, query: dict[str, list[str]], id: str) -> None:
            f = emulator.files.get(id)
            if f is None:
                return self._send(404, {"message": f"file {id} not found"})
            with _LOCK:
                emulator.counts["downloads"] += 1
            self._send(200, None, raw=f["content"])

        # --- batch jobs ---
        def _list_batches(self, raw: bytes, query: dict[str, list[str]]) -> None:
            wanted = emulator.spec.exploded_members("/v1/batch/jobs", "get", query)
            model = query.get("model", [None])[0]
            page = int(query.get("page", ["0"])[0])
            size = int(query.get("page_size", ["100"])[0])
            found = [
                emulator.batch_json(run)
                for run in sorted(emulator.batches.values(), key=lambda r: -r.created)
                if (model is None or run.body.get("model") == model)
                and all((run.body.get("metadata") or {}).get(k) == v for k, v in wanted.items())
            ]
            data = found[page * size : (page + 1) * size]
            self._send(200, {"data": data, "object": "list", "total": len(found)})

        def _create_batch(self, raw: bytes, query: dict[str, list[str]]) -> None:
            body = self._json_body(raw, "BatchJobIn")
            if body is None:
                return
            files = body.get("input_files") or []
            missing = [f for f in files if f not in emulator.files]
            if missing:
                return self._send(404, {"message": f"file {missing[0]} not found"})
            if body["endpoint"] != "/v1/classifications" or not files:
                return self._send(400, {"message": "the emulator runs classification batches"})
            lines = sum(
                1 for f in files for line in emulator.files[f]["content"].splitlines() if line
            )
            run = BatchRun(body, lines)
            with _LOCK:
                emulator.batches[run.id] = run
                emulator.counts["batch_jobs_created"] += 1
            self._hook("create_batch", {"id": run.id})
            self._send(200, emulator.batch_json(run))

        def _batch_or_404(self, id: str) -> BatchRun | None:
            run = emulator.batches.get(id)
            if run is None:
                self._send(404, {"message": f"batch job {id} not found"})
            return run

        def _get_batch(self, raw: bytes, query: dict[str, list[str]], id: str) -> None:
            run = self._batch_or_404(id)
            if run is not None:
                out = emulator.batch_json(run)
                self._hook("get_batch", out)
                self._send(200, out)

        def _cancel_batch(self, raw: bytes, query: dict[str, list[str]], id: str) -> None:
            run = self._batch_or_404(id)
            if run is None:
                return
            with _LOCK:
                if emulator.batch_json(run)["status"] in ("QUEUED", "RUNNING"):
                    run.cancelled = time.time()
                    emulator.counts["batch_cancels"] += 1
            self._send(200, emulator.batch_json(run))

        # --- jobs ---
        def _list_jobs(self, raw: bytes, query: dict[str, list[str]]) -> None:
            suffix = query.get("suffix", [None])[0]
            data = [
                emulator.job_json(j, detailed=False)
                for j in emulator.jobs.values()
                if suffix is None or j.body.get("suffix") == suffix
            ]
            self._send(200, {"data": data, "object": "list", "total": len(data)})

        def _create_job(self, raw: bytes, query: dict[str, list[str]]) -> None:
            body = self._json_body(raw, "JobIn")
            if body is None:
                return
            missing = [
                f["file_id"]
                for f in body.get("training_files", [])
                if f["file_id"] not in emulator.files
            ]
            missing += [f for f in body.get("validation_files") or [] if f not in emulator.files]
            if missing:
                return self._send(404, {"message": f"file {missing[0]} not found"})
            content = emulator.files[body["training_files"][0]["file_id"]]["content"]
            rows = [json.loads(line) for line in content.decode().splitlines() if line.strip()]
            labels = sorted({label for r in rows for label in r["labels"]["moderation"]})
            job = Job(body, labels, len(rows))
            with _LOCK:
                emulator.jobs[job.id] = job
                emulator.counts["jobs_created"] += 1
            self._hook("create_job", {"id": job.id})
            self._send(200, emulator.job_json(job, detailed=False))

        def _job_or_404(self, id: str) -> Job | None:
            job = emulator.jobs.get(id)
            if job is None:
                self._send(404, {"message": f"job {id} not found"})
            return job

        def _get_job(self, raw: bytes, query: dict[str, list[str]], id: str) -> None:
            job = self._job_or_404(id)
            if job is not None:
                out = emulator.job_json(job)
                if emulator.faults.odd_status:
                    out["status"] = emulator.faults.odd_status
                self._hook("get_job", out)
                self._send(200, out)

        def _start_job(self, raw: bytes, query: dict[str, list[str]], id: str) -> None:
            job = self._job_or_404(id)
            if job is None:
                return
            with _LOCK:
                status = emulator.job_json(job, False)["status"]
                if status != "VALIDATED":
                    return self._send(409, {"message": f"job {id} is {status}, not VALIDATED"})
                job.started = time.time()
                emulator.counts["starts"] += 1
            self._hook("start_job", {"id": id})
            self._send(200, emulator.job_json(job))

        def _cancel_job(self, raw: bytes, query: dict[str, list[str]], id: str) -> None:
            job = self._job_or_404(id)
            if job is None:
                return
            with _LOCK:
                if job.cancelled is None and emulator.job_json(job, False)["status"] not in (
                    "SUCCESS",
                    "FAILED",
                    "FAILED_VALIDATION",
                ):
                    job.cancelled = time.time()
                    emulator.counts["cancels"] += 1
            self._send(200, emulator.job_json(job))

        def _classify(self, raw: bytes, query: dict[str, list[str]]) -> None:
            body = self._json_body(raw, "ClassificationRequest")
            if body is None:
                return
            texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
            after = emulator.faults.fail_classify_after
            if after is not None and emulator.counts["classify_requests"] >= after:
                return self._send(400, {"message": "injected classify failure"})
            results = emulator.classify(body["model"], texts)
            if results is None:
                return self._send(404, {"message": f"model {body['model']} not found"})
            with _LOCK:
                emulator.counts["classify_requests"] += 1
                emulator.counts["classified_texts"] += len(texts)
                emulator.classified_batches[tuple(texts)] += 1
            self._send(200, {"id": uuid.uuid4().hex, "model": body["model"], "results": results})

        def _moderate(self, raw: bytes, query: dict[str, list[str]]) -> None:
            body = self._json_body(raw, "ClassificationRequest")
            if body is None:
                return
            texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
            results = []
            for text in texts:
                scores = moderation_scores(text)
                categories = {category: score > 0.5 for category, score in scores.items()}
                results.append({"categories": categories, "category_scores": scores})
            with _LOCK:
                emulator.counts["moderation_requests"] += 1
            self._send(200, {"id": uuid.uuid4().hex, "model": body["model"], "results": results})

    return Handler


async def trained_model(backend: Any, work: Path, suffix: str = "mftest") -> str:
    """Train a tiny classifier on the emulator through ``backend`` (a MistralBackend);
    returns its model id. The emulator's timings make this take about a second."""
    import asyncio

    from modfactory.backends.base import JobRequest

    data = work / "train.jsonl"
    data.write_text(
        '{"text": "you stupid idiot", "labels": {"moderation": ["insult", "toxicity"]}}\n'
        '{"text": "the council met today", "labels": {"moderation": ["safe"]}}\n'
    )
    file_id = (await backend.upload_file(data, tag=f"{suffix}-train")).id
    job = await backend.create_job(
        JobRequest(
            model="ministral-3b-latest",
            training_file_id=file_id,
            validation_file_ids=[],
            hyperparameters={"training_steps": 10},
            suffix=suffix,
        )
    )
    while job.status != "VALIDATED":
        await asyncio.sleep(0.05)
        job = await backend.get_job(job.id)
    await backend.start_job(job.id)
    while job.status != "SUCCESS":
        await asyncio.sleep(0.05)
        job = await backend.get_job(job.id)
    return job.fine_tuned_model


def main() -> None:
    """``python tests/mistral_emulator.py --key K``: serve until killed; prints the URL."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--key", default="test-key")
    parser.add_argument("--quote", type=float, default=6.56)
    parser.add_argument("--validating", type=float, default=Timing.validating)
    parser.add_argument("--queued", type=float, default=Timing.queued)
    parser.add_argument("--step", type=float, default=Timing.step)
    args = parser.parse_args()
    emulator = MistralEmulator(api_key=args.key, quote=args.quote)
    emulator.timing = Timing(validating=args.validating, queued=args.queued, step=args.step)
    with emulator:
        print(emulator.url, flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
