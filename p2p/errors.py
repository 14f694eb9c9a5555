"""User-facing errors: the CLI prints these as one line and exits non-zero."""


class P2PError(Exception):
    """An error the user can act on; the message names the file or key and the reason."""


class DataError(P2PError):
    """Bad input data: unreadable image, wrong channels, size mismatch, missing partner..."""
