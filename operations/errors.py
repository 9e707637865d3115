"""Domain errors of operations: each says why, and maps to one HTTP status in the API."""


class DomainError(Exception):
    code = "domain_error"
    status = 422

    def __init__(self, message: str, *, fields: dict | None = None):
        super().__init__(message)
        self.message = message
        self.fields = fields or {}


class ValidationFailed(DomainError):
    code = "invalid"
    status = 400


class TransitionNotAllowed(DomainError):
    code = "transition_not_allowed"
    status = 409


class Conflict(DomainError):
    code = "conflict"
    status = 409


class NotAllowed(DomainError):
    code = "forbidden"
    status = 403
