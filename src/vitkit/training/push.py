"""Share a trained model directory on the Hugging Face Hub (``vitkit push DIR REPO_ID``).

``huggingface_hub`` does the work: ``HfApi.create_repo`` (kept if it exists) and
``upload_folder``, with the token ``hf auth login`` stored or ``$HF_TOKEN``. The directory is
checked first (a model: ``config.json``; its card: ``README.md``, which vitkit writes into every
model directory it trains), and every way the upload can fail without a network, a login or
the right to write ends in one line that says what to do.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

from vitkit.errors import CheckpointError
from vitkit.options import option


@dataclass
class PushSettings:
    directory: str = option(help="model directory to upload", group="push", cli=False)
    repo_id: str = option(help="Hub repository, owner/name", group="push", cli=False)
    private: bool = option(False, "create the repository as private", group="push")
    revision: str | None = option(
        None, "branch to upload to", group="push", default_help="the repository's default branch"
    )
    commit_message: str = option("Upload model trained with vitkit", "commit message", group="push")


def check_push(settings: PushSettings) -> Path:
    """The directory to upload, after the checks that need no network."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    directory = Path(settings.directory)
    if not (directory / "config.json").is_file():
        raise CheckpointError(
            f"{directory}: not a model directory (no config.json); push a directory vitkit or "
            "transformers saved, e.g. OUT/best of `vitkit train`"
        )
    try:
        validate_repo_id(settings.repo_id)
    except HFValidationError:
        raise CheckpointError(
            f"{settings.repo_id!r} is not a Hub repository id: use owner/name, e.g. my-lab/vit-tiles"
        ) from None
    if "/" not in settings.repo_id:
        raise CheckpointError(
            f"{settings.repo_id!r}: name the owner too (owner/name, e.g. my-lab/{settings.repo_id})"
        )
    return directory


def push(settings: PushSettings) -> str:
    """Create the repository if needed, upload the directory; the commit's URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    directory = check_push(settings)
    not_sent = f"{directory} was not uploaded"
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        raise CheckpointError(f"HF_HUB_OFFLINE is set: {not_sent}; unset it to upload")
    api = HfApi()
    try:
        api.create_repo(settings.repo_id, private=settings.private, exist_ok=True)
        commit = api.upload_folder(
            folder_path=str(directory),
            repo_id=settings.repo_id,
            revision=settings.revision,
            commit_message=settings.commit_message,
        )
    except OfflineModeIsEnabled:
        raise CheckpointError(f"huggingface_hub is in offline mode: {not_sent}") from None
    except HfHubHTTPError as error:
        raise CheckpointError(_http_problem(error, settings.repo_id, not_sent)) from None
    except Exception as error:
        if _is_network_error(error):
            raise CheckpointError(
                f"cannot reach the Hugging Face Hub ({type(error).__name__}: {error}): "
                f"{not_sent}; retry with a network connection"
            ) from None
        raise
    return str(commit.commit_url)


def _http_problem(error: object, repo_id: str, not_sent: str) -> str:
    response = getattr(error, "response", None)
    status = getattr(response, "status_code", None)
    if status == 401:
        return f"the Hub refused the credentials: {not_sent}; log in with `hf auth login` or set HF_TOKEN"
    if status == 403:
        return f"no right to write to {repo_id}: {not_sent}; use a token with write access"
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return f"the Hub answered {status}: {first_line}: {not_sent}"


def _is_network_error(error: BaseException) -> bool:
    """A connection that could not be made (socket errors, httpx/requests transport errors)."""
    names = {cls.__name__ for cls in type(error).__mro__}
    network = isinstance(error, ConnectionError | TimeoutError | socket.gaierror)
    return network or bool(names & {"TransportError", "ConnectionError", "Timeout"})
