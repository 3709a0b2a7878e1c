"""operator_server: seat external Operators inside an agent-work engine over a WebSocket."""

__version__ = "0.1.0"
