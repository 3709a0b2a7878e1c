"""operator_server: seat external Operators inside an agent-work engine over a WebSocket."""

# The release being prepared; CHANGELOG.md says how a version is cut.
__version__ = "0.2.0"
