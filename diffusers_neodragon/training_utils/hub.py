# SPDX-License-Identifier: Apache-2.0
"""Publishing a run on the Hugging Face Hub (``--push_to_hub``): create the repository, upload the final folder."""

from __future__ import annotations

import os
from pathlib import Path


def create_hub_repo(args) -> str | None:
    """Create (or reuse) the Hub repository of ``--hub_model_id`` (default: the output folder's name)."""
    if not getattr(args, "push_to_hub", False):
        return None
    from huggingface_hub import create_repo  # noqa: PLC0415

    return create_repo(
        repo_id=args.hub_model_id or Path(args.output_dir).name, exist_ok=True, token=getattr(args, "hub_token", None)
    ).repo_id


def push_folder_to_hub(repo_id: str, folder: str | os.PathLike, token: str | None = None) -> None:
    """Upload the final folder, leaving out checkpoints, logs and training data kept there."""
    from huggingface_hub import upload_folder  # noqa: PLC0415

    upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        commit_message="End of training",
        ignore_patterns=["checkpoint-*", "step_*", "epoch_*", "logs/*", "*.pt", "generated-clips/*"],
        token=token,
    )

