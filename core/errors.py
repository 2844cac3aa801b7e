"""Typed domain errors. The API maps each class to one (status, code) pair in one table."""


class DomainError(Exception):
    """Base of every error a decider may raise."""

    def __init__(self, error: str, detail: str = "") -> None:
        super().__init__(error)
        self.error = error
        self.detail = detail


class ValidationFailed(DomainError):
    """A field of the request is not acceptable."""

    def __init__(self, field: str, error: str, detail: str = "") -> None:
        super().__init__(error, detail or f"field: {field}")
        self.field = field


class NotFound(DomainError):
    """The target resource does not exist."""


class Conflict(DomainError):
    """The resource already exists, or a concurrent change won."""


class Forbidden(DomainError):
    """The caller may not do this."""


class LimitExceeded(DomainError):
    """A domain cap (max_mailboxes, max_aliases, quota_total_bytes) would be exceeded."""
