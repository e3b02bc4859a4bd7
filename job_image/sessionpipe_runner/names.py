"""Names from the sessions volume, as database keys and as text for a terminal.

A file name is any bytes but ``/`` and NUL. Python lists the bytes that are not UTF-8 as lone
surrogates, which DuckDB (whose text must be UTF-8) refuses: :func:`key_part` writes them as
``\\xNN`` instead. A name may also hold a newline or another control character, which is valid
UTF-8 and kept in keys as it is, but :func:`printable` escapes it wherever a name is printed in a
text table, so one name cannot break the table or forge a line of it.
"""

from __future__ import annotations


def key_part(name: str) -> str:
    """``name`` as a key component: itself when it is UTF-8, else its bytes with ``\\xNN`` escapes.

    The escaped form is stable (the same bytes always give the same key) but may equal a real,
    decodable name; the scan skips the undecodable file then (``name_collision``).
    """
    if name.isascii():
        return name
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return name


def valid_text(text: str) -> str:
    """``text`` with any lone surrogate (an undecodable name in a message) escaped, so it is UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


#: C0 and C1 control characters, DEL, and the Unicode line and paragraph separators.
_CONTROL = [*range(0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029]
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_ESCAPES = {code: _NAMED.get(chr(code), f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}") for code in _CONTROL}


def printable(text: str) -> str:
    """``text`` on one line: control characters and line separators written as escapes."""
    return text.translate(_ESCAPES)
