"""The stages a user runs from launch/main.py, wired from one config."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
from absl import logging
from tqdm import tqdm

from autodistil_jax import data, export, hf_io, parallel, search
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
                            tfds_data_dir=d.tfds_data_dir or None, text_key=d.text_key)
  train_idx, heldout_idx = data.split_heldout(len(tokens), d.heldout, config.seed)
  return tokens, train_idx, heldout_idx


def check_workdir(workdir: str | os.PathLike) -> Path:
  path = Path(workdir).expanduser()
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f".write_probe_{os.getpid()}"
    probe.write_text("ok")
    probe.unlink()
  except OSError as e:
    raise ValueError(f"workdir {str(path)!r} cannot be written ({e.strerror}); "
                     "choose another --workdir") from e
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
                       for k in ("loss/largest", "loss/smallest", "loss/random"))
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
  parallel.check_batch_size(s.batch_size, mesh)
  local = s.batch_size // jax.process_count()
  lo = jax.process_index() * local
  return [parallel.global_batch(mesh, {k: v[lo:lo + local] for k, v in b.items()}) for b in batches]


def _atomic_dir(target: Path) -> Path:
  tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir(parents=True)
  return tmp


def _replace_dir(tmp: Path, target: Path) -> None:
  if target.exists():
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old)
  else:
    os.replace(tmp, target)


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
  teacher_arch = Arch(tc.depth, tc.hidden, tc.ffn / tc.hidden, tc.heads)
  teacher_costs = search.student_costs(teacher_arch, tc.head_size, config.data.seq_len, vocab, tc.pooler)
  budgets = [search.parse_budget(b, teacher_costs) for b in s.budgets]
  if any(b.metric == "latency_ms" for b in budgets):
    teacher_costs["latency_ms"] = search.measure_latency_ms(teacher, s.latency_batch_size, s.latency_seq_len)
    budgets = [search.parse_budget(b, teacher_costs) for b in s.budgets]
  selected = search.select(rows, budgets, superlms, (s.latency_batch_size, s.latency_seq_len),
                           s.max_latency_trials)
  if jax.process_index() == 0:
    target = workdir / "search"
    tmp = _atomic_dir(target)
    search.write_results_csv(tmp / "results.csv", rows)
    search.plot_pareto(tmp / "pareto.png", rows, selected, teacher_costs["flops"])
    (tmp / "selected.json").write_text(json.dumps(
        {b: {**row, "budget_limit": next(x.limit for x in budgets if x.text == b)}
         for b, row in selected.items()}, indent=2) + "\n")
    (tmp / "summary.json").write_text(json.dumps(
        {"teacher": {"name": config.teacher, **teacher_costs}, "timing": timing,
         "pareto_front": [r["name"] + "@" + r["subspace"] for r in search.pareto_front(rows)]},
        indent=2) + "\n")
    _replace_dir(tmp, target)
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
      key = (row["subspace"], Arch(row["layers"], row["hidden"], row["mlp_ratio"], row["heads"]))
      wanted[key] = row["loss"]
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
