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


# CPython 3.11 before 3.11.8 can fail `ast.parse` deep in a call stack with "SystemError: AST
# constructor recursion depth mismatch" (python/cpython#106905). Hypothesis parses the source
# of a filter's lambda only to describe it; on deeply nested request schemas that parse runs
# deep enough to hit the bug and aborts the operation's tests. Such a parse is retried on a
# fresh thread (a shallow stack): the cases generated and the checks are unchanged.
import ast
import sys
import threading

if sys.version_info[:2] == (3, 11) and sys.version_info < (3, 11, 8):
    _parse = ast.parse

    def _parse_on_a_shallow_stack(*args, **kwargs):
        try:
            return _parse(*args, **kwargs)
        except SystemError:
            out = {}

            def run():
                try:
                    out["tree"] = _parse(*args, **kwargs)
                except BaseException as e:  # re-raised on the caller's thread
                    out["error"] = e

            t = threading.Thread(target=run)
            t.start()
            t.join()
            if "error" in out:
                raise out["error"]
            return out["tree"]

    ast.parse = _parse_on_a_shallow_stack
