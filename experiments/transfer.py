"""The transfer set an experiment trains its SuperLMs on, from the data root the experiments take
(glue/, wikitext-2/, tinyshakespeare/): config.headline.transfer names it."""

from __future__ import annotations

import pathlib

import ml_collections

TRANSFER_SETS = {"mixed": "WikiText-2 valid+test, Tiny Shakespeare and the unlabeled sentences of "
                          "the GLUE training sets of {tasks}",
                 "glue": "the unlabeled sentences of the GLUE training sets of {tasks}"}


def transfer_of(config: ml_collections.ConfigDict) -> str:
  """config.headline.transfer; "mixed" for configs made before the key existed (tests' configs)."""
  transfer = config.get("headline", {}).get("transfer", "mixed")
  if transfer not in TRANSFER_SETS:
    raise ValueError(f"config.headline.transfer={transfer!r}: choose from {list(TRANSFER_SETS)}")
  return transfer


def describe_transfer(config: ml_collections.ConfigDict) -> str:
  return TRANSFER_SETS[transfer_of(config)].format(tasks=", ".join(config.glue.tasks))


def transfer_corpus(transfer: str, data_dir: pathlib.Path, glue_file: pathlib.Path) -> str:
  """config.data.corpus for config.headline.transfer (TRANSFER_SETS), its files checked."""
  parts = [glue_file]
  if transfer == "mixed":
    parts = [data_dir / "wikitext-2" / "valid.txt", data_dir / "wikitext-2" / "test.txt",
             data_dir / "tinyshakespeare" / "input.txt", glue_file]
  missing = [str(p) for p in parts if not p.is_file()]
  if missing:
    raise FileNotFoundError(f"transfer-set files not found: {', '.join(missing)}; check --data_dir")
  return ",".join(str(p) for p in parts)


def with_transfer_set(config: ml_collections.ConfigDict, data_dir: pathlib.Path,
                      glue_file: pathlib.Path, write: bool = True) -> ml_collections.ConfigDict:
  """A copy of `config` reading its transfer set (the GLUE training sentences of config.glue.tasks
  written to `glue_file` first, unless `write` is off: then the file written before) and the GLUE
  root under `data_dir`."""
  from autodistil_jax import glue

  transfer = transfer_of(config)  # a bad name stops here, before anything is written
  if write:
    glue.write_training_sentences(data_dir / "glue", list(config.glue.tasks), glue_file)
  config = ml_collections.ConfigDict(config.to_dict())
  config.data.corpus = transfer_corpus(transfer, data_dir, glue_file)
  config.data.glue_dir = str(data_dir / "glue")
  return config
