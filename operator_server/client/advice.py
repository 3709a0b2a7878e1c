"""What a person at a command line should do about a failure, in their own terms.

The daemon's error messages speak HTTP (``send Authorization: Bearer
<api_token>``); a user of ``operator-server task``, ``operator`` or ``mcp``
never writes a header, they pass a flag or set a variable.  Every command
words the same failure the same way, so the sentences live here once.
"""

from __future__ import annotations

import aiohttp

START_HINT = (
    "is the daemon running? (`make run` in the checkout, `operator-server serve` "
    "where the package is installed; or point --url / OPERATOR_SERVER_URL at it)"
)


def not_reached(url: str, exc: BaseException) -> str:
    """The URL tried and why it failed, in a few words: never aiohttp's
    ``Cannot connect to host ... ssl:default [Connect call failed ...]``."""
    return f"cannot reach {url} ({_reason(exc)})"


def unreachable(url: str, exc: BaseException) -> str:
    """The daemon did not answer at ``url``: what was tried, and how to start it."""
    return f"{not_reached(url, exc)}: {START_HINT}"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        error = exc.os_error
        if isinstance(error, ConnectionRefusedError):
            return "connection refused: nothing listens there"
        text = error.strerror or str(error) or type(error).__name__
        return text[0].lower() + text[1:] if text else type(error).__name__
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "it closed the connection without answering"
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, aiohttp.InvalidURL):
        return "not a URL"
    return str(exc) or type(exc).__name__


# Where every client command takes its credential (``--api-token`` and
# ``OPERATOR_SERVER_API_TOKEN`` still work, as aliases: the advice names the new spelling).
CREDENTIAL_WHERE = "--api-key KEY or OPERATOR_SERVER_API_KEY"
CREDENTIAL_WHAT = "an API key (osk_…) or the daemon's api_token"


def api_token_refused(url: str, sent: bool) -> str:
    """A 401 on a route that takes an API key or the daemon's ``api_token``."""
    what = "refused the API key given" if sent else "wants an API key and none was given"
    return (
        f"the daemon at {url} {what}: pass --api-key KEY or set "
        f"OPERATOR_SERVER_API_KEY to {CREDENTIAL_WHAT}"
    )


def scope_refused(role_hint: str) -> str:
    """A 403: the credential is known, but its scopes do not cover what was asked."""
    return (
        f"use an API key whose scopes let it {role_hint}: pass {CREDENTIAL_WHERE} "
        "(an admin mints one with `operator-server keys create`)"
    )


def session_token_refused(url: str, sid: str) -> str:
    """A 401 on a route that takes an operator session's own token."""
    return (
        f"cannot attach to session {sid}: the daemon at {url} refused its token: pass "
        "the token that session was minted with as --token, or leave out --sid/--token "
        "to join as a new session"
    )
