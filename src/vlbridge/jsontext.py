"""`loads(text)`: json.loads that turns every way a hostile document can break the parser into
`json.JSONDecodeError`, so each reader's existing "not valid JSON" handling covers them too.

json.loads itself raises RecursionError for arrays or objects nested deeper than the interpreter's
recursion limit, and ValueError for integers longer than `sys.get_int_max_str_digits()` digits
(4300 by default); neither is a JSONDecodeError, so readers that catch only that let them escape as
tracebacks. This is a base layer: it imports nothing of vlbridge.
"""

from __future__ import annotations

import json


def loads(text: str | bytes):
    """json.loads(text); JSONDecodeError (a ValueError) for malformed, too deeply nested or too long-integer JSON."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise
    except RecursionError as err:
        raise json.JSONDecodeError("nested too deeply (more levels than Python's recursion limit)", _str(text), 0) from err
    except ValueError as err:
        if "integer string conversion" not in str(err):
            raise
        raise json.JSONDecodeError("an integer with too many digits", _str(text), 0) from err


def _str(text: str | bytes) -> str:
    return text if isinstance(text, str) else text.decode("utf-8", "replace")
