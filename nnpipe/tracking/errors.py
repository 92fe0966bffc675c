"""Errors the tracking layer raises; each message quotes the bad name or version."""

from __future__ import annotations


class TrackingError(RuntimeError):
    """Base class: something about runs, the registry or aliases went wrong."""


class UnknownModelError(TrackingError, LookupError):
    """No registered model has the given name."""


class UnknownVersionError(TrackingError, LookupError):
    """The registered model has no such version."""


class RegistrationRefused(TrackingError):
    """A model from a failed (or unfinished-and-failed) run must not be registered."""


class NotServableError(TrackingError):
    """A model version fails to load, or to predict on its own input example."""


class RollbackRefused(TrackingError):
    """The rollback target cannot be used: no previous champion, or it fails to load or predict."""


class LockTimeout(TrackingError):
    """The promotion lock could not be taken in time (another gate is stuck?)."""


class PromotionRefused(TrackingError):
    """A manual promotion of a version the gate rejected, without ``force``."""
