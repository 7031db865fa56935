"""What each stage ran with: the config keys and input files its outputs depend on.

A stage's record holds its inputs and those of every stage before it (a search depends on how
its SuperLMs were trained). Comparing a record with the current config names exactly the keys
that changed, so a finished stage is reused only when nothing it depends on moved, and the user
is told which keys did when something did (docs/architecture.md, "Stage records").
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from autodistil_jax.glue import TASKS
from autodistil_jax.storage import AnyPath
from autodistil_jax.workdir import write_text_atomic

STAGES = ("train", "search", "export", "evaluate", "finetune")

# The config keys (or whole groups) each stage's outputs depend on, beyond the stages before it.
_OWN_KEYS = {
    "train": ("seed", "teacher", "subspaces", "data.corpus", "data.seq_len", "data.pack",
              "data.heldout", "data.tfds_split", "data.tfds_data_dir", "data.text_key", "train"),
    "search": ("search",),
    "export": ("export.subspace", "export.arch"),
    "evaluate": ("evaluate", "data.glue_dir"),
    "finetune": ("glue", "data.glue_dir"),
}
# Keys that change how a run goes but not what it produces: never a reason to redo a stage.
_IGNORED = ("train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
            "train.max_nonfinite_steps", "search.students_per_call", "search.max_latency_trials",
            "search.proxy.students_per_call",
            "evaluate.students_per_call", "glue.eval_batch_size", "glue.include_teacher",
            "search.proxy.student_batching", "glue.seed_batching")
# Keys added after records began, with the value that reproduces what a record without them was
# made with: an older workdir stays valid under the default.
_ADDED_KEYS = {"train.embedding_relation_weight": 0.0,
               # a GLUE result's inputs hold config.glue's keys unprefixed (finetune_stage)
               "glue.head_input": "pooler", "head_input": "pooler",
               # 0: the task runs glue.epochs, as every task did before task_epochs existed
               **{f"glue.task_epochs.{task}": 0 for task in TASKS}}
# Files larger than this are identified by size and modification time instead of their bytes.
_HASH_LIMIT = 512 * 2**20


class StaleInputs(ValueError):
  """Outputs made from other inputs than the current config's (a user error: exit 2)."""


def flatten(config: ml_collections.ConfigDict | dict, prefix: str = "") -> dict[str, Any]:
  """{"train.learning_rate": 4e-05, ...}; tuples become lists so a record reads back equal."""
  out = {}
  for key, value in (config.items() if hasattr(config, "items") else []):
    name = f"{prefix}{key}"
    if isinstance(value, ml_collections.ConfigDict | dict):
      out.update(flatten(value, name + "."))
    else:
      out[name] = json.loads(json.dumps(value, default=str))
  return out


def _selected(flat: dict[str, Any], keys: Iterable[str]) -> dict[str, Any]:
  keys = tuple(keys)
  return {k: v for k, v in flat.items()
          if any(k == g or k.startswith(g + ".") for g in keys) and k not in _IGNORED}


@functools.lru_cache(maxsize=256)
def _file_identity(path: str, size: int, mtime_ns: int) -> str:
  if size > _HASH_LIMIT:
    return f"{size} bytes, modified {mtime_ns}"
  with open(path, "rb") as f:
    return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()[:20]


def files_identity(paths: Iterable[str | os.PathLike]) -> str:
  """One string that changes when any of the files' content does (hashes; big files: size and
  modification time). Missing files count as such, so adding one changes it too."""
  parts = []
  for p in sorted(str(Path(p).resolve()) for p in paths):
    try:
      st = os.stat(p)
    except FileNotFoundError:
      parts.append(f"{p}: missing")
      continue
    parts.append(f"{Path(p).name}: {_file_identity(p, st.st_size, st.st_mtime_ns)}")
  return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


def checkpoint_identity(checkpoint_dir: str | os.PathLike, weights: bool = True) -> str:
  """A model's files (config, weights, tokenizer) as one identity; with weights=False, all but
  the weights (what model_identity pairs with weights_digest)."""
  directory = Path(checkpoint_dir)
  return files_identity(p for p in directory.iterdir() if p.is_file() and p.name != "README.md"
                        and (weights or p.name not in _WEIGHT_FILES))


_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# Two checkpoints whose weights differ by less than this fraction of their norm are one model for
# reuse. The same SuperLM training on 2 devices instead of 1 (other float rounding, as on another
# CPU) gave other bytes and weights 2.5e-8 of their norm apart; 120 SuperLM steps at 4e-5, the
# least training any of our experiments does, move a student 6.6e-3 from its sliced
# initialisation (docs/architecture.md, "Stage records").
WEIGHTS_TOLERANCE = 1e-5
_PROJECTIONS = 4


def weights_digest(checkpoint_dir: str | os.PathLike) -> dict[str, list]:
  """Per float tensor: [size, RMS, its projections on fixed random +-1 vectors over sqrt(size)];
  per integer buffer (position ids): [size, a hash of its values]. Float weights that differ by
  D (a tensor) give projections that differ by about |D| / sqrt(size), so two digests tell how
  far apart two models are without keeping their weights."""
  from autodistil_jax import hf_io  # jax-heavy: only where a model is fingerprinted
  digest = {}
  for name, tensor in sorted(hf_io.read_tensors(Path(checkpoint_dir)).items()):
    if not np.issubdtype(tensor.dtype, np.floating):
      values_hash = hashlib.sha256(np.ascontiguousarray(tensor).tobytes()).hexdigest()[:16]
      digest[name] = [int(tensor.size), values_hash]
      continue
    values = np.asarray(tensor, np.float64).ravel()
    signs = np.random.default_rng(values.size).integers(0, 2, (_PROJECTIONS, values.size), np.int8)
    scale, total = np.sqrt(max(values.size, 1)), values.sum()
    # sum(+-1 * v) = 2 * sum(v where +1) - sum(v): no (projections x size) float matrix in memory
    projections = [(2 * values[row.view(bool)].sum() - total) / scale for row in signs]
    rms = float(np.linalg.norm(values) / scale)
    digest[name] = [int(values.size), *(float(f"{x:.12g}") for x in (rms, *projections))]
  return digest


def weights_difference(a: dict[str, list], b: dict[str, list]) -> float:
  """How far apart two digests' float weights are, as a fraction of their norm (estimated from
  the projections, within about a factor 2); inf when their tensors differ in name or size, or
  an integer buffer in value."""
  if set(a) != set(b) or any(a[k][0] != b[k][0] for k in a):
    return float("inf")
  floats = [k for k in a if not isinstance(a[k][1], str)]
  if any(a[k] != b[k] for k in a if k not in floats):
    return float("inf")
  moved = sum(a[k][0] * np.mean(np.subtract(a[k][2:], b[k][2:]) ** 2) for k in floats)
  norm = sum(a[k][0] * a[k][1] ** 2 for k in floats)
  return float(np.sqrt(moved / norm)) if norm > 0 else (0.0 if moved == 0 else float("inf"))


def model_identity(checkpoint_dir: str | os.PathLike) -> dict[str, Any]:
  """What a fine-tuning result depends on of its model: the files' exact identity ("model"),
  and, for a match up to float rounding, the files but the weights ("model_files") and the
  weights' digest ("model_weights")."""
  return {"model": checkpoint_identity(checkpoint_dir),
          "model_files": checkpoint_identity(checkpoint_dir, weights=False),
          "model_weights": weights_digest(checkpoint_dir)}


def model_change(recorded: dict[str, Any], current: dict[str, Any]) -> str | None:
  """None when the inputs' models are the same: the same files, or the same files but weights
  within WEIGHTS_TOLERANCE of each other (e.g. retrained on another CPU); else what differs."""
  if recorded.get("model") == current.get("model"):
    return None
  if (any("model_weights" not in inputs for inputs in (recorded, current))
      or recorded.get("model_files") != current.get("model_files")):
    return f"model ({_show(recorded.get('model', _MISSING))} -> {_show(current.get('model', _MISSING))})"
  difference = weights_difference(recorded["model_weights"], current["model_weights"])
  if difference <= WEIGHTS_TOLERANCE:
    return None
  return (f"model weights ({difference:.2g} of their norm apart; the same model only below "
          f"{WEIGHTS_TOLERANCE:g})")


def stage_inputs(config: ml_collections.ConfigDict, stage: str,
                 file_inputs: dict[str, dict[str, str]] | None = None,
                 subspace: str | None = None) -> dict[str, Any]:
  """Everything `stage`'s outputs depend on: its keys, the earlier stages' keys, and the input
  files' identities (`file_inputs`: stage -> {name: identity}, keyed "input:<name>"). With
  `subspace`, the other sub-spaces are left out (one SuperLM does not depend on them)."""
  flat = flatten(config)
  if not flat.get("search.proxy.enabled", False):  # settings of a search not run change nothing
    flat = {k: v for k, v in flat.items() if not k.startswith("search.proxy.") or k.endswith(".enabled")}
  if subspace is not None:
    flat = {k: v for k, v in flat.items()
            if not k.startswith("subspaces.") or k.startswith(f"subspaces.{subspace}.")}
  upto = STAGES[:STAGES.index(stage) + 1]
  inputs = _selected(flat, (k for s in upto for k in _OWN_KEYS[s]))
  for s in upto:
    inputs.update({f"input:{k}": v for k, v in (file_inputs or {}).get(s, {}).items()})
  return inputs


def changed_keys(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
  """'key (old -> new)' for every key that differs, in key order; a model's identity (the
  keys of model_identity) is compared by model_change."""
  keys = sorted((set(recorded) | set(current)) - set(MODEL_KEYS))
  before = lambda k: recorded.get(k, _ADDED_KEYS.get(k, _MISSING))
  changes = [f"{k} ({_show(before(k))} -> {_show(current.get(k, _MISSING))})"
             for k in keys if before(k) != current.get(k, _MISSING)]
  if any(k in recorded or k in current for k in MODEL_KEYS) and (model := model_change(recorded, current)):
    changes.append(model)
  return changes


def _show(value: Any) -> str:
  text = "unset" if value is _MISSING else json.dumps(value)
  return text if len(text) <= 60 else text[:57] + "..."


_MISSING = object()
MODEL_KEYS = ("model", "model_files", "model_weights")  # the keys of model_identity


def read(path: AnyPath) -> dict | None:
  """A record, or None where there is none; an unreadable one reads as 'other inputs'."""
  if not path.is_file():
    return None
  try:
    record = json.loads(path.read_text(encoding="utf-8"))
  except (json.JSONDecodeError, UnicodeDecodeError):
    return {"inputs": {"record": "unreadable"}}
  return record if isinstance(record, dict) and isinstance(record.get("inputs"), dict) else {
      "inputs": {"record": "unreadable"}}


def write(path: AnyPath, inputs: dict[str, Any], **extra: Any) -> None:
  """Writes a record atomically (temporary file, then rename)."""
  write_text_atomic(path, json.dumps({"inputs": inputs, **extra}, indent=1, sort_keys=True) + "\n")


def check(path: AnyPath, inputs: dict[str, Any], what: str, way_on: str) -> bool:
  """True when the record at `path` matches `inputs`, False when there is none; raises
  StaleInputs naming the changed keys when it differs."""
  record = read(path)
  if record is None:
    return False
  changes = changed_keys(record["inputs"], inputs)
  if changes:
    raise StaleInputs(f"{what} was made with other settings than this config: "
                      f"{'; '.join(changes)}. {way_on}")
  return True
