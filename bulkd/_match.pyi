"""Types of the C extension built from _match.c (see bulkd.patterns)."""

def walk(
    offsets: object,
    data: object,
    offset: int,
    length: int,
    table: bytes,
    accept: bytes,
    start: int,
    out: object,
) -> None: ...
def scan(
    offsets: object, data: object, offset: int, length: int, below: int, empty: object
) -> tuple[bool, bool, int, int]: ...
