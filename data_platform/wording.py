"""How a count reads in the messages people see."""

from __future__ import annotations


def plural(count: int, word: str) -> str:
    """`1 invoice`, `0 invoices`, `1,234 invoices`: the count with thousands separators, the word in the
    singular for exactly one."""
    return f"{count:,} {word}{'' if count == 1 else 's'}"
