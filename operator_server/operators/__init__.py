"""Operators over WebSocket: login, wire protocol, session, socket pump."""
