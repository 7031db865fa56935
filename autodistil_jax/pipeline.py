"""The stages a user runs from launch/main.py, wired from one config: each loads its inputs, calls
the library and writes through the Workdir. Which stages run, and whether a finished one is
reused or refused, is runner.py's decision."""

from __future__ import annotations

import json

import jax
import ml_collections
import numpy as np

from autodistil_jax import (
  cards,
  data,
  evaluate,
  export,
  finetune_stage,
  glue,
  hf_io,
  hub,
  parallel,
  proxy,
  records,
  search,
  search_report,
)
from autodistil_jax.model import BertEncoder, get_params
from autodistil_jax.search_space import Arch, SubSpace
from autodistil_jax.train import (
  DTYPES,
  StepConfig,
  check_record,
  load_superlm,
  train_superlm,
  training_summary,
)
from autodistil_jax.workdir import Workdir

STAGES = records.STAGES


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
  tokens = len(data.load_tokenizer(hf_io.resolve_checkpoint(config.teacher)))
  if tokens > teacher.config.vocab_size:
    raise ValueError(f"the teacher's tokenizer has {tokens} tokens but its embedding table only "
                     f"{teacher.config.vocab_size} rows: they do not belong together; use the "
                     "tokenizer files the teacher was trained with")
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
                     "corpus": records.files_identity(data.corpus_files(config.data.corpus))
                     if config.data.corpus else ""}}
  glue_dir = config.data.glue_dir
  identity = lambda names: glue.identity([glue.get_task(t) for t in names], glue_dir)
  if STAGES.index(stage) >= STAGES.index("evaluate") and glue_dir:
    files["evaluate"] = {"glue_evaluate": identity(("stsb", *config.evaluate.probe_tasks))}
  if STAGES.index(stage) >= STAGES.index("search") and glue_dir and config.search.proxy.enabled:
    files["search"] = {"glue_proxy": identity((config.search.proxy.task or proxy.default_task(glue_dir),))}
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
  StepConfig.from_config(config, teacher)  # bad training settings stop the stage before any work
  inputs = {name: stage_inputs(config, "train", name) for name in subspaces(config)}
  for name, own in inputs.items():  # every sub-space's checkpoints before any work
    check_record(wd, name, own)
  tokens, train_idx, _ = load_split_corpus(config, wd)
  mesh = parallel.make_mesh()
  trained = {name: train_superlm(config, wd, name, teacher, tokens, train_idx, mesh, inputs=own)
             for name, own in inputs.items()}
  if jax.process_index() == 0:
    print(training_summary(wd, list(trained)))
  return trained


def run_search(config: ml_collections.ConfigDict, wd: Workdir) -> dict[str, dict]:
  """Scores every student of every trained SuperLM (held-out loss; with config.search.proxy.enabled
  also the proxy task's dev score); writes wd.search_dir and returns the selected student per
  budget."""
  s = config.search
  selection = search.check_selection(s.selection, s.proxy.enabled)
  teacher = load_teacher(config)
  teacher_costs, budgets = search.teacher_costs_and_budgets(
      teacher, s.budgets, config.data.seq_len, (s.latency_batch_size, s.latency_seq_len))
  spaces = subspaces(config)
  mesh = parallel.make_mesh()
  # Bad proxy settings, task files or a chunk that would not fit stop the search here, before work.
  proxy_task = _read_proxy_task(config, teacher, spaces, mesh) if s.proxy.enabled else None
  loaded = _superlms(config, wd, teacher, mesh, spaces)
  tokens, _, heldout_idx = load_split_corpus(config, wd)
  batches = data.heldout_batches(tokens, heldout_idx, s.batch_size, teacher.config.pad_token_id)
  batches = [parallel.global_batch_from_full(mesh, b)
             for b in (batches[:s.num_batches] if s.num_batches > 0 else batches)]
  # The search scores the training objective, extra terms included.
  weights = float(config.train.hidden_relation_weight), float(config.train.embedding_relation_weight)
  relations = search.make_teacher_relations(teacher, DTYPES[s.dtype], weights[0] > 0, weights[1] > 0)
  teacher_params = parallel.replicate(mesh, get_params(teacher))
  rows, timing = search.score_subspaces(
      {n: (m, step, spaces[n].enumerate()) for n, (m, step) in loaded.items()}, teacher,
      [relations(teacher_params, b) for b in batches], batches, lambda p: parallel.replicate(mesh, p),
      config.train.loss, DTYPES[s.dtype], s.students_per_call, config.data.seq_len, *weights)
  summary = _proxy_search(config, wd, loaded, rows, proxy_task, mesh) if proxy_task else None
  selected = search.select(rows, budgets, {n: m for n, (m, _) in loaded.items()},
                           (s.latency_batch_size, s.latency_seq_len), s.max_latency_trials, selection)
  if jax.process_index() == 0:
    print(search_report.write_outputs(wd.search_dir, rows, selected, budgets,
                                      {"name": config.teacher, **teacher_costs}, timing, selection, summary))
  return selected


def _read_proxy_task(config: ml_collections.ConfigDict, teacher: BertEncoder, spaces, mesh):
  """(settings, train features, dev features, students per call by sub-space) of the proxy search,
  read and checked."""
  settings = proxy.ProxySettings.from_config(config)
  sampled = {n: len(proxy.sample_students(s.enumerate(), settings.students, 0)) for n, s in spaces.items()}
  chunks = {n: proxy.students_per_call(settings, teacher.config.for_subspace(space), sampled[n], mesh)
            for n, space in spaces.items()}
  tokenizer = data.load_tokenizer(hf_io.resolve_checkpoint(config.teacher))
  return (settings, *proxy.read_task(settings, config.data.glue_dir, tokenizer), chunks)


def _proxy_search(config, wd: Workdir, loaded, rows: list[dict], task, mesh) -> dict:
  """Runs the proxy search on the students of `rows` (a seeded sample per sub-space when
  config.search.proxy.students is set), writes their scores into the rows; returns its summary."""
  settings, train, dev, chunks = task
  students = {n: proxy.sample_students([Arch.from_row(r) for r in rows if r["subspace"] == n],
                                       settings.students, settings.seed) for n in loaded}
  superlms = {n: (m, proxy.superlm_identity(stage_inputs(config, "train", n), step), students[n])
              for n, (m, step) in loaded.items()}
  scores, timing = proxy.search(settings, superlms, train, dev, chunks, mesh, wd.proxy_scores)
  for row in rows:
    if row["name"] in scores[row["subspace"]]:
      row["proxy_score"] = scores[row["subspace"]][row["name"]]["proxy_score"]
  scored = [r for r in rows if "proxy_score" in r]
  tau = {n: proxy.kendall_tau([r for r in scored if r["subspace"] == n]) for n in loaded}
  constant = proxy.constant_score(settings.task, dev["labels"])
  return {"task": settings.task.name, "students": len(scored), "timing": timing,
          "kendall_tau": {**tau, "all": proxy.kendall_tau(scored)}, "settings": settings.inputs(),
          "constant_score": constant,  # one class predicted for everything
          "at_constant": sum(r["proxy_score"] <= constant + 0.01 for r in scored)}


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
    wanted = {(r["subspace"], Arch.from_row(r)): {**r, "budget": budget}
              for budget, r in json.loads(wd.selected_file.read_text()).items()}
  spaces = subspaces(config)
  for name, arch in wanted:
    spaces[name].check_arch(arch)
  targets = [wd.export_dir(name, arch.name) for name, arch in wanted]
  if (clashes := [str(t) for t in targets if t.exists()]) and not e.overwrite:
    raise FileExistsError(f"export targets exist: {', '.join(clashes)}; remove them or pass "
                          "--config.export.overwrite=True")
  if e.push_to_hub:  # the repository ids and the token before any work
    repos, token = hub.repo_ids(e.push_to_hub, [t.name for t in targets]), hub.token()
  teacher = load_teacher(config)
  superlms = _superlms(config, wd, teacher, parallel.make_mesh(), dict.fromkeys(n for n, _ in wanted))
  for ((name, arch), selection), target in zip(wanted.items(), targets, strict=True):
    if jax.process_index() == 0:
      export.export_student(superlms[name][0], arch, target,
                            teacher_dir=hf_io.resolve_checkpoint(config.teacher),
                            teacher_name=str(config.teacher), subspace=name,
                            seq_len=config.data.seq_len, selection=selection, overwrite=e.overwrite,
                            settings=cards.settings(config, spaces[name], superlms[name][1]),
                            datasets=cards.hub_datasets(config.data.corpus))
      print(f"exported {name} {arch.name} -> {target}")
      if e.push_to_hub:
        print(f"  pushed to {hub.push(target, repos[target.name], token, e.private)}")
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
  return finetune_stage.run_stage(config, wd)


MODES = {"train": run_train, "search": run_search, "export": run_export, "evaluate": run_evaluate,
         "finetune": run_finetune}
