"""Schemathesis hooks for scripts/fuzz-api.

An Idempotency-Key names one request: reusing one with another body is refused (422
IDEMPOTENCY_001), as documented. Deterministic generation would reuse the same few keys for
every POST and so test little else; each generated key is made unique instead (a counter,
so runs stay reproducible)."""

import itertools

import schemathesis

_keys = itertools.count(1)


@schemathesis.hook
def before_call(ctx, case, kwargs):
    """Runs before every request of every phase."""
    if case.headers and "Idempotency-Key" in case.headers:
        case.headers["Idempotency-Key"] = f"fuzz-{next(_keys)}"
