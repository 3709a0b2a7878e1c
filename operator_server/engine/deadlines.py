"""Request deadlines: how long each operator request may wait, and what its
end decides (``OnTimeout``).

**Where a request's rule comes from**, most specific first: the task's
``operator.deadlines[kind]``, then its ``operator.deadline_s`` /
``operator.on_timeout`` (every kind of the task), then the config's
``<kind>_timeout_s`` / ``<kind>_on_timeout``.  Each field falls back on its
own: ``{"deadlines": {"ask": {"deadline_s": 30}}}`` keeps the ask's
configured action.  A combination that makes no sense for its kind is
refused when the task is created (``spec_problems``); nothing ever approves
itself unless someone wrote ``approve`` for a ``hook_before``.

**Durable due times.**  A request of the attempt's own chain (its
``hook_before``, its ``spawn``, the senior's escalation ``ask``) has its due
time — absolute unix seconds, never a timer's start — kept on its task
(``Task.dues``) and stored with the task's row while it is open.  It is
written once the request has waited ``PERSIST_AFTER_S`` (or at its due time,
if sooner), and written away again when it settles: most requests are
answered well within a second and cost the task no write at all (the thin
path stays at three writes per task), while one that waits for a person is
on disk before anyone could miss it; a crash inside that first second
restarts its clock at most ``PERSIST_AFTER_S`` late.  A restart,
or another node taking the task over, re-dispatches the interrupted attempt:
its requests are issued again under new ``req_id``s and each picks up the
stored due time of its kind (and its ``step``, the place in its escalation
chain), so the clock keeps running.  An attempt that
ended any other way leaves nothing to pick up.  A worker's own asks are
withdrawn when their attempt ends, never re-issued, so theirs is not stored.

**Escalation chains.**  A task's ``operator.escalate`` (``EscalationStep``s)
gives every request of the task a chain of holders: step 0 is whoever the task
names, step ``n`` the ``n``-th entry's role.  While a request is at a step with
a next one, its stored ``due_at`` is when it moves on (the step's ``after_s``
counted from when it got there); at the last step it is the request's own
deadline, counted from then.  So one stored pair ``{"due_at", "step"}``
resumes either.

The clock itself is one heap for the whole process (``engine.schedule``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from operator_server.config import Settings
from operator_server.wire.values import ON_TIMEOUT_ALLOWED, OnTimeout, on_timeout_problem

KINDS = tuple(ON_TIMEOUT_ALLOWED)
# How long a chain request waits before its due time is stored (see above).
PERSIST_AFTER_S = 1.0
# The config keys of each kind: (deadline, action).
_CONFIG_KEYS = {
    "ask": ("ask_timeout_s", "ask_on_timeout"),
    "hook_before": ("hook_timeout_s", "hook_on_timeout"),
    "spawn": ("spawn_timeout_s", "spawn_on_timeout"),
}


@dataclass(frozen=True)
class EscalationStep:
    """Where an unanswered request goes after ``after_s`` at the step before."""

    after_s: float
    role: str


def chain_of(escalate: list[dict[str, Any]] | None) -> tuple[EscalationStep, ...]:
    return tuple(EscalationStep(float(s["after_s"]), str(s["role"])) for s in escalate or ())


@dataclass(frozen=True)
class Rule:
    """One kind's deadline (seconds; 0 = none) and what it decides."""

    deadline_s: float
    on_timeout: OnTimeout


def config_rules(settings: Settings) -> dict[str, Rule]:
    return {
        kind: Rule(float(getattr(settings, seconds)), OnTimeout(getattr(settings, action)))
        for kind, (seconds, action) in _CONFIG_KEYS.items()
    }


def task_rules(
    configured: dict[str, Rule],
    deadline_s: float | None,
    on_timeout: str | None,
    per_kind: dict[str, dict[str, Any]] | None,
) -> dict[str, Rule]:
    """Each kind's rule for a task whose operator spec says these (None: not
    said), over the ``configured`` ones (``config_rules``, read once)."""
    rules = dict(configured)
    for kind, base in configured.items():
        own = (per_kind or {}).get(kind, {})
        seconds = own.get("deadline_s", deadline_s)
        action = own.get("on_timeout", on_timeout)
        rules[kind] = Rule(
            base.deadline_s if seconds is None else float(seconds),
            base.on_timeout if action is None else OnTimeout(action),
        )
    return rules


def spec_problems(on_timeout: str | None, per_kind: dict[str, Any] | None) -> dict[str, str]:
    """What is wrong with an operator spec's deadline fields: field path ->
    message (empty when nothing).  Checked against every kind the task's
    requests can have, since the task-wide fields apply to all of them."""
    problems: dict[str, str] = {}
    per_kind = per_kind or {}
    if on_timeout is not None:
        # Task-wide: each kind that does not override it must accept it.
        bad = [
            k
            for k in KINDS
            if "on_timeout" not in per_kind.get(k, {}) and on_timeout_problem(k, on_timeout)
        ]
        if bad:
            problems["on_timeout"] = (
                f"{on_timeout!r} applies to every request of the task and cannot end "
                + "; ".join(f"{k} (allowed: {', '.join(ON_TIMEOUT_ALLOWED[k])})" for k in bad)
                + ": set it per kind under `deadlines`"
            )
    for kind, own in per_kind.items():
        action = own.get("on_timeout")
        if action is not None:
            problem = on_timeout_problem(kind, action)
            if problem is not None:
                problems[f"deadlines.{kind}.on_timeout"] = problem
    return problems


@dataclass
class RequestDeadline:
    """One request's deadline as the session serves it."""

    kind: str
    deadline_s: float  # 0: none (then ``due_at`` is None)
    on_timeout: OnTimeout
    due_at: float | None
    remind_at: float | None
    step: int = 0
    # The escalation chain (``escalate``): while ``step < len(chain)`` the
    # request moves on at ``step_until`` and ``due_at`` / ``remind_at`` wait.
    chain: tuple[EscalationStep, ...] = ()
    step_until: float | None = None
    # Whom the task names for the request's face: the holder at step 0.
    first: str = ""
    # Told of each step reached, to store it (durable requests only).
    stepped: Callable[[], None] | None = None
    # A due time to store: ``write`` is called at ``write_at`` if the request
    # is still open then (``PERSIST_AFTER_S``, or its due time if sooner).
    write_at: float | None = None
    write: Callable[[], None] | None = None
    # Told once the request has an outcome (a reply, or its deadline): a
    # stored due time is then forgotten.  Not told when the attempt is cut
    # (cancelled, handed over, killed): the due time must survive that.
    settled: Callable[[], None] | None = None

    def settle(self) -> None:
        if self.settled is not None:
            settled, self.settled = self.settled, None
            settled()

    def holder_name(self, step: int) -> str:
        """The sid or role that holds the request at ``step``."""
        return self.chain[step - 1].role if step else self.first

    @property
    def escalating(self) -> bool:
        """The request has a step ahead of it in its chain."""
        return self.step < len(self.chain)

    def reach(self, step: int, at: float, fraction: float) -> None:
        """The request got to ``step`` at ``at``: its next move or, at the
        last step, its deadline counts from then."""
        self.step = step
        if self.escalating:
            self.step_until = at + self.chain[step].after_s
            self.due_at = self.remind_at = None
        else:
            self.step_until = None
            self.due_at = at + self.deadline_s if self.deadline_s else None
            self.remind_at = remind_time(self.due_at, self.deadline_s, fraction)
        if self.stepped is not None:
            self.stepped()

    def stored(self) -> dict[str, Any]:
        """What ``Task.dues`` keeps of it: when the current step ends, and the step."""
        return {"due_at": self.step_until if self.escalating else self.due_at, "step": self.step}


def fresh(
    kind: str,
    rule: Rule,
    fraction: float,
    now: float | None = None,
    chain: tuple[EscalationStep, ...] = (),
) -> RequestDeadline:
    """A deadline starting now, at the first step of ``chain``."""
    now = time.time() if now is None else now
    deadline = RequestDeadline(kind, rule.deadline_s, rule.on_timeout, None, None, chain=chain)
    deadline.reach(0, now, fraction)
    return deadline


def remind_time(due_at: float | None, deadline_s: float, fraction: float) -> float | None:
    """``fraction`` of the way to ``due_at``, counted from its start."""
    if due_at is None or not fraction:
        return None
    return due_at - (1 - fraction) * deadline_s


@dataclass(frozen=True)
class DueSoon:
    """A request still unanswered at ``remind_at_fraction`` of its deadline:
    what the ``request_due_soon`` event and the notification hook get."""

    task_id: str
    req_id: str
    kind: str
    face: str
    sid: str
    due_at: float
    on_timeout: str


# The hook point notifications attach to: called with each reminder, after
# its event is recorded.  An observer must not block (it runs on the clock's task).
DueSoonObserver = Callable[[DueSoon], None]


class AttemptDeadlines:
    """The deadlines of one attempt's requests (``AttemptContext.deadlines``).

    ``dues`` is the task's own map of open chain requests (kind -> ``{"due_at",
    "step"}``) and ``save`` writes the task's row with it (the session runs
    each request's ``write`` on the clock)."""

    def __init__(
        self,
        rules: dict[str, Rule],
        fraction: float,
        dues: dict[str, dict[str, Any]],
        save: Callable[[], None],
        chain: tuple[EscalationStep, ...] = (),
        first: dict[str, str] | None = None,
    ) -> None:
        self.rules = rules
        self._fraction = fraction
        self._dues = dues
        self._save = save
        self.chain = chain
        self._first = first or {}

    def for_request(self, kind: str, *, durable: bool = True) -> RequestDeadline:
        """The deadline of a new ``kind`` request; ``durable``: one of the
        attempt's chain, which resumes a stored due time (and step) and stores its own."""
        deadline = self._for_request(kind, durable)
        deadline.first = self._first.get(kind, "")
        return deadline

    def _for_request(self, kind: str, durable: bool) -> RequestDeadline:
        rule, chain = self.rules[kind], self.chain
        if not durable or not (rule.deadline_s or chain):
            return fresh(kind, rule, self._fraction, chain=chain)
        stored = self._dues.get(kind)
        written = stored is not None  # read back from the store: it is there
        if stored is not None:
            step = min(int(stored.get("step", 0)), len(chain))
            deadline = RequestDeadline(
                kind, rule.deadline_s, rule.on_timeout, None, None, step, chain
            )
            due = stored.get("due_at")
            if deadline.escalating:
                deadline.step_until = float(due) if due is not None else time.time()
            elif due is not None:
                deadline.due_at = float(due)
                deadline.remind_at = remind_time(deadline.due_at, rule.deadline_s, self._fraction)
            entry = stored
        else:
            now = time.time()
            deadline = fresh(kind, rule, self._fraction, now, chain)
            entry = self._dues[kind] = deadline.stored()

            def write() -> None:
                nonlocal written
                if self._dues.get(kind) is entry:  # still open
                    written = True
                    self._save()

            first_end = deadline.step_until or deadline.due_at or now
            deadline.write_at, deadline.write = min(now + PERSIST_AFTER_S, first_end), write

        def stepped() -> None:
            # A move is a decision: stored at once, whatever the request waited.
            nonlocal written, entry
            if self._dues.get(kind) is entry:
                entry = self._dues[kind] = deadline.stored()
                written = True
                self._save()

        def settled() -> None:
            if self._dues.pop(kind, None) is not None and written:
                self._save()  # a stored due time must not outlive its request

        deadline.stepped, deadline.settled = stepped, settled
        return deadline
