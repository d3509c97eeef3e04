"""Errors whose message is written for the person using the app and is shown as is."""

__all__ = ["UserInputError", "DataError", "CheckpointError", "ConfigError"]


class UserInputError(ValueError):
    """Something the user gave us cannot be used; the message says what to do."""


class DataError(UserInputError):
    """Images, archives or datasets that cannot be used."""


class CheckpointError(UserInputError):
    """A weights file that cannot be loaded."""


class ConfigError(UserInputError):
    """Settings that cannot work together."""
