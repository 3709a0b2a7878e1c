"""The app key of the operator directory, owned by the operators package."""

from __future__ import annotations

from aiohttp import web

from operator_server.operators.directory import OperatorDirectory

DIRECTORY = web.AppKey("directory", OperatorDirectory)
