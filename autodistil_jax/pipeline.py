"""The stages a user runs from launch/main.py, wired from one config: each loads its inputs, calls
the library and writes through the Workdir; `run` holds the workdir and, from the stage records
(records.py), decides what runs, what is reused and what is refused."""

from __future__ import annotations

import json
import os
import time

import jax
import ml_collections
import numpy as np

from autodistil_jax import data, evaluate, export, finetune, glue, hf_io, parallel, records, search
from autodistil_jax.metrics import read_metrics
from autodistil_jax.model import BertEncoder, get_params
from autodistil_jax.search_space import Arch, SubSpace
from autodistil_jax.train import DTYPES, check_record, load_superlm, train_superlm
from autodistil_jax.workdir import Workdir, WorkdirBusy

STAGES = records.STAGES
# What a user got wrong (config, paths, inputs): launch/main.py prints these as one line and exits 2.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError)  # StaleInputs, WorkdirBusy included


def setup_distributed(config: ml_collections.ConfigDict) -> None:
  d = config.distributed
  parallel.maybe_initialize_distributed(
      d.coordinator or None, d.num_processes if d.num_processes > 0 else None,
      d.process_id if d.process_id >= 0 else None)


def subspaces(config: ml_collections.ConfigDict) -> dict[str, SubSpace]:
  """The configured sub-spaces, smallest first."""
  spaces = [SubSpace.from_config(n, config.subspaces[n]) for n in config.subspaces]
  return {s.name: s for s in sorted(spaces, key=lambda s: (s.hidden[-1], s.layers[-1], s.name))}


def load_teacher(config: ml_collections.ConfigDict) -> BertEncoder:
  teacher = hf_io.load_bert(config.teacher)
  if config.data.seq_len > teacher.config.max_position:
    raise ValueError(f"config.data.seq_len={config.data.seq_len} exceeds the teacher's "
                     f"max_position_embeddings ({teacher.config.max_position}); lower it")
  if not config.subspaces:
    raise ValueError("config.subspaces is empty: the config must define at least one sub-space")
  for space in subspaces(config).values():
    space.check_fits(teacher.config.teacher_shape)
  return teacher


def stage_inputs(config: ml_collections.ConfigDict, stage: str, subspace: str | None = None) -> dict:
  """records.stage_inputs with the identities of the files the stages up to `stage` read."""
  files = {"train": {"teacher": records.checkpoint_identity(hf_io.resolve_checkpoint(config.teacher)),
                     "corpus": records.files_identity(data.corpus_files(config.data.corpus))}}
  glue_dir = config.data.glue_dir
  identity = lambda names: glue.identity([glue.get_task(t) for t in names], glue_dir)
  if STAGES.index(stage) >= STAGES.index("evaluate") and glue_dir:
    files["evaluate"] = {"glue_evaluate": identity(("stsb", *config.evaluate.probe_tasks))}
  if stage == "finetune" and glue_dir:
    files["finetune"] = {"glue_finetune": identity(config.glue.tasks)}
  return records.stage_inputs(config, stage, files, subspace)


def load_split_corpus(config: ml_collections.ConfigDict, wd: Workdir) -> tuple[np.ndarray, ...]:
  """(tokens, train indices, held-out indices) of the configured corpus, tokenised once."""
  d = config.data
  if not d.corpus:
    raise ValueError("config.data.corpus is not set: pass --config.data.corpus=PATH_OR_GLOB (or tfds:NAME)")
  tokens = data.load_corpus(d.corpus, hf_io.resolve_checkpoint(config.teacher), d.seq_len, pack=d.pack,
                            cache_dir=wd.data_cache, tfds_split=d.tfds_split,
                            tfds_data_dir=d.tfds_data_dir or None, text_key=d.text_key,
                            min_sequences=(d.heldout + config.train.batch_size,
                                           "config.data.heldout + config.train.batch_size"))
  return (tokens, *data.split_heldout(len(tokens), d.heldout, config.seed))


def _superlms(config, wd: Workdir, teacher, mesh, names) -> dict[str, tuple[BertEncoder, int]]:
  """The trained SuperLMs of `names`, each checked against its record before it is read."""
  for name in names:
    check_record(wd, name, stage_inputs(config, "train", name))
  return {name: load_superlm(config, wd, name, teacher, mesh) for name in names}


def run_train(config: ml_collections.ConfigDict, wd: Workdir) -> dict[str, dict]:
  """Trains the SuperLM of every configured sub-space; returns their parameters by name."""
  teacher = load_teacher(config)
  inputs = {name: stage_inputs(config, "train", name) for name in subspaces(config)}
  for name, own in inputs.items():  # every sub-space's checkpoints before any work
    check_record(wd, name, own)
  tokens, train_idx, _ = load_split_corpus(config, wd)
  mesh = parallel.make_mesh()
  trained = {name: train_superlm(config, wd, name, teacher, tokens, train_idx, mesh, inputs=own)
             for name, own in inputs.items()}
  if jax.process_index() == 0:
    lines = ["SuperLM training: loss at first -> last logged step (largest / smallest / random)"]
    for name in trained:
      if logged := read_metrics(wd, f"superlm/{name}"):
        first, last = logged[0], logged[-1]
        sizes = " / ".join(f"{first[k]:.4g} -> {last[k]:.4g}" for k in first
                           if k.startswith("loss/") and k in last)
        lines.append(f"  {name:>6} steps {first['step']}..{last['step']}: {sizes}")
    print("\n".join(lines))
  return trained


def run_search(config: ml_collections.ConfigDict, wd: Workdir) -> dict[str, dict]:
  """Scores every student of every trained SuperLM; writes wd.search_dir and returns the selected
  student per budget."""
  s = config.search
  teacher = load_teacher(config)
  teacher_costs, budgets = search.teacher_costs_and_budgets(
      teacher, s.budgets, config.data.seq_len, (s.latency_batch_size, s.latency_seq_len))
  spaces = subspaces(config)
  loaded = _superlms(config, wd, teacher, parallel.make_mesh(), spaces)
  tokens, _, heldout_idx = load_split_corpus(config, wd)
  mesh = parallel.make_mesh()
  batches = data.heldout_batches(tokens, heldout_idx, s.batch_size, teacher.config.pad_token_id)
  batches = [parallel.global_batch_from_full(mesh, b)
             for b in (batches[:s.num_batches] if s.num_batches > 0 else batches)]
  relations = search.make_teacher_relations(teacher, DTYPES[s.dtype])
  teacher_params = parallel.replicate(mesh, get_params(teacher))
  rows, timing = search.score_subspaces(
      {n: (m, step, spaces[n].enumerate()) for n, (m, step) in loaded.items()}, teacher,
      [relations(teacher_params, b) for b in batches], batches, lambda p: parallel.replicate(mesh, p),
      config.train.loss, DTYPES[s.dtype], s.students_per_call, config.data.seq_len)
  selected = search.select(rows, budgets, {n: m for n, (m, _) in loaded.items()},
                           (s.latency_batch_size, s.latency_seq_len), s.max_latency_trials)
  if jax.process_index() == 0:
    print(search.write_outputs(wd.search_dir, rows, selected, budgets,
                               {"name": config.teacher, **teacher_costs}, timing))
  return selected


def run_export(config: ml_collections.ConfigDict, wd: Workdir) -> list:
  """Exports the selected students (or config.export.arch of config.export.subspace) to
  wd.export_dir(...) as Hugging Face checkpoints."""
  e = config.export
  if e.arch or e.subspace:
    if not (e.arch and e.subspace in config.subspaces):
      raise ValueError("export of one student needs config.export.arch='L,H,R,A' and "
                       f"config.export.subspace, one of {sorted(config.subspaces)}")
    wanted = {(e.subspace, Arch.parse(e.arch, "config.export.arch")): None}
  else:
    if not wd.selected_file.is_file():
      raise FileNotFoundError(f"{wd.selected_file} not found: run --mode=search first, or give "
                              "config.export.arch and config.export.subspace")
    wanted = {(r["subspace"], Arch.from_row(r)): r["loss"]
              for r in json.loads(wd.selected_file.read_text()).values()}
  spaces = subspaces(config)
  for name, arch in wanted:
    spaces[name].check_arch(arch)
  targets = [wd.export_dir(name, arch.name) for name, arch in wanted]
  if (clashes := [str(t) for t in targets if t.exists()]) and not e.overwrite:
    raise FileExistsError(f"export targets exist: {', '.join(clashes)}; remove them or pass "
                          "--config.export.overwrite=True")
  teacher = load_teacher(config)
  superlms = _superlms(config, wd, teacher, parallel.make_mesh(), dict.fromkeys(n for n, _ in wanted))
  for ((name, arch), loss), target in zip(wanted.items(), targets, strict=True):
    if jax.process_index() == 0:
      export.export_student(superlms[name][0], arch, target,
                            teacher_dir=hf_io.resolve_checkpoint(config.teacher),
                            teacher_name=str(config.teacher), subspace=name,
                            seq_len=config.data.seq_len, loss=loss, overwrite=e.overwrite)
      print(f"exported {name} {arch.name} -> {target}")
  return targets


def run_evaluate(config: ml_collections.ConfigDict, wd: Workdir):
  """The task-agnostic suite (evaluate.py) on the teacher, every export (the selected students
  not exported are scored inside their SuperLM) and their sliced and random twins."""
  inputs = evaluate.read_inputs(config)
  teacher = load_teacher(config)
  selected = json.loads(wd.selected_file.read_text()).values() if wd.selected_file.is_file() else []
  return evaluate.run_stage(config, wd, inputs, teacher, list(selected),
                            lambda names: _superlms(config, wd, teacher, parallel.make_mesh(), names),
                            load_split_corpus(config, wd))


def run_finetune(config: ml_collections.ConfigDict, wd: Workdir):
  """Fine-tunes the teacher, every export and config.glue.models on config.glue.tasks."""
  return finetune.run_stage(config, wd)


MODES = {"train": run_train, "search": run_search, "export": run_export, "evaluate": run_evaluate,
         "finetune": run_finetune}


def run(mode: str, config: ml_collections.ConfigDict, workdir: str | os.PathLike,
        redo: tuple[str, ...] = (), last: str = STAGES[-1]):
  """Runs `mode` (a stage, or "all": every stage up to `last`) holding the workdir. A stage's
  record says what it ran with: "all" skips a stage whose record matches the config and stops at
  one whose does not, naming the keys; a stage named in `redo` (and every later one) has its
  outputs moved aside and runs again. A single stage always runs, after checking the records of
  the stages it reads from."""
  wd = Workdir.at(workdir)
  chosen = STAGES[:STAGES.index(last) + 1] if mode == "all" else (mode,)
  if bad := [s for s in redo if s not in chosen]:
    raise ValueError(f"--redo={','.join(bad)} is not a stage that --mode={mode} runs ({', '.join(chosen)})")
  with wd.held(primary=jax.process_index() == 0):
    if jax.process_index() == 0 and (left := wd.remove_leftovers()):
      print(f"removed {len(left)} temporary file(s) left by a killed run: {', '.join(map(str, left))}")
    if redo and jax.process_index() == 0:
      first = min(STAGES.index(s) for s in redo)
      if aside := wd.move_aside([p for s in STAGES[first:] for p in wd.stage_outputs(s)]):
        print(f"--redo: the outputs of {', '.join(STAGES[first:])} moved to {aside}")
    if mode != "all":
      for earlier in STAGES[:STAGES.index(mode)]:
        _check_stage(config, wd, earlier)
    return _run_stages(config, wd, chosen, skip_finished=mode == "all")


def _check_stage(config, wd: Workdir, stage: str) -> bool:
  way_on = (f"Use a new --workdir, or --redo={stage} to run it again (its outputs and those of the "
            f"stages after it are moved to {wd.root / 'replaced'}/)")
  return records.check(wd.stage_record(stage), stage_inputs(config, stage),
                       f"the {stage} stage in {wd.root}", way_on)


def _matches(config, wd: Workdir, stage: str) -> bool:
  try:
    return _check_stage(config, wd, stage)
  except records.StaleInputs:
    return False


def _run_stages(config, wd: Workdir, stages: tuple[str, ...], skip_finished: bool):
  result, start = None, time.perf_counter()
  for stage in stages:
    label = f"[{STAGES.index(stage) + 1}/{len(STAGES)}] {stage}"
    # Fine-tuning re-runs when its settings changed: each result carries its own inputs, and
    # only those that match are reused (finetune.run_stage).
    if skip_finished and stage != "finetune" and _check_stage(config, wd, stage):
      print(f"{label}: done before with these settings, skipped")
      continue
    if skip_finished and stage == "finetune" and _matches(config, wd, stage):
      print(f"{label}: done before with these settings, skipped")
      continue
    print(f"{label} ...")
    t0 = time.perf_counter()
    # An export interrupted under "all" is redone whole (its finished targets replaced).
    run_config = _with(config, "export.overwrite", True) if skip_finished and stage == "export" else config
    result = MODES[stage](run_config, wd)
    if jax.process_index() == 0:
      records.write(wd.stage_record(stage), stage_inputs(config, stage),
                    seconds=round(time.perf_counter() - t0, 1), finished=time.strftime("%Y-%m-%d %H:%M:%S"))
    print(f"{label}: {time.perf_counter() - t0:.1f} s")
  if len(stages) > 1 and jax.process_index() == 0:
    suite = wd.evaluate_dir / "suite.md"
    print(f"all stages finished in {time.perf_counter() - start:.1f} s; GLUE table: {wd.glue_summary()}")
    if suite.is_file():
      print(f"evaluation suite, no fine-tuning ({suite}):\n{suite.read_text()}", end="")
  return result


def _with(config: ml_collections.ConfigDict, key: str, value) -> ml_collections.ConfigDict:
  """A copy of `config` with one key changed: the caller's config is never mutated."""
  copy = ml_collections.ConfigDict(config.to_dict())
  group, name = key.split(".")
  copy[group][name] = value
  return copy


__all__ = ["MODES", "STAGES", "USER_ERRORS", "WorkdirBusy", "load_teacher", "run", "setup_distributed"]
