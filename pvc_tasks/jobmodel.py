"""The job record: what a job is (``Job``), its states, who asked for it (``Origin``), and the transaction ops that
change it with the keys it concerns (``Op``). Stored and changed by ``pvc_tasks.jobs``.

States: ``queued -> running -> succeeded | failed | cancelled`` (and ``queued -> cancelled | failed``). A
terminal job never changes again. Percent never decreases.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Literal, TypeAlias

__all__ = ["MAX_MESSAGES", "TERMINAL", "CheckOp", "CreateOp", "DeleteOp", "Job", "JobState", "Op", "Origin", "SetOp"]

#: Messages kept on a job; older ones are dropped (the API and CLI show the latest).
MAX_MESSAGES = 50


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})

@dataclass(frozen=True)
class Origin:
    """What an API request fixes about the job it creates: who asked (the token's name), and with an
    ``Idempotency-Key`` the job's id (derived from the client's token and key) and the request's fingerprint."""

    job_id: str = ""
    request: str = ""
    requested_by: str = ""
    request_id: str = ""


#: One step of a ZooKeeper transaction (``commit``), as a plain tuple so that ops compose by list concatenation.
#: ``version`` -1 means unconditional; every other version is a compare-and-set.
CreateOp: TypeAlias = tuple[Literal["create"], str, bytes] | tuple[Literal["create"], str, bytes, Literal["ephemeral"]]
SetOp: TypeAlias = tuple[Literal["set"], str, bytes, int]
DeleteOp: TypeAlias = tuple[Literal["delete"], str, int]
CheckOp: TypeAlias = tuple[Literal["check"], str, int]
Op: TypeAlias = CreateOp | SetOp | DeleteOp | CheckOp


@dataclass
class Job:
    """A unit of work requested through the API, run by tasks on node queues."""

    id: str
    kind: str
    vm: str
    node: str
    params: dict = field(default_factory=dict)
    state: str = JobState.QUEUED
    phase: str = "queued"
    step: int = 0
    steps: int = 1
    percent: int = 0
    #: Figures of the work in flight, for progress displays: a live migration's MiB sent, left and rate
    #: (``pvc_tasks.migration``); a flush's VMs done, total and in flight (``pvc_tasks.engine``).
    progress: dict = field(default_factory=dict)
    messages: list[dict] = field(default_factory=list)
    created: float = 0.0
    started: float | None = None
    finished: float | None = None
    reason: str = ""
    result: dict = field(default_factory=dict)
    parent: str = ""
    cancel_requested: bool = False
    #: Multi-step jobs (migration): the step whose task may act next; a task for another step is stale.
    stage: str = ""
    #: The ``stage`` whose task has started (compare-and-set): a second message for it, a duplicate the broker or a
    #: re-send delivered, finds it taken and does nothing. Cleared by each hand-over to the next stage.
    stage_taken: str = ""
    #: The outbox (see pvc_tasks.redrive): when the message for ``stage`` was last published (0: not yet) and how
    #: many times the re-driver published it again because nobody took it.
    sent: float = 0.0
    resends: int = 0
    #: The fingerprint (method, path, body) of the API request that created the job with an ``Idempotency-Key``
    #: (pvc_web.idempotency): a retry with the same key and request gets this job back.
    request: str = ""
    #: The name of the API token that asked for the job; empty for jobs pvc creates itself (a flush's or a
    #: fence's children: see ``parent``).
    requested_by: str = ""
    #: The id of the API request that created it (``X-Request-Id``, pvc_web.access): its line in the access log.
    request_id: str = ""

    @classmethod
    def new(cls, kind: str, vm: str, node: str, params: dict | None = None, parent: str = "", *,
            stage: str, origin: Origin | None = None) -> Job:
        """A queued job whose first message is ``stage`` on ``node``'s queue, published right after the record is
        committed (``sent`` is set now: the re-driver counts from here if that publish never happens). ``origin``:
        who asked, and the id and request fingerprint an API request with an ``Idempotency-Key`` asks for."""
        now = time.time()
        origin = origin or Origin()
        return cls(id=origin.job_id or str(uuid.uuid4()), kind=kind, vm=vm, node=node, params=dict(params or {}),
                   created=now, parent=parent, stage=stage, sent=now, request=origin.request,
                   requested_by=origin.requested_by, request_id=origin.request_id)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Job:
        raw = json.loads(data)
        return cls(**{k: v for k, v in raw.items() if k in cls.__dataclass_fields__})

    def hand_to(self, stage: str, node: str) -> None:
        """Make ``stage`` on ``node``'s queue the step that may act next; it is not taken yet (a new stage, or the same
        one driven again after its worker died, may run once more). Its message is published right after this
        write commits."""
        self.stage, self.node, self.stage_taken = stage, node, ""
        self.sent, self.resends = time.time(), 0

    def note(self, text: str) -> None:
        self.messages.append({"time": time.time(), "text": text})
        del self.messages[:-MAX_MESSAGES]

    def advance(self, phase: str, step: int, steps: int) -> None:
        """Move to ``phase`` (step k of n); percent only grows and stops at 100."""
        self.phase, self.step, self.steps = phase, step, max(steps, 1)
        self.percent = max(self.percent, min(100, int(100 * max(step - 1, 0) / self.steps)))

    def end(self, state: JobState, reason: str = "", result: dict | None = None) -> None:
        self.state = state
        self.reason = reason
        self.finished = time.time()
        self.phase = state.value
        if result:
            self.result = result
        if state == JobState.SUCCEEDED:
            self.percent = 100
