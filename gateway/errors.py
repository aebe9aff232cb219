"""The error root as seen from the gateway, and errors shared by its packages."""

from __future__ import annotations

from rating_core.errors import CreditgateError

__all__ = ["CreditgateError", "ConfigError", "NotFound", "InvalidInput"]


class ConfigError(CreditgateError):
    """The TOML configuration is unreadable or holds a value out of range."""


class NotFound(CreditgateError):
    """An organization, user, trunk or other admin record does not exist."""

    status_hint = 404


class InvalidInput(CreditgateError):
    """An admin or API input that is malformed; ``field`` names what was wrong."""

    status_hint = 422

    def __init__(self, message: str, field: str | None = None) -> None:
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)
