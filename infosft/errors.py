"""The one error type users see: a single line naming what is wrong and where."""


class InfosftError(Exception):
    """A user-facing error. The CLI prints ``str(err)`` on one line, no traceback."""


class InputError(InfosftError, ValueError):
    """Bad input data: names the file, the row (1-based) and the field when known."""

    def __init__(self, reason: str, file: str | None = None, row: int | None = None,
                 field: str | None = None, unit: str = "row"):
        self.reason, self.file, self.row, self.field = reason, file, row, field
        where = ", ".join(p for p in (
            str(file) if file else None,
            f"{unit} {row}" if row is not None else None,
            f"field '{field}'" if field else None) if p)
        super().__init__(f"{where}: {reason}" if where else reason)
