"""Request bodies and image URLs -> spooled uploads, read once, as they stream in.

A raw body becomes one upload; a multipart body is parsed while it streams (python-multipart's
push parser), each file part written straight into its own spool, so no body is ever held
twice. A spool keeps its first ``SpoolBudget.per_upload`` bytes in memory while the shared
budget lasts, the rest in a temporary file. Nothing here decodes: uploads reach the decode
threads (and their pixel budget) only after the request is admitted.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from vitkit.images.fetch import FetchLimiter, FetchPolicy, fetch_into
from vitkit.serve.errors import BadInput, MissingField
from vitkit.serve.limits import SpoolBudget, UploadLimits, body_chunks


class Upload:
    """One image's bytes, spooled; ``name`` is how errors name it (file name, "body" or URL)."""

    def __init__(self, name: str, spools: SpoolBudget) -> None:
        self.name = name[:200]
        self.size = 0
        self._spools = spools
        self._granted = spools.reserve()
        # SpooledTemporaryFile(max_size=0) would never roll over: no grant means disk at once.
        # The file lives as long as the Upload: close() (the request's end) closes it.
        self._file: IO[bytes] = (
            tempfile.SpooledTemporaryFile(max_size=self._granted)  # noqa: SIM115
            if self._granted
            else tempfile.TemporaryFile()  # noqa: SIM115
        )

    @property
    def file(self) -> IO[bytes]:
        return self._file

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self.size += len(data)

    def read(self) -> bytes:
        """All the bytes (in a decode thread: the disk read happens off the event loop)."""
        self._file.seek(0)
        return self._file.read()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
            self._spools.release(self._granted)
            self._granted = 0


@contextmanager
def closing_on_error(uploads: list[Upload]) -> Iterator[list[Upload]]:
    try:
        yield uploads
    except BaseException:
        for upload in uploads:
            upload.close()
        raise


async def read_body(
    request: Request,
    limits: UploadLimits,
    spools: SpoolBudget,
    *,
    field_name: str | None = None,
    max_files: int = 16,
) -> list[Upload]:
    """The images in ``request``'s body: every file part of a multipart body (or only
    ``field_name``'s), else the raw body as one image. The caller closes them."""
    content_type = request.headers.get("content-type", "")
    chunks = body_chunks(request.receive, limits)
    uploads: list[Upload] = []
    with closing_on_error(uploads):
        if content_type.startswith("multipart/form-data"):
            parts = _MultipartUploads(content_type, spools, field_name, max_files, uploads)
            async for chunk in chunks:
                parts.feed(chunk)
            if not uploads:
                wanted = f"file field named {field_name!r}" if field_name else "file field"
                raise MissingField(f"the multipart body has no {wanted}: send the image in one")
        else:
            uploads.append(Upload("body", spools))
            async for chunk in chunks:
                uploads[0].write(chunk)
    return uploads


class _MultipartUploads:
    """python-multipart callbacks that write each wanted file part into its own Upload."""

    def __init__(
        self,
        content_type: str,
        spools: SpoolBudget,
        field_name: str | None,
        max_files: int,
        uploads: list[Upload],
    ) -> None:
        _, options = parse_options_header(content_type)
        boundary = options.get(b"boundary")
        if not boundary:
            raise BadInput("multipart/form-data without a boundary: send a well-formed form")
        self.spools, self.field_name, self.max_files, self.uploads = (
            spools,
            field_name,
            max_files,
            uploads,
        )
        self.headers: dict[bytes, bytes] = {}
        self.header_field = b""
        self.header_value = b""
        self.current: Upload | None = None  # the part being written, None for parts we skip
        try:
            self.parser = MultipartParser(
                boundary,
                {
                    "on_part_begin": self._part_begin,
                    "on_header_field": self._header_field,
                    "on_header_value": self._header_value,
                    "on_header_end": self._header_end,
                    "on_headers_finished": self._headers_finished,
                    "on_part_data": self._part_data,
                },
            )
        except (FormParserError, ValueError) as error:
            raise BadInput(f"malformed multipart/form-data header: {error}") from None

    def feed(self, chunk: bytes) -> None:
        try:
            self.parser.write(chunk)
        except (FormParserError, ValueError) as error:
            raise BadInput(f"malformed multipart/form-data body: {error}") from None

    def _part_begin(self) -> None:
        self.headers, self.current = {}, None

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def _header_end(self) -> None:
        self.headers[self.header_field.lower()] = self.header_value
        self.header_field = self.header_value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self.headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("latin-1")
        filename = options.get(b"filename")
        if filename is None or (self.field_name is not None and name != self.field_name):
            return  # a text field, or another file field: skipped (the body cap bounds it)
        if len(self.uploads) >= self.max_files:
            raise BadInput(f"more than {self.max_files} files in one request: send fewer")
        self.current = Upload(filename.decode("utf-8", "replace") or name, self.spools)
        self.uploads.append(self.current)

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self.current is not None:
            self.current.write(data[start:end])


async def fetch_upload(
    url: str, policy: FetchPolicy, limiter: FetchLimiter, spools: SpoolBudget
) -> Upload:
    """The image at ``url`` (fetched on the event loop, checked by ``vitkit.images.fetch``)."""
    upload = Upload(url, spools)
    with closing_on_error([upload]):
        await fetch_into(url, upload.file, policy=policy, limiter=limiter)
        upload.size = upload.file.tell()
    return upload
