"""The exceptions vitkit raises, so callers (CLI, server) can map them to messages and statuses.

Every error names the thing that failed (a file, a URL, a checkpoint key) and, where there is
one, the fix. The server maps these classes to HTTP statuses; the CLI prints ``str(error)``.
Only the server's own HTTP answers (overloaded, upload too slow, ...) live elsewhere, in
``vitkit.serve.errors``: nothing below the server raises them.
"""

from __future__ import annotations


class VitkitError(Exception):
    """Base class for all errors vitkit raises on purpose."""


class CheckpointError(VitkitError):
    """A checkpoint could not be found, recognised, or matched to the model."""


class ImageDecodeError(VitkitError):
    """An input could not be read as an image (not an image, truncated, too large, ...)."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


class ImageTooLargeError(ImageDecodeError):
    """The image (bytes or pixels) is over the configured cap: a decompression bomb, say."""


class UnsupportedImageError(ImageDecodeError):
    """The bytes are not an image in one of the allowed raster formats."""


class ProcessorConfigError(CheckpointError):
    """A preprocessor_config.json that cannot be used (missing, unreadable, bad values)."""


class FetchError(VitkitError):
    """Fetching an image URL failed. ``http_status`` is what a server should answer."""

    http_status = 502


class BadURLError(FetchError):
    """The URL cannot be parsed (no host, bad port, ...): the caller's input is wrong."""

    http_status = 400


class URLNotAllowedError(FetchError):
    """The URL's scheme or resolved address is refused (SSRF guard)."""

    http_status = 400


class FetchTooLargeError(FetchError):
    """The remote body went over the byte cap while streaming."""

    http_status = 413


class FetchTimeoutError(FetchError):
    """The remote host did not connect or answer in time."""

    http_status = 504


class NoClassificationHeadError(VitkitError):
    """``predict`` was called on a checkpoint that has no classification head."""


class HeadError(VitkitError):
    """A head setting that cannot apply: a threshold on a softmax head, a regression head, ..."""


class TTAError(VitkitError):
    """A test-time augmentation that cannot apply: unknown mode, quarter turns of a non-square input."""


class UnsupportedOperationError(VitkitError):
    """The model cannot do what was asked (attention maps of a CNN, int8 of a ResNet, ...).

    The message names the model type, the operation and what to use instead.
    """


class UnsupportedPrecisionError(VitkitError):
    """The precision is unknown, or this device cannot run it at a useful speed."""


class OnnxError(VitkitError):
    """Exporting to or running an ONNX file failed."""


class SlideError(VitkitError):
    """A whole-slide image could not be used (``vitkit.slides``); the message names the slide."""


class SlideFormatError(SlideError):
    """The file is not a slide any reader here understands (or needs a missing package)."""


class SlideReadError(SlideError):
    """The slide opened but its pixels could not be read: a truncated or corrupt file."""


class SlideLevelError(SlideError):
    """The level, resolution (mpp) or tile size asked for does not fit this slide."""


class NoTissueError(SlideError):
    """The tissue detector found no tile with enough tissue to run."""


class EngineError(VitkitError):
    """A batch job cannot run on its engine: Ray not installed, an output folder from another
    job, a source with no image column, ..."""


class DatasetError(VitkitError):
    """The image folder is missing, empty, inconsistent, or holds unreadable images."""


class TrainingError(VitkitError):
    """Training cannot start or cannot go on (impossible settings, diverged loss, foreign run
    folder, a training state that is not safe to load)."""


class CompareError(VitkitError):
    """The comparison cannot run (bad rows, data without a test split, changed settings)."""


class PoolError(UnsupportedOperationError):
    """The model cannot give the embedding asked for (a pooler it lacks, [CLS] it has not, ...)."""


class ServeSettingsError(VitkitError):
    """A ``vitkit serve`` setting that cannot work; the message names the option and the fix."""


class UsageError(VitkitError):
    """Settings that cannot go together (an option the chosen engine or mode cannot honour):
    refused before any work; the command line exits 2 with the message, one line."""
