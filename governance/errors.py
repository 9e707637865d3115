class GovernanceError(Exception):
    """A governance request refused for a reason the caller can act on."""

    code = "governance_error"

    def __init__(self, message: str, *, fields: dict | None = None):
        super().__init__(message)
        self.message = message
        self.fields = fields or {}
