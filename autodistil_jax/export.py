"""Export of a student sliced out of its SuperLM as a Hugging Face checkpoint directory.

The directory holds config.json, model.safetensors, the teacher's tokenizer files and a model
card; students whose Q/K/V width differs from their hidden size also carry a small modeling file
registered through auto_map (load with trust_remote_code=True). A directory is written whole
into a temporary sibling and renamed into place, so a failed export leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

from autodistil_jax import atomic, cards, hf_io, storage
from autodistil_jax.checkpoints import nonfinite_leaves
from autodistil_jax.model import BertEncoder, extract_student, get_params
from autodistil_jax.search_space import Arch

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


# Sentence-transformers modules that carry over to a narrower student (Pooling adapted to its width).
_ST_MODULES = ("Transformer", "Pooling", "Normalize")
_ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")


def sentence_transformers_files(teacher_dir: Path, build: Path, hidden: int) -> str | None:
  """Writes the teacher's sentence-transformers files into `build`, adapted to a student of width
  `hidden`, so that SentenceTransformer(build) pools as the teacher does. Returns None when it
  did, else why not (no such files; a module, e.g. Dense, whose weights cannot follow the width)."""
  modules_file = teacher_dir / "modules.json"
  if not modules_file.is_file():
    return "the teacher is not a sentence-transformers model"
  modules = json.loads(modules_file.read_text(encoding="utf-8"))
  if others := [m["type"] for m in modules if m["type"].rsplit(".", 1)[-1] not in _ST_MODULES]:
    return f"the teacher's sentence-transformers modules {others} cannot be narrowed to the student"
  for name in _ST_FILES:
    if (teacher_dir / name).is_file():
      shutil.copy(teacher_dir / name, build / name)
  for module in modules:
    source, kind = teacher_dir / module["path"], module["type"].rsplit(".", 1)[-1]
    if not module["path"] or not source.is_dir():
      continue
    (build / module["path"]).mkdir(parents=True, exist_ok=True)
    for file in source.iterdir():
      if file.is_file():
        shutil.copy(file, build / module["path"] / file.name)
    if kind == "Pooling":
      config = json.loads((source / "config.json").read_text(encoding="utf-8"))
      config["word_embedding_dimension"] = hidden
      (build / module["path"] / "config.json").write_text(json.dumps(config, indent=2) + "\n")
  return None


def readable_by_all(directory: Path) -> None:
  """Gives every file the mode the user's umask gives new files (some writers, safetensors among
  them, create theirs 0600, so other users could not read the weights)."""
  mask = os.umask(0)
  os.umask(mask)
  for path in directory.rglob("*"):
    path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def export_student(superlm: BertEncoder, arch: Arch, target: str | os.PathLike, *,
                   teacher_dir: str | os.PathLike, teacher_name: str, subspace: str, seq_len: int,
                   selection: dict | None = None, settings: dict[str, str] | None = None,
                   datasets: tuple[str, ...] = (), overwrite: bool = False) -> Path:
  """Slices `arch` out of `superlm` and writes it to `target` as an HF checkpoint (a
  sentence-transformers model too when the teacher is one) with its model card. `selection`: the
  search's row for the student (loss, budget), None when it was not searched; `settings` and
  `datasets`: what the card says about how it was made (cards.model_card)."""
  target = storage.path(target)
  if target.exists() and not overwrite:
    raise FileExistsError(f"export target {target} already exists; remove it or pass --overwrite")
  student = extract_student(superlm, arch)
  if bad := nonfinite_leaves(get_params(student)):
    raise ValueError(f"student {arch.name} has non-finite weights in {', '.join(bad[:3])}: not exported; "
                     "retrain its SuperLM (--redo=train)")
  remote_code = student.config.qkv_width != student.config.hidden
  teacher_dir = Path(teacher_dir)
  teacher = dataclasses.replace(hf_io.read_config(teacher_dir), pooler=student.config.pooler)
  target.parent.mkdir(parents=True, exist_ok=True)
  tmp = atomic.temp_dir_for(target)
  try:
    with storage.local_folder(tmp) as build:
      hf_io.write_checkpoint(build, student.config, get_params(student))
      for name in TOKENIZER_FILES:
        if (teacher_dir / name).is_file():
          shutil.copy(teacher_dir / name, build / name)
      no_st = sentence_transformers_files(teacher_dir, build, arch.hidden)
      card = cards.model_card(arch, student.config, teacher, teacher_name=teacher_name,
                              teacher_dir=teacher_dir, subspace=subspace, seq_len=seq_len,
                              selection=selection, remote_code=remote_code,
                              sentence_transformers=no_st is None,
                              location=str(target.absolute()) if storage.is_local(target) else str(target),
                              settings=settings, datasets=datasets)
      (build / "README.md").write_text(str(card), encoding="utf-8")
      readable_by_all(build)
    atomic.replace_dir(tmp, target)
  except BaseException:
    storage.rmtree(tmp)
    raise
  return target
