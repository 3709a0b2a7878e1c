"""The ready-made operator: ``operator-server operator --role NAME``.

It joins under one role and serves all three faces from a terminal:

* ``hook_before``: ``--approve all`` approves, ``none`` rejects, ``ask`` asks the
  person at the terminal (y/N).
* ``ask``: the question is printed and the typed line is the answer (JSON if it
  parses, else text); an ask with an ``answer_schema`` is a form, asked field by
  field and typed as the schema says (an enum takes one of its choices, a
  boolean y/n, an empty entry the default).  With no terminal there is nobody
  to answer, so the ask is declined (an ``answer`` with ``error``) rather than approving anything.
* ``spawn``: with ``--exec COMMAND`` the command is the sub-agent: the prompt on
  its stdin, ``TASK_ID``, ``ATTEMPT``, ``AGENT``, ``WORKER_HANDLE`` and
  ``BASE_URL`` in its environment (and ``TRACEPARENT``/``TRACESTATE``, the
  spawn's trace context, when the server traces); its stdout is posted as the result and a zero
  exit code as ``ok``.  The command runs in its own process group, and the whole
  group is killed when it exits, when the request is withdrawn (cancel or
  timeout) and when the operator stops: nothing it started outlives it.
  Without ``--exec`` the directive is printed and Enter acknowledges (the
  sub-agent posts its own result with the handle).

Its session (sid and token) is kept in a state file, so an operator that is
killed and started again resumes the same session, roles and pending requests
instead of finding its role held by its own ghost.  Leaving (Ctrl-C, SIGTERM)
deletes the session and the file.  An operator whose socket another connection
replaced (``operator --take-over`` elsewhere) stops with one line and exit 0,
leaving both to that one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any, TextIO

import aiohttp

from operator_server.client.errors import RequestFailed
from operator_server.client.http import WorkerClient
from operator_server.client.operator import (
    Decline,
    OperatorClient,
    SessionGone,
    SessionTakenOver,
)
from operator_server.client.state import SessionState, forget_state, load_state, save_state
from operator_server.wire.trace import trace_env


class StartupFailed(Exception):
    """The operator could not take its seat; ``str(exc)`` is one line for the user."""


# How much of a failed command's stderr its task's error keeps: the end,
# where a shell or a traceback says what went wrong.
STDERR_TAIL_BYTES = 2048


async def run_in_own_group(
    command: str, stdin: bytes, env: dict[str, str]
) -> tuple[int, bytes, bytes]:
    """Run ``command`` in a new session (so a new process group); return its exit
    code, stdout and the last ``STDERR_TAIL_BYTES`` of its stderr.  Whatever is
    left of the group when the shell exits, or when this coroutine is
    cancelled, is killed.

    Stdin, stdout and stderr are temporary files, not pipes: a grandchild that
    inherits a pipe would keep it open, and we would wait for the grandchild,
    not the command.
    """
    with (
        tempfile.TemporaryFile() as fin,
        tempfile.TemporaryFile() as fout,
        tempfile.TemporaryFile() as ferr,
    ):
        fin.write(stdin)
        fin.flush()
        fin.seek(0)
        proc = await asyncio.create_subprocess_shell(
            command, stdin=fin, stdout=fout, stderr=ferr, env=env, start_new_session=True
        )
        try:
            returncode = await proc.wait()
        finally:
            _kill_group(proc.pid)
            if proc.returncode is None:  # cancelled while it ran: reap it
                await proc.wait()
        fout.seek(0)
        ferr.seek(max(0, ferr.seek(0, os.SEEK_END) - STDERR_TAIL_BYTES))
        return returncode, fout.read(), ferr.read()


def exec_failure(returncode: int, stderr_tail: bytes) -> str:
    """The task's error for a command that failed: how it ended, then what it
    last said on stderr (``exec exited 127: sh: 1: nosuchcmd: not found``)."""
    how = f"exec killed by signal {-returncode}" if returncode < 0 else f"exec exited {returncode}"
    said = stderr_tail.decode(errors="replace").strip()
    return f"{how}: {said}" if said else f"{how} (nothing on stderr)"


def _kill_group(pgid: int) -> None:
    # The group outlives its leader while any member does, so this reaches
    # grandchildren even after the shell has exited and been reaped.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


# A field left empty that is neither required nor defaulted: not in the answer.
_SKIP = object()
_YES = ("y", "yes", "true", "1")
_NO = ("n", "no", "false", "0")


def field_prompt(name: str, prop: dict[str, Any], required: bool) -> str:
    """One line per field of an answer form: its title, type, choices, default."""
    kind = "yes/no" if prop["type"] == "boolean" else prop["type"]
    if "enum" in prop:
        kind = "one of " + " / ".join(prop["enum"])
    notes = [kind] + (["required"] if required else [])
    if "default" in prop:
        notes.append(f"default {json.dumps(prop['default'])}")
    described = f" - {prop['description']}" if prop.get("description") else ""
    return f"  {prop.get('title') or name} ({', '.join(notes)}){described}:"


def parse_field(prop: dict[str, Any], text: str, required: bool) -> Any:
    """The typed value of one typed-in field; ``ValueError`` says what to type."""
    if not text:
        if "default" in prop:
            return prop["default"]
        if required:
            raise ValueError("required: type a value")
        return _SKIP
    kind = prop["type"]
    if "enum" in prop:
        if text not in prop["enum"]:
            raise ValueError(f"type one of: {', '.join(prop['enum'])}")
        return text
    if kind == "boolean":
        if text.lower() in _YES:
            return True
        if text.lower() in _NO:
            return False
        raise ValueError("type y or n")
    if kind == "integer":
        try:
            return int(text)
        except ValueError:
            raise ValueError("type a whole number") from None
    if kind == "number":
        try:
            return float(text)
        except ValueError:
            raise ValueError("type a number") from None
    return text


class TerminalOperator:
    def __init__(
        self,
        base_url: str,
        *,
        role: str,
        approve: str = "all",
        command: str | None = None,
        api_token: str | None = None,
        state_file: Path | None = None,
        sid: str | None = None,
        token: str | None = None,
        desc: str | None = None,
        out: TextIO = sys.stdout,
        err: TextIO = sys.stderr,
        interactive: bool | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.role = role
        self.approve = approve
        self.command = command
        self.api_token = api_token
        self.state_file = state_file
        self._given = (sid, token) if sid is not None and token is not None else None
        self.desc = desc or f"operator-server operator ({'exec' if command else 'terminal'})"
        self.out = out
        self.err = err
        self.interactive = sys.stdin.isatty() if interactive is None else interactive
        self._prompt_lock = asyncio.Lock()
        self.client: OperatorClient | None = None

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def warn(self, text: str) -> None:
        print(f"operator-server: {text}", file=self.err, flush=True)

    # -- taking a seat ---------------------------------------------------

    def _new_client(self, sid: str | None, token: str | None) -> OperatorClient:
        return OperatorClient(
            self.base_url,
            sid=sid,
            token=token,
            roles=[self.role],
            desc=self.desc,
            api_token=self.api_token,
            on_ask=self.on_ask,
            on_hook_before=self.on_hook_before,
            on_hook_after=self.on_hook_after,
            on_spawn=self.on_spawn,
            on_cancel=self.on_cancel,
        )

    def _keep(self, client: OperatorClient) -> None:
        if self.state_file is not None and client.sid and client.token:
            save_state(
                self.state_file,
                SessionState(self.base_url, client.sid, client.token, [self.role]),
            )

    def _forget(self) -> None:
        if self.state_file is not None:
            forget_state(self.state_file)

    async def start(self) -> tuple[str, OperatorClient]:
        """Take a seat: attach to ``--sid/--token``, else resume the kept session,
        else mint a new one.  Returns how (``attached``, ``resumed``, ``joined``)
        and the connected client.
        Raises ``StartupFailed`` (or a connection error) with nothing left open."""
        if self._given is not None:
            return "attached", await self._attach(*self._given)
        kept = load_state(self.state_file) if self.state_file is not None else None
        if kept is not None and (kept.url != self.base_url or self.role not in kept.roles):
            raise StartupFailed(
                f"state file {self.state_file} holds session {kept.sid} for {kept.url} "
                f"with roles {kept.roles}, not {self.role!r} at {self.base_url}; "
                "pass another --state-file or delete that one"
            )
        if kept is not None and kept.sid:
            client = self._new_client(kept.sid, kept.token)
            try:
                await client.start()
            except SessionGone as exc:
                # Deleted, expired or from a wiped store: nobody can resume it, so
                # the user's intent ("serve this role") is best met by a new one.
                self._forget()
                self.warn(f"the kept session is gone ({exc}); joining as a new session")
            else:
                self.client = client
                return "resumed", client
        return await self._join(kept.token if kept is not None and not kept.sid else None)

    async def _join(self, token: str | None) -> tuple[str, OperatorClient]:
        """Mint a session, its token kept *before* the mint: an operator killed
        before the answer (or before writing it down) takes that session back
        at its next start rather than finding its role held by its own ghost.
        ``token``: a join that was started and never kept (a kept sid of "")."""
        if self.state_file is not None:
            token = token or secrets.token_urlsafe(32)
            save_state(self.state_file, SessionState(self.base_url, "", token, [self.role]))
        client = self._new_client(None, token)
        try:
            await client.join()
        except RequestFailed as exc:
            # A definite answer: no session of ours exists, so keep no token.
            await client.close()
            self._forget()
            raise StartupFailed(self._mint_failure(exc)) from exc
        except aiohttp.ClientConnectorError:
            await client.close()  # nothing was sent: nothing can have been minted
            self._forget()
            raise
        except BaseException:
            await client.close()  # the mint may have happened: its token stays kept
            raise
        self._keep(client)  # before connecting: a kill from here on can resume it
        await client.start()
        self.client = client
        return ("resumed" if client.reclaimed else "joined"), client

    async def _attach(self, sid: str, token: str) -> OperatorClient:
        client = self._new_client(sid, token)
        try:
            view = await client.view()
        except RequestFailed as exc:
            await client.close()
            raise StartupFailed(f"cannot attach to session {sid}: {exc}") from exc
        except BaseException:
            await client.close()
            raise
        if self.role not in view["roles"]:
            await client.close()
            raise StartupFailed(
                f"session {sid} holds roles {view['roles']}, not {self.role!r}; "
                "pass one of those as --role"
            )
        await client.start()
        self._keep(client)
        self.client = client
        return client

    def _mint_failure(self, exc: RequestFailed) -> str:
        if exc.code != "roles_conflict":
            return f"cannot join: {exc}"
        body = exc.body if isinstance(exc.body, dict) else {}
        holders = ", ".join(
            f"{c.get('role')!r} by {c.get('sid')}"
            for c in body.get("error", {}).get("conflicts", [])
            if isinstance(c, dict)
        )
        where = f" in {self.state_file}" if self.state_file is not None else ""
        return (
            f"role already held ({holders or exc.message}); if that session was this "
            f"operator's, it is not kept{where}: attach to it with --sid/--token, or wait "
            "until the server expires it (session_idle_ttl_s)"
        )

    # -- the three faces ---------------------------------------------------

    async def read_line(self, question: str) -> str:
        """One answer from the person at the terminal, one question at a time."""
        if not self.interactive:
            raise Decline("no person at the terminal to answer")
        async with self._prompt_lock:
            return await self._read_line_locked(question)

    async def _read_line_locked(self, question: str) -> str:
        self.say(question)
        line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        if not line:
            raise Decline("the terminal closed its input")
        return line.strip()

    async def fill_form(self, header: str, schema: dict[str, Any]) -> dict[str, Any]:
        """Ask for each field of ``answer_schema`` in turn (one form at a time),
        typed as the schema says; a bad entry is asked again."""
        if not self.interactive:
            raise Decline("no person at the terminal to answer")
        required = set(schema.get("required", []))
        answer: dict[str, Any] = {}
        async with self._prompt_lock:
            self.say(header)
            for name, prop in schema["properties"].items():
                prompt = field_prompt(name, prop, name in required)
                while True:
                    text = await self._read_line_locked(prompt)
                    try:
                        value = parse_field(prop, text, name in required)
                    except ValueError as exc:
                        self.say(f"  {exc}")
                        continue
                    if value is not _SKIP:
                        answer[name] = value
                    break
        return answer

    async def on_hook_before(self, frame: dict[str, Any]) -> tuple[bool, str | None]:
        what = (
            f"spawn of {frame['agent']!r} for task {frame['task_id']} (attempt {frame['attempt']})"
        )
        if self.approve == "all":
            self.say(f"approved {what}")
            return True, None
        if self.approve == "none":
            self.say(f"rejected {what}")
            return False, "rejected by the operator (--approve none)"
        answer = await self.read_line(f"approve {what}? [y/N]")
        ok = answer.lower() in ("y", "yes")
        return ok, None if ok else "rejected at the terminal"

    async def on_ask(self, frame: dict[str, Any]) -> Any:
        question = json.dumps(frame["question"], indent=2)
        who = "its worker" if frame.get("parent_req_id") else "task"
        header = f"task {frame['task_id']} ({who}) asks:\n{question}"
        schema = frame.get("answer_schema")
        if schema is not None:
            return await self.fill_form(header, schema)
        line = await self.read_line(f"{header}\nyour answer:")
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            return line

    async def on_spawn(self, frame: dict[str, Any]) -> Any:
        if self.command is None:
            await self.read_line(f"{frame['directive']}\npress Enter once the sub-agent is done")
            return {}
        trace = frame.get("trace")
        async with WorkerClient(self.base_url, frame["worker_handle"], trace=trace) as worker:
            prompt = (await worker.prompt())["prompt"]
            stdin = prompt if isinstance(prompt, str) else json.dumps(prompt)
            env = {
                **os.environ,
                "TASK_ID": frame["task_id"],
                "ATTEMPT": str(frame["attempt"]),
                "AGENT": frame["agent"],
                "WORKER_HANDLE": frame["worker_handle"],
                "BASE_URL": self.base_url,
                # The spawn's W3C context: the command's own calls continue the trace.
                **trace_env(trace),
            }
            returncode, stdout, stderr = await run_in_own_group(self.command, stdin.encode(), env)
            if stderr:  # still shown here, as when it went straight to this terminal
                self.err.write(stderr.decode(errors="replace"))
                self.err.flush()
            failure = exec_failure(returncode, stderr) if returncode else None
            await worker.result(stdout.decode(errors="replace"), ok=not failure, error=failure)
        self.say(f"task {frame['task_id']}: command exited {returncode}")
        return {}

    async def on_hook_after(self, frame: dict[str, Any]) -> None:
        result = frame["result"]
        self.say(f"task {frame['task_id']} attempt {frame['attempt']}: ok={result['ok']}")

    async def on_cancel(self, frame: dict[str, Any]) -> None:
        self.say(f"withdrawn {frame['req_id']}: {frame['reason']}")

    # -- the whole run -----------------------------------------------------

    async def run(self) -> int:
        """Serve until Ctrl-C / SIGTERM, then leave (delete the session and the
        state file).  Start-up failures propagate, with nothing left open."""
        how, client = await self.start()
        # Only now: a Ctrl-C during start-up interrupts it (nothing is left open).
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        kept = f" (kept in {self.state_file})" if self.state_file is not None else ""
        self.say(f"{how} as {client.sid} with role {self.role!r}{kept}; waiting for work")
        runner = asyncio.create_task(client.wait_closed())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if runner.done():
            exc = runner.exception()
            await client.close()
            if isinstance(exc, SessionGone):
                self._forget()
                self.warn(f"the server ended this session ({exc})")
                return 1
            if isinstance(exc, SessionTakenOver):
                # Asked for (--take-over): the session and its state file are the
                # newer operator's now, so neither is deleted, and this is no failure.
                self.warn(f"{exc}; stopping, and leaving the session to it")
                return 0
            self.say(f"stopped: {exc}")
            return 0 if exc is None else 1
        try:
            await client.leave()
        except (RequestFailed, aiohttp.ClientError, OSError) as exc:
            await client.close()
            self.warn(
                f"could not delete session {client.sid} ({exc}); "
                f"it stays kept{kept} and the next start resumes it"
            )
            return 1
        self._forget()
        self.say("left")
        return 0
