"""Wire formats and request reading shared by every surface.

The layer below both ``http/`` and ``operators/`` (and the client library): the
socket frames and the values both sides name, JSON field types, reading and
validating request bodies, bearer credentials.  It imports neither side, so
neither side needs the other.
"""
