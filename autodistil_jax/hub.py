"""Uploads of exported students to the Hugging Face Hub (config.export.push_to_hub).

Each export goes to its own model repository, `<push_to_hub>-<export name>` (e.g.
`me/minilm-autodistil-base-L6_H288_R2.5_A12`), created if missing, with its card's usage snippets
pointing at the repository instead of the local folder. The repository ids and the token are
checked before anything is exported; the upload itself is huggingface_hub's create_repo and
upload_folder.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path


def repo_ids(prefix: str, export_names: Iterable[str]) -> dict[str, str]:
  """export name -> the repository it is pushed to; refused (ValueError) when any id is invalid."""
  from huggingface_hub.utils import HFValidationError, validate_repo_id

  if prefix.count("/") != 1:
    raise ValueError(f"config.export.push_to_hub={prefix!r} must be 'OWNER/NAME' (each export goes to "
                     "OWNER/NAME-<subspace>-<arch>)")
  ids = {name: f"{prefix}-{name}" for name in export_names}
  for repo_id in ids.values():
    try:
      validate_repo_id(repo_id)
    except HFValidationError as e:
      raise ValueError(f"config.export.push_to_hub={prefix!r} gives the invalid repository id "
                       f"{repo_id!r}: {e}") from None
  return ids


def token() -> str:
  """The Hugging Face token (HF_TOKEN, or a saved login); refused when there is none."""
  from huggingface_hub import get_token

  if not (found := get_token()):
    raise ValueError("config.export.push_to_hub needs a Hugging Face token with write access: set "
                     "HF_TOKEN or run `hf auth login`, then run the export again")
  return found


def stage(export_dir: Path, repo_id: str, into: Path) -> Path:
  """A copy of `export_dir` under `into`, as it is uploaded: its card loads from `repo_id`."""
  target = into / export_dir.name
  shutil.copytree(export_dir, target)
  card = target / "README.md"
  if card.is_file():
    local = f'path = "{export_dir.absolute()}"'
    card.write_text(card.read_text(encoding="utf-8").replace(local, f'path = "{repo_id}"'), encoding="utf-8")
  return target


def push(export_dir: Path, repo_id: str, hub_token: str, private: bool = False) -> str:
  """Uploads one export (create_repo + upload_folder); returns the repository's URL."""
  import tempfile

  from huggingface_hub import HfApi

  api = HfApi(token=hub_token)
  url = api.create_repo(repo_id, private=private, exist_ok=True)
  with tempfile.TemporaryDirectory(prefix="autodistil-hub-") as tmp:
    api.upload_folder(folder_path=stage(export_dir, repo_id, Path(tmp)), repo_id=repo_id,
                      commit_message="AutoDistil student exported by autodistil_jax")
  return str(url)
