"""Typed errors with stable codes.

Every error the daemon reports to a person carries a `code` that never changes
meaning (scripts match on it), a message saying what went wrong, and a `hint`
saying what to do about it. Only the service's main loop catches broad
exceptions; everything else raises one of these.
"""

from __future__ import annotations

from enum import StrEnum


class Code(StrEnum):
    CONFIG_INVALID = "CONFIG_INVALID"
    MODEL_UNAVAILABLE = "MODEL_UNAVAILABLE"
    MODEL_MISMATCH = "MODEL_MISMATCH"
    DEVICE_UNAVAILABLE = "DEVICE_UNAVAILABLE"
    MODEL_INVALID = "MODEL_INVALID"
    UNREADABLE_IMAGE = "UNREADABLE_IMAGE"
    UNSUPPORTED_FORMAT = "UNSUPPORTED_FORMAT"
    IMAGE_TOO_LARGE = "IMAGE_TOO_LARGE"
    IMAGE_TOO_SMALL = "IMAGE_TOO_SMALL"
    SYMLINK_SKIPPED = "SYMLINK_SKIPPED"
    LINK_OUTSIDE_ROOTS = "LINK_OUTSIDE_ROOTS"
    LIMIT_EXCEEDED = "LIMIT_EXCEEDED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    NO_IMAGES = "NO_IMAGES"
    INSUFFICIENT_DATA = "INSUFFICIENT_DATA"
    NOT_FOUND = "NOT_FOUND"
    INVALID_STATE = "INVALID_STATE"
    DISK_FULL = "DISK_FULL"
    STORE_UNAVAILABLE = "STORE_UNAVAILABLE"
    REDIS_UNAVAILABLE = "REDIS_UNAVAILABLE"
    WORKER_FAILED = "WORKER_FAILED"
    BATCH_FAILED = "BATCH_FAILED"
    CANCELLED = "CANCELLED"
    INTERNAL = "INTERNAL"


class ImgtrainError(Exception):
    """Base of every error the daemon raises on purpose."""

    code: Code = Code.INTERNAL
    default_hint: str = "See the daemon's log (journalctl -u imgtrain) for details."

    def __init__(self, message: str, *, hint: str | None = None, path: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint or self.default_hint
        self.path = path

    def __str__(self) -> str:
        return f"{self.code}: {self.message} ({self.hint})"


class ConfigError(ImgtrainError):
    code = Code.CONFIG_INVALID
    default_hint = "Fix the named key in config.yaml (every key is documented in README.md)."


class ModelUnavailable(ImgtrainError):
    code = Code.MODEL_UNAVAILABLE
    default_hint = (
        "Put the model files where the message says, then send SIGHUP (systemctl reload imgtrain)."
    )


class DeviceUnavailable(ModelUnavailable):
    """The configured accelerator is not there; like a missing model, batches wait for it."""

    code = Code.DEVICE_UNAVAILABLE
    default_hint = (
        "Set device: cpu (or auto) in config.yaml, or install a CUDA build of torch on a "
        "machine with an NVIDIA GPU; then send SIGHUP (systemctl reload imgtrain)."
    )


class ModelMismatch(ImgtrainError):
    code = Code.MODEL_MISMATCH


class ModelInvalid(ImgtrainError):
    """`imgtrain models import` was given something that is not the configured model."""

    code = Code.MODEL_INVALID
    default_hint = (
        "Nothing was installed. Check that the copy is complete (compare its sha256 with the "
        "source's) and that it is the model the config names."
    )


class ImageError(ImgtrainError):
    """A single photo could not be used; the batch goes on without it."""

    code = Code.UNREADABLE_IMAGE
    default_hint = "The photo was skipped; check that the file opens in an image viewer."


class UnreadableImage(ImageError):
    code = Code.UNREADABLE_IMAGE


class UnsupportedFormat(ImageError):
    code = Code.UNSUPPORTED_FORMAT
    default_hint = "Convert the file to JPEG, PNG, WebP, TIFF, BMP or GIF."


class ImageTooLarge(ImageError):
    code = Code.IMAGE_TOO_LARGE
    default_hint = "Raise decode.max_image_pixels in config.yaml if this photo is genuine."


class ImageTooSmall(ImageError):
    code = Code.IMAGE_TOO_SMALL
    default_hint = "Photos smaller than decode.min_side pixels are skipped."


class LinkOutsideRoots(ImgtrainError):
    """A dropped link leads outside every folder in inbox.link_roots; it is not followed."""

    code = Code.LINK_OUTSIDE_ROOTS
    default_hint = (
        "Add the folder (or one above it) to inbox.link_roots in config.yaml and reload"
        " (systemctl reload imgtrain), or copy the photos into the inbox instead."
    )


class LimitExceeded(ImgtrainError):
    """A dropped folder is over one of the inbox.max_* limits; it stays in the inbox."""

    code = Code.LIMIT_EXCEEDED
    default_hint = (
        "Raise the named inbox.max_* key in config.yaml and reload (systemctl reload"
        " imgtrain), or drop the folder in smaller parts."
    )


class InsufficientData(ImgtrainError):
    code = Code.INSUFFICIENT_DATA


class NotFound(ImgtrainError):
    code = Code.NOT_FOUND
    default_hint = "List what exists with `imgtrain queue` or `imgtrain people`."


class InvalidState(ImgtrainError):
    code = Code.INVALID_STATE


class StoreUnavailable(ImgtrainError):
    code = Code.STORE_UNAVAILABLE
    default_hint = "Check store.url in config.yaml and that the Chroma server is running."


class RedisUnavailable(ImgtrainError):
    code = Code.REDIS_UNAVAILABLE
    default_hint = (
        "Check workers.redis_url in config.yaml and that redis-server is running; the daemon"
        " keeps retrying and loses nothing."
    )


class WorkerFailed(ImgtrainError):
    """A chunk of a batch failed on the workers again and again (the batch fails)."""

    code = Code.WORKER_FAILED
    default_hint = (
        "See the workers' logs (journalctl -u imgtrain-worker); `imgtrain queue retry ID`"
        " runs the batch again."
    )


class DiskFull(ImgtrainError):
    code = Code.DISK_FULL
    default_hint = "Free space on the disk holding the status/data directory; the daemon retries."


class Cancelled(ImgtrainError):
    """Raised inside a batch when someone ran `imgtrain queue cancel`."""

    code = Code.CANCELLED
    default_hint = "Run `imgtrain queue retry ID` to finish the batch later."


class Interrupted(Exception):
    """Raised at a step boundary when the daemon is shutting down; the batch resumes on restart."""
