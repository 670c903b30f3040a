"""The failure policy: the one place that decides what becomes of a stage when an attempt
at it ends — for every stage, and for every look at a training job.

    how the attempt ended                           decision
    Redis unreachable                               RAISE: nothing can be recorded; the stage
                                                    stays running, queued again once Redis is back
    the backend unreachable (BackendUnavailable)    INTERRUPT: attempted again (a look: later)
    the artifact store unreachable                  INTERRUPT
      (ArtifactsUnavailable)
    over its time limit (MODFACTORY_JOB_TIMEOUT)    INTERRUPT
    bad input (RecipeError), refused (BackendError) FAIL: the stage and the run
    an artifact missing or refused (ArtifactError)  FAIL
    anything else (a bug)                           FAIL, logged with its traceback
    the training job SUCCESS                        SUCCEED
    the training job CANCELLED at the backend       CANCEL: the run
    the training job over otherwise                 FAIL
    the training job still going, or unknown        WAIT: look again
    a stage stalled MODFACTORY_STAGE_MAX_ATTEMPTS   FAIL, naming how the last attempt ended
      times (attempts that ran, without progress)
    a stage cut short CUT_SHORT_FACTOR times as     FAIL, saying its workers were lost
      often (attempts lost before they ran)

An attempt *ran* when it lasted MODFACTORY_STAGE_MIN_ATTEMPT seconds or ended of itself
(an error recorded: it reached what it was waiting for). An attempt whose worker was killed
before that proves nothing about the stage — a machine under chaos or load — so it is
counted apart, with a larger budget: a stage fails only on evidence, yet a stage whose
every attempt dies at once still ends, after ``max_attempts x CUT_SHORT_FACTOR`` attempts.

An interrupted stage is attempted again by the reconciler, which queues the lost step of
every unfinished run. Every reason is redacted of the settings' secrets.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

from redis.exceptions import RedisError

from modfactory.artifacts import ArtifactError, ArtifactsUnavailable
from modfactory.backends import BackendError, BackendUnavailable
from modfactory.data.recipe import RecipeError
from modfactory.settings import Settings, redact
from modfactory.store.run_parts import StageState
from modfactory.store.runs import RunStore
from modfactory.store.stage_names import StageName
from modfactory.values import JobStatus, TrainingJob

log = logging.getLogger("modfactory.stages")

LOOK_SHARE = 0.5  # of MODFACTORY_JOB_TIMEOUT one look at a training job may take
CUT_SHORT_FACTOR = 4  # attempts lost before they ran allowed per attempt that stalled


class Action(StrEnum):
    SUCCEED = "succeed"
    WAIT = "wait"
    INTERRUPT = "interrupt"
    FAIL = "fail"
    CANCEL = "cancel"
    RAISE = "raise"


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str = ""
    unexpected: bool = False  # a bug: logged with its traceback


@dataclass(frozen=True)
class FailurePolicy:
    max_attempts: int  # MODFACTORY_STAGE_MAX_ATTEMPTS
    job_timeout: int  # MODFACTORY_JOB_TIMEOUT: arq's limit for any job
    secrets: tuple[str, ...] = ()
    min_attempt: float = 10.0  # MODFACTORY_STAGE_MIN_ATTEMPT: an attempt this long has run

    @classmethod
    def of(cls, settings: Settings) -> FailurePolicy:
        return cls(
            settings.stage_max_attempts,
            settings.job_timeout,
            settings.secret_values(),
            settings.stage_min_attempt,
        )

    @property
    def step_limit(self) -> float:
        """Seconds a stage's step may take: under arq's, so a stuck step is recorded."""
        return max(1, self.job_timeout - 5)

    @property
    def look_limit(self) -> float:
        return self.job_timeout * LOOK_SHARE

    def after_error(self, exc: BaseException, limit: float) -> Decision:
        """What an exception that ended an attempt (run under ``limit`` seconds) decides."""
        told = redact(str(exc), self.secrets)
        if isinstance(exc, RedisError):
            return Decision(Action.RAISE, f"Redis unreachable: {told}")
        if isinstance(exc, BackendUnavailable | ArtifactsUnavailable):
            return Decision(Action.INTERRUPT, told)
        if isinstance(exc, RecipeError | BackendError | ArtifactError):
            return Decision(Action.FAIL, told)
        if isinstance(exc, TimeoutError):
            return Decision(
                Action.INTERRUPT, f"timed out after {limit:g} s (MODFACTORY_JOB_TIMEOUT)"
            )
        return Decision(Action.FAIL, f"{type(exc).__name__}: {told}", unexpected=True)

    def after_look(self, job: TrainingJob) -> Decision:
        """What the training job's status decides."""
        if job.status == JobStatus.SUCCESS:
            return Decision(Action.SUCCEED, f"trained {job.fine_tuned_model}")
        if job.status == JobStatus.CANCELLED:
            why = job.error or job.id
            return Decision(Action.CANCEL, f"the training job was cancelled at the backend: {why}")
        if job.terminal:
            return Decision(
                Action.FAIL, f"{job.status}: {job.error or f'the training job ended {job.status}'}"
            )
        return Decision(Action.WAIT, "" if job.known else f"job {job.id} has an unknown status")

    def gives_up(self, state: StageState) -> str | None:
        """Why a stage about to be attempted again fails instead (None: attempt it)."""
        if state.stalled >= self.max_attempts:
            last = state.last_error or "it ended without a result (the worker was lost)"
            return (
                f"gave up after {state.stalled} attempts that ran and made no progress "
                f"({state.attempts} in all; MODFACTORY_STAGE_MAX_ATTEMPTS); the last: {last}"
            )
        if state.cut_short >= self.max_attempts * CUT_SHORT_FACTOR:
            return (
                f"gave up after {state.cut_short} attempts whose worker was lost within "
                f"{self.min_attempt:g} s ({state.attempts} in all; MODFACTORY_STAGE_MAX_ATTEMPTS "
                f"x {CUT_SHORT_FACTOR}): workers keep dying on this stage; see their logs"
            )
        return None

    async def attempt(
        self,
        store: RunStore,
        run_id: str,
        stage: StageName,
        step: Callable[[], Awaitable[None]],
        *,
        limit: float | None = None,
        interrupted: Callable[[str], Awaitable[None]] | None = None,
        attempt: int | None = None,
    ) -> Decision | None:
        """Run ``step`` within ``limit`` (the step limit by default); if it raises, decide
        and apply the decision (``interrupted(reason)`` instead of interrupting the stage,
        for a look). Attempt number ``attempt`` is marked as having run once it lasts
        ``min_attempt`` seconds. None when the step returned."""
        limit = self.step_limit if limit is None else limit
        marker = None
        if attempt is not None:
            marker = asyncio.create_task(self._mark_ran_later(store, run_id, stage, attempt))
        try:
            async with asyncio.timeout(limit):
                await step()
            return None
        except Exception as exc:
            decision = self.after_error(exc, limit)
            if decision.unexpected:
                log.exception("run %s: %s failed unexpectedly", run_id, stage)
            else:
                log.warning("run %s: %s: %s: %s", run_id, stage, decision.action, decision.reason)
            if decision.action == Action.RAISE:
                raise  # the stage stays running; the reconciler queues it again
        finally:
            if marker is not None:
                marker.cancel()
        if decision.action == Action.INTERRUPT and interrupted is not None:
            await interrupted(decision.reason)
        else:
            await self.apply(store, run_id, stage, decision)
        return decision

    async def _mark_ran_later(
        self, store: RunStore, run_id: str, stage: StageName, attempt: int
    ) -> None:
        await asyncio.sleep(self.min_attempt)
        try:
            await store.mark_ran(run_id, stage, attempt)
        except Exception:  # Redis away, the run pruned: the attempt learns it at its next write
            log.warning("run %s: %s: could not mark attempt %d as run", run_id, stage, attempt)

    async def apply(
        self, store: RunStore, run_id: str, stage: StageName, decision: Decision
    ) -> None:
        """Record a decision that ends an attempt (SUCCEED and WAIT are the step's own)."""
        if decision.action == Action.FAIL:
            await store.fail_stage(run_id, stage, decision.reason)
        elif decision.action == Action.INTERRUPT:
            await store.interrupt_stage(run_id, stage, decision.reason)
        elif decision.action == Action.CANCEL:
            await store.cancel(run_id, decision.reason, strict=False)
