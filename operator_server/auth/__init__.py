"""Who is calling: principals, their scopes, and how a credential becomes one.

Below ``http/`` and ``operators/`` (both ask it who a caller is), above the
store (keys are stored there).  The engine knows nothing of it: it records the
principal's *name* where a decision needs one, as a plain string.
"""
