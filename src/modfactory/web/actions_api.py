"""What ``/ui``'s buttons do, for scripts: cancel, approve and re-queue a run; list models,
promote a run's model and roll back. Each route asks the role table (``identity``) and
answers with the run or the model record as the CLI's ``--json`` prints it.

- ``POST /v1/runs/{id}/cancel`` · ``/approve`` · ``/retry`` — operator.
- ``GET /v1/models``, ``GET /v1/models/{name}`` — viewer.
- ``POST /v1/models/{name}/promote`` (``{"run_id": ID, "force": false}``), ``…/rollback``
  — admin.
"""

from __future__ import annotations

from pydantic import BaseModel, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from modfactory.producer import Producer
from modfactory.roles import Action
from modfactory.store.registry import ModelRecord, RegistryError
from modfactory.store.run import Run, RunNotFound, RunStateError
from modfactory.web.errors import ApiError, field_error
from modfactory.web.identity import actor_of, require
from modfactory.web.request_body import read_body


class PromoteRequest(BaseModel):
    run_id: str = Field(min_length=1, max_length=200)
    force: bool = False


def _producer(request: Request) -> Producer:
    return request.app.state.producer


async def _body(request: Request) -> bytes:
    return await read_body(request, request.app.state.settings.webhook_max_body, "WEBHOOK")


def _run_json(request: Request, run: Run) -> Response:
    return JSONResponse(run.to_json_dict(request.app.state.artifacts.url_of))


def _record_json(record: ModelRecord) -> Response:
    return JSONResponse(record.model_dump(mode="json"))


async def run_action(request: Request) -> Response:
    """``POST /v1/runs/{id}/cancel|approve|retry``: the run as it is now; 404 for no such
    run, 409 when its state does not allow it."""
    action = request.path_params["action"]
    needed = {"cancel": Action.RUN, "retry": Action.RUN, "approve": Action.APPROVE}
    if action not in needed:
        raise ApiError(404, f"no run action {action[:40]!r}: cancel, approve or retry")
    caller = await require(request, needed[action], await _body(request), signed=True)
    producer, run_id = _producer(request), request.path_params["run_id"]
    by = actor_of(request, caller)
    try:
        if action == "cancel":
            run = await producer.cancel(run_id, by=by)
        elif action == "approve":
            run = await producer.approve(run_id, by=by)
        else:
            run = await producer.retry(run_id, by=by)
    except RunNotFound as exc:
        raise ApiError(404, str(exc)) from None
    except RunStateError as exc:
        raise ApiError(409, str(exc)) from None
    return _run_json(request, run)


async def list_models(request: Request) -> Response:
    """``GET /v1/models``: every model name's record, as ``modfactory models --json``."""
    await require(request, Action.READ, await _body(request), signed=True)
    return JSONResponse([r.model_dump(mode="json") for r in await _producer(request).models()])


async def get_model(request: Request) -> Response:
    """``GET /v1/models/{name}``: one model name's record (404 before its first run)."""
    await require(request, Action.READ, await _body(request), signed=True)
    name = request.path_params["name"]
    record = await _producer(request).model(name)
    if record.champion is None and not record.candidates and not record.history:
        raise ApiError(404, f"no model {name[:80]!r} yet")
    return _record_json(record)


async def model_action(request: Request) -> Response:
    """``POST /v1/models/{name}/promote`` (a run of that name) or ``…/rollback``: the model
    record after; 409 when it cannot be done (not better than the champion without
    ``force``, nothing to roll back to)."""
    what, name = request.path_params["what"], request.path_params["name"]
    if what not in ("promote", "rollback"):
        raise ApiError(404, f"no model action {what[:40]!r}: promote or rollback")
    body = await _body(request)
    caller = await require(request, Action.PROMOTE, body, signed=True)
    producer, by = _producer(request), actor_of(request, caller)
    try:
        if what == "rollback":
            return _record_json(await producer.rollback(name, by=by))
        wanted = _promote_request(body)
        run = await producer.run(wanted.run_id)
        if run.spec.model_name != name:
            raise ApiError(
                422,
                f"body field 'run_id': run {run.id} is of model {run.spec.model_name!r}, "
                f"not {name!r}",
                field="run_id",
            )
        return _record_json(await producer.promote(run.id, force=wanted.force, by=by))
    except RunNotFound as exc:
        raise ApiError(404, str(exc)) from None
    except (RunStateError, RegistryError) as exc:
        raise ApiError(409, str(exc)) from None


def _promote_request(body: bytes) -> PromoteRequest:
    try:
        return PromoteRequest.model_validate_json(body or b"{}")
    except ValidationError as exc:
        if exc.errors()[0]["type"] == "json_invalid":
            raise ApiError(422, f"body is not valid JSON: {exc.errors()[0]['msg']}") from None
        raise field_error(exc) from None
