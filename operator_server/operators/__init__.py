"""Operators over WebSocket: login, session, socket pump (the frames are in ``wire.frames``)."""
