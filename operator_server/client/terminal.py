"""The ready-made operator: ``operator-server operator --role NAME``.

It joins under one role and serves all three faces from a terminal:

* ``hook_before``: ``--approve all`` approves, ``none`` rejects, ``ask`` asks the
  person at the terminal (y/N).
* ``ask``: the question is printed and the typed line is the answer (JSON if it
  parses, else text).  With no terminal there is nobody to answer, so the ask
  fails with that reason rather than approving anything.
* ``spawn``: with ``--exec COMMAND`` the command is the sub-agent: the prompt on
  its stdin, ``TASK_ID``, ``ATTEMPT``, ``AGENT``, ``WORKER_HANDLE`` and
  ``BASE_URL`` in its environment; its stdout is posted as the result and a zero
  exit code as ``ok``.  Without ``--exec`` the directive is printed and Enter
  acknowledges (the sub-agent posts its own result with the handle).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from typing import Any, TextIO

from operator_server.client.http import WorkerClient
from operator_server.client.operator import OperatorClient, SessionGone


class TerminalOperator:
    def __init__(
        self,
        base_url: str,
        *,
        role: str,
        approve: str = "all",
        command: str | None = None,
        api_token: str | None = None,
        out: TextIO = sys.stdout,
        interactive: bool | None = None,
    ) -> None:
        self.approve = approve
        self.command = command
        self.out = out
        self.interactive = sys.stdin.isatty() if interactive is None else interactive
        self._prompt_lock = asyncio.Lock()
        self.client = OperatorClient(
            base_url,
            roles=[role],
            desc=f"operator-server operator ({'exec' if command else 'terminal'})",
            api_token=api_token,
            on_ask=self.on_ask,
            on_hook_before=self.on_hook_before,
            on_hook_after=self.on_hook_after,
            on_spawn=self.on_spawn,
            on_cancel=self.on_cancel,
        )

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    async def read_line(self, question: str) -> str:
        """One answer from the person at the terminal, one question at a time."""
        if not self.interactive:
            raise RuntimeError("no person at the terminal to answer")
        async with self._prompt_lock:
            self.say(question)
            line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        if not line:
            raise RuntimeError("the terminal closed its input")
        return line.strip()

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
        line = await self.read_line(f"task {frame['task_id']} asks:\n{question}\nyour answer:")
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            return line

    async def on_spawn(self, frame: dict[str, Any]) -> Any:
        if self.command is None:
            await self.read_line(f"{frame['directive']}\npress Enter once the sub-agent is done")
            return {}
        async with WorkerClient(self.client.base_url, frame["worker_handle"]) as worker:
            prompt = (await worker.prompt())["prompt"]
            stdin = prompt if isinstance(prompt, str) else json.dumps(prompt)
            env = {
                **os.environ,
                "TASK_ID": frame["task_id"],
                "ATTEMPT": str(frame["attempt"]),
                "AGENT": frame["agent"],
                "WORKER_HANDLE": frame["worker_handle"],
                "BASE_URL": self.client.base_url,
            }
            proc = await asyncio.create_subprocess_shell(
                self.command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                env=env,
            )
            try:
                stdout, _ = await proc.communicate(stdin.encode())
            except asyncio.CancelledError:
                proc.kill()
                await proc.wait()
                raise
            ok = proc.returncode == 0
            await worker.result(stdout.decode(errors="replace"), ok=ok)
        self.say(f"task {frame['task_id']}: command exited {proc.returncode}")
        return {}

    async def on_hook_after(self, frame: dict[str, Any]) -> None:
        result = frame["result"]
        self.say(f"task {frame['task_id']} attempt {frame['attempt']}: ok={result['ok']}")

    async def on_cancel(self, frame: dict[str, Any]) -> None:
        self.say(f"withdrawn {frame['req_id']}: {frame['reason']}")

    async def run(self) -> int:
        """Serve until Ctrl-C / SIGTERM, then leave (delete the session)."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await self.client.start()
        self.say(
            f"joined as {self.client.sid} with role {self.client.roles[0]!r}; waiting for work"
        )
        runner = asyncio.create_task(self.client.wait_closed())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if runner.done():
            exc = runner.exception()
            self.say(f"stopped: {exc}")
            await self.client.close()
            return 1 if isinstance(exc, SessionGone) else 0
        await self.client.leave()
        self.say("left")
        return 0
