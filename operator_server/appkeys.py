"""Typed keys for the app-wide objects hung off the ``Application``."""

from __future__ import annotations

from aiohttp import web

from operator_server.background import Background
from operator_server.config import Settings
from operator_server.engine import Engine
from operator_server.operators.directory import OperatorDirectory
from operator_server.store import Store

SETTINGS = web.AppKey("settings", Settings)
BACKGROUND = web.AppKey("background", Background)
ENGINE = web.AppKey("engine", Engine)
DIRECTORY = web.AppKey("directory", OperatorDirectory)
STORE = web.AppKey("store", Store)
