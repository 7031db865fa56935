"""The stages a user runs from launch/main.py, wired from one config."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
from absl import logging
from tqdm import tqdm

from autodistil_jax import atomic, data, export, hf_io, parallel, search
from autodistil_jax.metrics import read_metrics
from autodistil_jax.model import BertEncoder, get_params
from autodistil_jax.search_space import Arch, Vocab
from autodistil_jax.train import DTYPES, load_superlm, subspace_from_config, train_superlm


def setup_distributed(config: ml_collections.ConfigDict) -> None:
  d = config.distributed
  parallel.maybe_initialize_distributed(
      d.coordinator or None, d.num_processes if d.num_processes > 0 else None,
      d.process_id if d.process_id >= 0 else None)


def load_teacher(config: ml_collections.ConfigDict) -> BertEncoder:
  teacher = hf_io.load_bert(config.teacher)
  if config.data.seq_len > teacher.config.max_position:
    raise ValueError(f"config.data.seq_len={config.data.seq_len} exceeds the teacher's "
                     f"max_position_embeddings ({teacher.config.max_position}); lower it")
  if not config.subspaces:
    raise ValueError("config.subspaces is empty: the config must define at least one sub-space")
  for name in config.subspaces:
    subspace_from_config(name, config.subspaces[name]).check_fits(teacher.config.teacher_shape)
  return teacher


def load_split_corpus(config: ml_collections.ConfigDict,
                      workdir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(tokens, train indices, held-out indices) of the configured corpus, tokenised once."""
  d = config.data
  if not d.corpus:
    raise ValueError("config.data.corpus is not set: pass --config.data.corpus=PATH_OR_GLOB (or tfds:NAME)")
  tokens = data.load_corpus(d.corpus, hf_io.resolve_checkpoint(config.teacher), d.seq_len, pack=d.pack,
                            cache_dir=workdir / "data_cache", tfds_split=d.tfds_split,
                            tfds_data_dir=d.tfds_data_dir or None, text_key=d.text_key,
                            min_sequences=(d.heldout + config.train.batch_size,
                                           "config.data.heldout + config.train.batch_size"))
  train_idx, heldout_idx = data.split_heldout(len(tokens), d.heldout, config.seed)
  return tokens, train_idx, heldout_idx


def check_workdir(workdir: str | os.PathLike) -> Path:
  """The workdir as a Path, after checking it can be written. A workdir that does not exist yet
  is not created here: each stage creates what it writes, so a command that fails its checks
  leaves nothing behind."""
  path = Path(workdir).expanduser().absolute()
  problem = None
  if path.exists():
    if not path.is_dir():
      problem = "it is a file"
    else:
      try:
        probe = path / f".write_probe_{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
      except OSError as e:
        problem = e.strerror
  else:
    parent = next(p for p in path.parents if p.exists())
    if not parent.is_dir():
      problem = f"{parent} is a file"
    elif not os.access(parent, os.W_OK | os.X_OK):
      problem = f"{parent} is not writable"
  if problem:
    raise ValueError(f"workdir {str(path)!r} cannot be written ({problem}); choose another --workdir")
  return path


def run_train(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, dict]:
  """Trains the SuperLM of every configured sub-space; returns their parameters by name."""
  workdir = check_workdir(workdir)
  teacher = load_teacher(config)
  tokens, train_idx, _ = load_split_corpus(config, workdir)
  mesh = parallel.make_mesh()
  logging.info("training on %d devices over %d processes; %d training sequences",
               jax.device_count(), jax.process_count(), len(train_idx))
  trained = {name: train_superlm(config, workdir, name, teacher, tokens, train_idx, mesh)
             for name in subspace_names(config)}
  if jax.process_index() == 0:
    print(training_summary(workdir, list(trained)))
  return trained


def training_summary(workdir: Path, names: list[str]) -> str:
  """Per sub-space: the distillation loss of each sampled size at the first and last log."""
  lines = ["SuperLM training: loss at first -> last logged step (largest / smallest / random)"]
  for name in names:
    records = read_metrics(workdir, f"superlm/{name}")
    if not records:
      continue
    first, last = records[0], records[-1]
    sizes = " / ".join(f"{first[k]:.4g} -> {last[k]:.4g}"
                       for k in first if k.startswith("loss/") and k in last)
    lines.append(f"  {name:>6} steps {first['step']}..{last['step']}: {sizes}")
  return "\n".join(lines)


def subspace_names(config: ml_collections.ConfigDict) -> list[str]:
  """The configured sub-spaces, smallest first."""
  spaces = [subspace_from_config(n, config.subspaces[n]) for n in config.subspaces]
  return [s.name for s in sorted(spaces, key=lambda s: (s.hidden[-1], s.layers[-1], s.name))]


def _heldout_global_batches(config, tokens, heldout_idx, mesh, pad_id) -> list[dict]:
  """Fixed held-out batches as global arrays (each host holds its rows)."""
  s = config.search
  batches = data.heldout_batches(tokens, heldout_idx, s.batch_size, pad_id)
  if s.num_batches > 0:
    batches = batches[:s.num_batches]
  return [parallel.global_batch_from_full(mesh, b) for b in batches]


def run_search(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, dict]:
  """Scores every student of every trained SuperLM; writes <workdir>/search/ and returns the
  selected student per budget."""
  workdir = check_workdir(workdir)
  teacher = load_teacher(config)
  tokens, _, heldout_idx = load_split_corpus(config, workdir)
  mesh = parallel.make_mesh()
  s = config.search
  dtype = DTYPES[s.dtype]
  batches = _heldout_global_batches(config, tokens, heldout_idx, mesh, teacher.config.pad_token_id)
  teacher_params = parallel.replicate(mesh, get_params(teacher))
  relations = search.make_teacher_relations(teacher, dtype)
  teacher_logits = [relations(teacher_params, b) for b in batches]
  tokens_evaluated = int(sum(int(b["attention_mask"].sum()) for b in batches))
  tc = teacher.config
  vocab = Vocab(tc.vocab_size, tc.max_position, tc.type_vocab_size)
  names = subspace_names(config)
  spaces = {n: subspace_from_config(n, config.subspaces[n]) for n in names}
  rows, superlms, timing = [], {}, {}
  bar = tqdm(total=sum(len(sp) for sp in spaces.values()), desc="search", unit="student",
             disable=jax.process_index() != 0, dynamic_ncols=True)
  for name in names:
    superlm, step = load_superlm(config, workdir, name, teacher, mesh)
    superlms[name] = superlm
    archs = spaces[name].enumerate()
    evaluator = search.make_evaluator(superlm, config.train.loss, dtype)
    start = time.perf_counter()
    losses = search.score_students(evaluator, parallel.replicate(mesh, get_params(superlm)),
                                   teacher_logits, batches, archs, s.students_per_call, bar.update)
    wall = time.perf_counter() - start
    timing[name] = {"students": len(archs), "wall_s": wall, "students_per_s": len(archs) / wall,
                    "superlm_step": step, "compilations": evaluator._cache_size()}
    for arch, loss in zip(archs, losses, strict=True):
      rows.append({"subspace": name, "name": arch.name, "layers": arch.layers, "hidden": arch.hidden,
                   "mlp_ratio": arch.mlp_ratio, "heads": arch.heads,
                   **search.student_costs(arch, tc.head_size, config.data.seq_len,
                                          vocab, tc.pooler),
                   "loss": float(loss), "tokens": tokens_evaluated})
  bar.close()
  teacher_costs = search.student_costs(tc.full_arch(), tc.head_size, config.data.seq_len, vocab, tc.pooler)
  budgets = [search.parse_budget(b, teacher_costs) for b in s.budgets]
  if any(b.metric == "latency_ms" for b in budgets):
    teacher_costs["latency_ms"] = search.measure_latency_ms(teacher, s.latency_batch_size, s.latency_seq_len)
    budgets = [search.parse_budget(b, teacher_costs) for b in s.budgets]
  selected = search.select(rows, budgets, superlms, (s.latency_batch_size, s.latency_seq_len),
                           s.max_latency_trials)
  if jax.process_index() == 0:
    target = workdir / "search"
    tmp = atomic.temp_dir_for(target)
    search.write_results_csv(tmp / "results.csv", rows)
    search.plot_pareto(tmp / "pareto.png", rows, selected, teacher_costs["flops"])
    (tmp / "selected.json").write_text(json.dumps(
        {b: {**row, "budget_limit": next(x.limit for x in budgets if x.text == b)}
         for b, row in selected.items()}, indent=2) + "\n")
    (tmp / "summary.json").write_text(json.dumps(
        {"teacher": {"name": config.teacher, **teacher_costs}, "timing": timing,
         "pareto_front": [r["name"] + "@" + r["subspace"] for r in search.pareto_front(rows)]},
        indent=2) + "\n")
    atomic.replace_dir(tmp, target)
    lines = [f"search: {len(rows)} students in {sum(t['wall_s'] for t in timing.values()):.1f} s"]
    lines += [f"  {n:>6}: {t['students']} students, {t['wall_s']:.1f} s, {t['students_per_s']:.1f}/s"
              for n, t in timing.items()]
    lines += [f"  {b}: {r['name']} ({r['subspace']}) loss {r['loss']:.4g}, "
              f"{r['flops'] / 1e9:.3f} GFLOPs, {r['params'] / 1e6:.2f}M params" for b, r in selected.items()]
    print("\n".join(lines))
  return selected


def parse_arch(text: str) -> Arch:
  try:
    layers, hidden, ratio, heads = (p.strip() for p in text.split(","))
    return Arch(int(layers), int(hidden), float(ratio), int(heads))
  except ValueError as e:
    raise ValueError(f"config.export.arch={text!r} is not 'L,H,R,A' (e.g. '4,96,3.0,8')") from e


def run_export(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> list[Path]:
  """Exports the selected students (or config.export.arch of config.export.subspace) to
  <workdir>/export/<subspace>-<arch>/ as Hugging Face checkpoints."""
  workdir = check_workdir(workdir)
  e = config.export
  if e.arch or e.subspace:
    if not (e.arch and e.subspace in config.subspaces):
      raise ValueError("export of one student needs config.export.arch='L,H,R,A' and "
                       f"config.export.subspace, one of {sorted(config.subspaces)}")
    wanted = {(e.subspace, parse_arch(e.arch)): None}
  else:
    selected_file = workdir / "search" / "selected.json"
    if not selected_file.is_file():
      raise FileNotFoundError(f"{selected_file} not found: run --mode=search first, or give "
                              "config.export.arch and config.export.subspace")
    selected = json.loads(selected_file.read_text())
    wanted = {}
    for row in selected.values():
      wanted[(row["subspace"], Arch.from_row(row))] = row["loss"]
  teacher = load_teacher(config)
  teacher_dir = hf_io.resolve_checkpoint(config.teacher)
  mesh = parallel.make_mesh()
  for name, arch in wanted:
    subspace_from_config(name, config.subspaces[name]).check_arch(arch)
  targets = [workdir / "export" / f"{name}-{arch.name}" for name, arch in wanted]
  clashes = [str(t) for t in targets if t.exists()]
  if clashes and not e.overwrite:
    raise FileExistsError(f"export targets exist: {', '.join(clashes)}; remove them or pass "
                          "--config.export.overwrite=True")
  superlms = {}
  for ((name, arch), loss), target in zip(wanted.items(), targets, strict=True):
    if name not in superlms:
      superlms[name] = load_superlm(config, workdir, name, teacher, mesh)[0]
    if jax.process_index() == 0:
      export.export_student(superlms[name], arch, target, teacher_dir=teacher_dir,
                            teacher_name=str(config.teacher), subspace=name,
                            seq_len=config.data.seq_len, loss=loss, overwrite=e.overwrite)
      print(f"exported {name} {arch.name} -> {target}")
  return targets


def run_finetune(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> Path:
  """Fine-tunes the teacher, every export and config.glue.models on config.glue.tasks."""
  from autodistil_jax import finetune

  return finetune.run_stage(config, check_workdir(workdir))


def run_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> Path:
  """The task-agnostic suite (evaluate.py) on the teacher, every export (the selected students
  not exported are scored inside their SuperLM) and, per architecture, the same student sliced
  from the teacher and randomly initialised; writes <workdir>/evaluate/ and the export cards."""
  from autodistil_jax import evaluate, evaluate_report, measures

  workdir = check_workdir(workdir)
  if not config.data.glue_dir:
    raise ValueError("config.data.glue_dir is not set: the suite reads STS-B dev and the probe tasks "
                     "from it; pass --config.data.glue_dir=PATH (the GLUE TSV root)")
  teacher_dir = hf_io.resolve_checkpoint(config.teacher)
  settings = evaluate.SuiteSettings.from_config(config, measures.read_pooling(teacher_dir))
  texts = evaluate.read_texts(settings, config.data.glue_dir)  # bad GLUE files stop us here
  teacher = load_teacher(config)
  exports = {p.name: p for p in sorted((workdir / "export").glob("*"))
             if p.is_dir() and not p.name.startswith(".")}
  selected_file = workdir / "search" / "selected.json"
  selected = json.loads(selected_file.read_text()).values() if selected_file.is_file() else []
  not_exported: dict[str, list[Arch]] = {}
  for row in selected:
    if f"{row['subspace']}-{row['name']}" not in exports:
      not_exported.setdefault(row["subspace"], []).append(Arch.from_row(row))
  mesh = parallel.make_mesh()
  subjects = evaluate.workdir_subjects(
      teacher, {n: hf_io.load_bert(p) for n, p in exports.items()},
      {n: (load_superlm(config, workdir, n, teacher, mesh)[0], a) for n, a in not_exported.items()},
      {f"{r['subspace']}-{r['name']}" for r in selected}, config.evaluate.baselines, config.seed)
  subjects += [evaluate.Subject(Path(p).name, "model", hf_io.load_bert(p)) for p in config.evaluate.models]
  tokens, _, heldout_idx = load_split_corpus(config, workdir)
  heldout = data.heldout_batches(tokens, heldout_idx, config.search.batch_size, teacher.config.pad_token_id)
  suite = evaluate.build_suite(settings, texts, data.load_tokenizer(teacher_dir), teacher, heldout)
  rows = evaluate.run_suite(subjects, suite)
  out = workdir / "evaluate" / "suite.md"
  if jax.process_index() == 0:
    evaluate_report.write_report(out.parent, rows, exports)
    print(f"evaluation suite ({out}):\n" + evaluate_report.markdown_table(rows))
  return out


STAGES = ("train", "search", "export", "evaluate", "finetune")
# What a user got wrong (config, paths, inputs): launch/main.py prints these as one line and exits 2.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError)


def run_stages(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
               stages: tuple[str, ...] = STAGES):
  """Runs `stages` (of STAGES) in order. A finished stage leaves a marker and is skipped when the
  command is run again; an interrupted one resumes (training from its last checkpoint, fine-tuning
  from the last finished model/task). Returns the last stage run's result (None: all skipped)."""
  workdir = check_workdir(workdir)
  result = None
  for stage in stages:
    i = STAGES.index(stage) + 1
    marker = workdir / "stages" / f"{stage}.done"
    if marker.is_file():
      print(f"[{i}/{len(STAGES)}] {stage}: done before, skipped")
      continue
    print(f"[{i}/{len(STAGES)}] {stage} ...")
    t0 = time.perf_counter()
    if stage == "export":  # re-exporting after an interrupted export replaces partial results
      config.export.overwrite = True
    result = MODES[stage](config, workdir)
    if jax.process_index() == 0:
      marker.parent.mkdir(parents=True, exist_ok=True)
      marker.write_text(f"{time.perf_counter() - t0:.1f} s\n")
    print(f"[{i}/{len(STAGES)}] {stage}: {time.perf_counter() - t0:.1f} s")
  return result


def run_all(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> Path:
  """train -> search -> export -> evaluate -> finetune, skipping finished stages (run_stages); ends
  with the evaluation suite's table (teacher, each student beside its sliced and random twins)."""
  start = time.perf_counter()
  result = run_stages(config, workdir)
  workdir = check_workdir(workdir)
  suite, glue_table = workdir / "evaluate" / "suite.md", workdir / "glue" / "summary.md"
  print(f"all stages finished in {time.perf_counter() - start:.1f} s; GLUE table: {glue_table}")
  if suite.is_file() and jax.process_index() == 0:
    print(f"evaluation suite, no fine-tuning ({suite}):\n{suite.read_text()}", end="")
  return glue_table if result is None else result


MODES = {"train": run_train, "search": run_search, "export": run_export, "evaluate": run_evaluate,
         "finetune": run_finetune, "all": run_all}
