"""The gateway's own exceptions; outside errors (S3, SQL, DIMSE) are translated at one
boundary each."""

from gateway.dimse_status import Status


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """A configuration file or setting is invalid; the message names what and where."""


class StorageError(GatewayError):
    """The object store could not complete an operation (disk, permissions, S3 down)."""


class DatabaseError(GatewayError):
    """The database could not record or read the index."""


class InvalidInstance(GatewayError):
    """A received DICOM instance cannot be accepted; ``reason`` says why, ``status`` answers."""

    def __init__(self, reason: str, status: Status = Status.CANNOT_UNDERSTAND) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class PixelDataError(GatewayError):
    """Pixel Data contradicts what the dataset declares about it, or cannot be walked;
    the message says which values disagree."""


class UnknownStudy(GatewayError):
    """No study with that Study Instance UID is indexed."""
