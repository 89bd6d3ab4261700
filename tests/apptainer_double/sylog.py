"""Messages as Apptainer's pkg/sylog prints them (no colours), and its fatal error."""

from __future__ import annotations

import sys


class Fatal(Exception):
    """`FATAL:   <message>`, exit 255 (sylog.Fatalf)."""


def log(level: str, text: str) -> None:
    sys.stderr.write(f"{level + ':':<8} {text.rstrip(chr(10))}\n")


def go_quote(text: str) -> str:
    """Go's %q of a string (strconv.Quote) for the characters paths and values hold."""
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif char == "\n":
            out.append("\\n")
        elif char == "\t":
            out.append("\\t")
        elif char.isprintable():
            out.append(char)
        elif ord(char) < 0x10000:
            out.append(f"\\x{ord(char):02x}" if ord(char) < 0x80 else f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    return '"' + "".join(out) + '"'
