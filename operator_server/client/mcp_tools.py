"""The MCP bridge's contract with the model: tool names, parameters, result
shapes, and the words that tell an LLM what each step means.

Names and parameters here are a public contract (issue 12): an agent's prompt or
config may name them.  Change them only as a breaking change.  The behaviour
behind them lives in ``client/mcp.py``.
"""

from __future__ import annotations

from typing import Any

from mcp import types

NEXT_REQUEST_MAX_S = 300.0  # MCP clients time a tool call out; never hold one longer

_ANY: dict[str, Any] = {}  # any JSON value
_STR = {"type": "string"}
_INT = {"type": "integer"}
_BOOL = {"type": "boolean"}


def _obj(required: tuple[str, ...] = (), **props: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": props,
        "required": list(required),
        "additionalProperties": False,
    }


def _open(required: tuple[str, ...] = (), **props: Any) -> dict[str, Any]:
    """A result shape: the named fields, and more may follow (the server's JSON)."""
    return {"type": "object", "properties": props, "required": list(required)}


REQ_ID = {"type": "string", "minLength": 1, "description": "the request's req_id"}
WORKER_HANDLE = {
    "type": "string",
    "minLength": 1,
    "description": "the worker_handle from a spawn request",
}
NOTICE = _open(
    ("type", "req_id"),
    type={"type": "string", "enum": ["hook_after", "cancel", "error"]},
    req_id=_STR,
)
REQUEST = _open(
    ("req_id", "type", "task_id"),
    req_id=_STR,
    type={"type": "string", "enum": ["ask", "hook_before", "spawn"]},
    task_id=_STR,
    attempt=_INT,
    agent=_STR,
    parent_req_id=_STR,
    question=_ANY,
    answer_schema={
        "type": "object",
        "description": "the form an answer must fill (a flat JSON Schema object)",
    },
    directive=_STR,
    worker_handle=_STR,
    base_url=_STR,
    handed_out=_BOOL,
    trace={
        "type": "object",
        "description": "when the server traces: the W3C trace context (traceparent, "
        "tracestate) a sub-agent you start passes on as the traceparent header or the "
        "TRACEPARENT environment variable; worker_prompt and worker_result send it themselves",
    },
)
SENT = _open(
    ("req_id", "sent", "delivered"),
    req_id=_STR,
    sent={"type": "string", "description": "the reply frame type that went to the server"},
    delivered={
        "type": "boolean",
        "description": "false: not connected now; the reply goes out when the server "
        "replays the request on reconnect",
    },
)
TASK = _open(("id", "status"), id=_STR, status=_STR)


def _tool(
    name: str, description: str, params: dict[str, Any], result: dict[str, Any]
) -> types.Tool:
    return types.Tool(name=name, description=description, inputSchema=params, outputSchema=result)


TOOLS: list[types.Tool] = [
    _tool(
        "status",
        "This bridge's operator session: its sid, the roles it holds (tasks name a role to be "
        "served by you), whether it is connected to the server now, how many requests it "
        "holds, and the server URL.",
        _obj(),
        _open(
            ("sid", "roles", "connected", "pending", "url"),
            sid={"type": ["string", "null"]},
            roles={"type": "array", "items": _STR},
            connected=_BOOL,
            pending=_INT,
            url=_STR,
            error={"type": ["string", "null"]},
        ),
    ),
    _tool(
        "next_request",
        "Wait for the next thing the server needs you to decide, and take it. Types: "
        "'hook_before' = a sub-agent is about to be spawned for a task: judge it, then call "
        "approve or reject. 'spawn' = do the task's work now (or delegate it to a sub-agent): "
        "the sub-agent reads its prompt with worker_prompt and posts its result with "
        "worker_result, using worker_handle; then call spawn_ack (or spawn_halt to stop on "
        "purpose). 'ask' = a task wants your judgement on `question` (e.g. a worker reported "
        "failure, or a sub-agent asks mid-work: parent_req_id names its spawn); answer fills "
        "answer_schema when there is one: call answer, or decline. Returns {type: 'none'} "
        "when nothing came within timeout_s; just call again. `notices` lists what happened "
        "meanwhile: 'hook_after' "
        "(an attempt finished, with its result), 'cancel' (a request you held was withdrawn; "
        "do not reply to it), 'error' (the server refused something).",
        _obj(
            timeout_s={
                "type": "number",
                "minimum": 0,
                "maximum": NEXT_REQUEST_MAX_S,
                "default": 30,
                "description": "seconds to wait for a request (default 30)",
            }
        ),
        {
            "type": "object",
            "properties": {
                **REQUEST["properties"],
                "type": {"type": "string", "enum": ["ask", "hook_before", "spawn", "none"]},
                "notices": {"type": "array", "items": NOTICE},
            },
            "required": ["type", "notices"],
        },
    ),
    _tool(
        "pending",
        "Every request this bridge holds now, oldest first, whether handed out by "
        'next_request yet or not, as {"pending": [...]}. Use it to recover your place '
        "after losing track.",
        _obj(),
        _open(("pending",), pending={"type": "array", "items": REQUEST}),
    ),
    _tool(
        "approve",
        "Let the spawn announced by a 'hook_before' request go ahead.",
        _obj(("req_id",), req_id=REQ_ID),
        SENT,
    ),
    _tool(
        "reject",
        "Refuse the spawn announced by a 'hook_before' request; the attempt fails with "
        "'spawn rejected: <reason>'.",
        _obj(("req_id", "reason"), req_id=REQ_ID, reason={"type": "string", "minLength": 1}),
        SENT,
    ),
    _tool(
        "reassign",
        "Pass a request you hold (any type) to another role or operator session, e.g. "
        "when it belongs to someone else: name exactly one of role or sid, and a note for "
        "its next holder. It leaves your pending list; you must not reply to it any more.",
        _obj(
            ("req_id",),
            req_id=REQ_ID,
            role={"type": "string", "minLength": 1, "description": "the role to pass it to"},
            sid={"type": "string", "minLength": 1, "description": "or the session to pass it to"},
            note={"type": "string", "description": "for the next holder"},
        ),
        _open(("req_id", "to"), req_id=_STR, to=_STR),
    ),
    _tool(
        "answer",
        "Answer an 'ask' request. When the request has an answer_schema, value must be an "
        "object that fills it (checked before sending: a bad_answer error names the field). "
        "For an escalation (a worker reported ok=false) answer {decision: 'override'} to pass "
        "the task with {original, senior_answer}, or {decision: 'uphold', note} to keep it "
        "blocked.",
        _obj(("req_id", "value"), req_id=REQ_ID, value=_ANY),
        SENT,
    ),
    _tool(
        "decline",
        "Refuse to answer an 'ask' request; the asking attempt fails with your reason.",
        _obj(("req_id", "reason"), req_id=REQ_ID, reason={"type": "string", "minLength": 1}),
        SENT,
    ),
    _tool(
        "spawn_ack",
        "Finish a 'spawn' request once the work is done (post the result with worker_result "
        "first: a posted result wins over `value`). ok=false or `error` marks the attempt "
        "failed.",
        _obj(("req_id",), req_id=REQ_ID, value=_ANY, ok={**_BOOL, "default": True}, error=_STR),
        SENT,
    ),
    _tool(
        "spawn_halt",
        "Stop a 'spawn' request on purpose (not an error): the task ends 'halted' "
        "(neither passed nor failed, never retried), its result {halted: true, reason, value}.",
        _obj(("req_id",), req_id=REQ_ID, reason=_STR, value=_ANY),
        SENT,
    ),
    _tool(
        "worker_prompt",
        "The sub-agent's first call: read the work of a spawn ({task_id, attempt, agent, "
        "system?, prompt}) with its worker_handle.",
        _obj(("worker_handle",), worker_handle=WORKER_HANDLE),
        _open(
            ("task_id", "attempt", "agent", "prompt"),
            task_id=_STR,
            attempt=_INT,
            agent=_STR,
            system=_ANY,
            prompt=_ANY,
        ),
    ),
    _tool(
        "worker_result",
        "The sub-agent's last call: post the spawn's result (any JSON value). ok=false says "
        "the work failed. This result decides the attempt.",
        _obj(
            ("worker_handle", "value"),
            worker_handle=WORKER_HANDLE,
            value=_ANY,
            ok={**_BOOL, "default": True},
        ),
        _open(),
    ),
    _tool(
        "task_create",
        "Start a task: `agent` names the kind of worker, `directive` is its work (text or "
        "JSON). Name `role` (or `sid`) to have that operator serve it; your own role makes "
        "the requests come back to you.",
        _obj(
            ("agent", "directive"),
            agent={"type": "string", "minLength": 1},
            directive=_ANY,
            role=_STR,
            sid=_STR,
            kind={"type": "string", "enum": ["main_ai", "automate"]},
            max_attempts={"type": "integer", "minimum": 1},
            system=_STR,
        ),
        TASK,
    ),
    _tool(
        "task_get",
        "Read a task; wait_s long-polls up to that many seconds for it to end.",
        _obj(
            ("task_id",),
            task_id=_STR,
            wait_s={"type": "number", "minimum": 0, "maximum": NEXT_REQUEST_MAX_S},
        ),
        TASK,
    ),
    _tool(
        "task_list",
        "List tasks, oldest first (creation order), optionally by status.",
        _obj(
            status={
                "type": "string",
                "enum": [
                    "pending",
                    "running",
                    "passed",
                    "blocked",
                    "failed",
                    "cancelled",
                    "halted",
                ],
            },
            limit={"type": "integer", "minimum": 1},
        ),
        _open(("tasks",), tasks={"type": "array", "items": TASK}),
    ),
    _tool(
        "task_cancel",
        "Cancel a task; requests for it that you hold are withdrawn.",
        _obj(("task_id",), task_id=_STR, reason=_STR),
        TASK,
    ),
]

GUIDE_NAME = "operator-guide"
GUIDE_DESCRIPTION = "How to serve as an operator through these tools"
GUIDE = """\
You are an operator of an operator-server: tasks that name your role send their \
decisions and their work to you. Work in a loop:

1. Call `next_request` (it waits up to `timeout_s`). `{"type": "none"}` means nothing \
came yet: call it again. Read any `notices`: a `cancel` withdraws a request you \
held (do not reply to it); a `hook_after` reports how an attempt ended.
2. Decide and reply with the tool that fits the request's `type`:
   - `hook_before`: a sub-agent `agent` is about to start attempt `attempt` of task \
`task_id`. `approve` it, or `reject` it with a reason (the attempt then fails).
   - `spawn`: the work itself. Either do it yourself or hand `worker_handle` and \
`base_url` to a sub-agent (the `directive` says which HTTP endpoints it calls):
       a. `worker_prompt {worker_handle}` reads the prompt;
       b. do the work;
       c. `worker_result {worker_handle, value, ok}` posts the result;
       d. `spawn_ack {req_id}` finishes the request. Use `spawn_halt` to stop on \
purpose, or `spawn_ack` with `ok: false` and `error` if it cannot be done.
   - `ask`: the task wants your judgement on `question`. `answer` with a value, or \
`decline` with a reason. With an `answer_schema`, the value is an object that fills \
that form (its `required` fields, each of its `type`, an `enum` one of its choices). \
An ask with a `parent_req_id` comes from the sub-agent of that spawn, mid-work. An \
escalation (a worker said ok=false) asks `{decision: "override" | "uphold", note?}`: \
override passes the task, uphold keeps it blocked with your note.
   A request that belongs to someone else: `reassign` it to their role (or session) \
with a note instead of replying.
3. Go back to 1. Each request takes exactly one reply; a second reply, a reply of \
the wrong kind, or a reply to a withdrawn request comes back as a tool error and \
changes nothing.

`pending` lists what you hold now; `status` says whether the bridge is connected. \
If the server restarts, requests you held are withdrawn (a `cancel` notice) and \
the task's new attempt comes as a new request. Use `task_create`, `task_get`, \
`task_list` and `task_cancel` to start and follow tasks of your own.
"""
