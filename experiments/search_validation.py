"""Issue 15 part 3: does the search pick well? Kendall's tau between the search's held-out loss and
the evaluation suite's measures, over students spread across each sub-space, with bootstrap
confidence intervals (resampling students).

  python experiments/search_validation.py --workdir=runs/demo_proxy --out=docs/search_validation \
      --config.data.corpus='../shared/data/wikitext-2/*.txt' --config.data.glue_dir=../shared/data/glue

--workdir is a workdir whose search stage has run (its results.csv and SuperLM checkpoints);
--config the config it was made with (default configs/demo.py, overrides as on launch/main.py).
Per sub-space, --students students evenly spaced over the search's loss ranking (the best, the
worst and the ones between) are scored inside their SuperLM by the suite (one compiled program);
one JSON per sub-space under --out, skipped on a re-run; results.md is rewritten after each.

Part 3b adds fine-tuned scores of the same students (`--finetune_tasks=stsb,mrpc`): the config's
GLUE protocol (its learning rate, batch, epochs, dropouts, regression_bias and seeded
max_train_examples subset; one seed, the dev score after the last epoch), every student of a
sub-space from its SuperLM's weights in the proxy search's one program, `--students_per_call` at a
time, each call's scores kept in <sub-space>-<task>.json so that a stopped run resumes. A run
whose students, search losses or protocol differ from what --out holds stops before any work.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import pathlib
import shlex
import sys
import time

import numpy as np
from absl import flags
from ml_collections import config_flags

from autodistil_jax import cli

ROOT = pathlib.Path(__file__).resolve().parents[1]
_CONFIG = config_flags.DEFINE_config_file("config", str(ROOT / "configs" / "demo.py"),
                                          "The config the workdir was made with.", lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "A workdir whose search stage has run.")
_OUT = flags.DEFINE_string("out", None, "Folder for the cells (JSON) and results.md.")
_STUDENTS = flags.DEFINE_integer("students", 16, "Students per sub-space, spread over the loss ranking.")
_SUBSPACES = flags.DEFINE_list("subspaces", [], "Sub-spaces to score (default: every one searched).")
_BOOTSTRAP = flags.DEFINE_integer("bootstrap", 1000, "Bootstrap resamples of the students per tau.")
_FINETUNE = flags.DEFINE_list("finetune_tasks", [], "GLUE tasks to fine-tune the same students on "
                              "(part 3b), e.g. stsb,mrpc: the config's GLUE protocol, side by side.")
_EPOCHS = flags.DEFINE_integer("finetune_epochs", 0, "Epochs of that fine-tuning (0: each task's, "
                               "glue.task_epochs or glue.epochs).")
_PER_CALL = flags.DEFINE_integer("students_per_call", 0, "Students fine-tuned per call, their scores "
                                 "saved after each (0: as many as fit in memory).")
flags.mark_flags_as_required(["workdir", "out"])

# Suite measures the search's loss should predict: (column, title, higher is better).
MEASURES = (("relation", "suite relation loss", False), ("cka", "CKA to the teacher", True),
            ("sts_spearman", "zero-shot STS-B ρ", True), ("probe_avg", "probe average", True),
            ("probe_sst2", "SST-2 probe", True))


def spread(rows: list[dict], count: int) -> list[dict]:
  """`count` rows evenly spaced over the loss ranking (all of them when there are fewer)."""
  ranked = sorted(rows, key=lambda r: float(r["loss"]))
  if count >= len(ranked):
    return ranked
  return [ranked[i] for i in np.unique(np.linspace(0, len(ranked) - 1, count).round().astype(int))]


def tau_with_interval(loss: np.ndarray, measure: np.ndarray, higher_better: bool, resamples: int,
                      seed: int = 0) -> tuple[float, float, float]:
  """Kendall's tau between the search's ranking (low loss first) and the measure's (best first),
  with the 2.5th and 97.5th percentiles of its bootstrap over students."""
  from scipy.stats import kendalltau

  sign = 1.0 if higher_better else -1.0
  tau = lambda idx: kendalltau(-loss[idx], sign * measure[idx]).statistic
  rng = np.random.default_rng(seed)
  draws = [tau(rng.integers(0, len(loss), len(loss))) for _ in range(resamples)]
  low, high = np.nanpercentile(draws, [2.5, 97.5])
  return float(tau(np.arange(len(loss)))), float(low), float(high)


@dataclasses.dataclass(frozen=True)
class Protocol:
  """One task's fine-tuning under the config's GLUE protocol, read and tokenized once per run."""
  settings: object  # proxy.ProxySettings
  train: dict
  dev: dict
  head_bias: float | None
  max_train_examples: int

  @classmethod
  def from_config(cls, config, tokenizer, epochs: int, task_name: str, per_call: int = 0) -> Protocol:
    from autodistil_jax import proxy

    settings, train, dev, bias = proxy.glue_protocol(config, task_name, epochs, tokenizer)
    return cls(dataclasses.replace(settings, students_per_call=per_call), train, dev, bias,
               config.glue.max_train_examples)

  def inputs(self, names: list[str]) -> dict:
    """What the named students' stored scores must have been made with to be reused."""
    return {**self.settings.inputs(), "max_train_examples": self.max_train_examples,
            "head_bias": self.head_bias, "archs": list(names)}


def finetuned_scores(protocol: Protocol, superlm, archs, mesh, path: pathlib.Path) -> dict[str, float]:
  """arch name -> dev score after the protocol's fine-tuning from the SuperLM, on its seeded
  training subset; kept in `path` after every call of settings.students_per_call students (0: as
  many as fit; a re-run with the same settings resumes)."""
  from autodistil_jax import proxy, workdir

  inputs = protocol.inputs([a.name for a in archs])
  done = proxy.load_done(path, inputs)
  save = lambda scores: workdir.write_text_atomic(
      path, json.dumps({"inputs": inputs, "scores": scores}, indent=1) + "\n")
  chunk = proxy.students_per_call(protocol.settings, superlm.config, len(archs), mesh)
  scores = proxy.score_students(superlm, archs, protocol.train, protocol.dev, protocol.settings, mesh, chunk,
                                done, save, head_bias=protocol.head_bias)
  return {name: 100 * s["proxy_score"] for name, s in scores.items()}


def stored_cell(out: pathlib.Path, name: str, protocols: dict[str, Protocol]) -> list[dict]:
  """A sub-space this run does not score, as stored under `out`: its suite rows, with each task's
  fine-tuned scores where every student has one made under the current protocol (else no column:
  the report says "not run" rather than mixing protocols)."""
  from autodistil_jax import proxy

  rows = json.loads((out / f"{name}.json").read_text())["rows"]
  names = [r["arch"] for r in rows]
  for task, protocol in protocols.items():
    done = proxy.load_done(out / f"{name}-{task}.json", protocol.inputs(names))
    if all(n in done for n in names):
      for r in rows:
        r[f"finetuned_{task}"] = 100 * done[r["arch"]]["proxy_score"]
  return rows


def stale_outputs(out: pathlib.Path, chosen: dict[str, list[dict]],
                  protocols: dict[str, Protocol]) -> list[str]:
  """Stored files under `out` that a run over `chosen` (sub-space -> its spread rows of the
  search) would reuse or overwrite although they were made from another search (other students or
  losses) or under another fine-tuning protocol."""
  from autodistil_jax import proxy
  from autodistil_jax.search_space import Arch

  stale = []
  for name, rows in chosen.items():
    cell = out / f"{name}.json"
    expected = [(Arch.from_row(r).name, float(r["loss"])) for r in rows]
    stored = json.loads(cell.read_text())["rows"] if cell.is_file() else None
    if stored is not None and not same_search(stored, expected):
      stale.append(f"{cell} (other students or search losses)")
    for task, protocol in protocols.items():
      path = out / f"{name}-{task}.json"
      if path.is_file() and not proxy.made_with(path, protocol.inputs([arch for arch, _ in expected])):
        stale.append(f"{path} (other students or fine-tuning settings)")
  return stale


def same_search(stored: list[dict], expected: list[tuple[str, float]]) -> bool:
  """Stored suite rows were made from the same students with the same search losses, the losses up
  to float rounding: a SuperLM retrained on another CPU gives the same students losses a few 1e-7
  (relative) apart, and must not make the stored scores of those students unusable."""
  if [r["arch"] for r in stored] != [arch for arch, _ in expected]:
    return False
  losses = [r["search_loss"] for r in stored], [loss for _, loss in expected]
  return bool(np.allclose(*losses, rtol=1e-5, atol=0))


def report(cells: dict[str, list[dict]], resamples: int, tasks: list[str]) -> str:
  """Taus per sub-space and pooled, for the suite's measures and the fine-tuned scores of `tasks`
  (a sub-space whose students lack a task's scores shows "—" there, and the pooled row too)."""
  rows_all = [r for rows in cells.values() for r in rows]
  measures = [*MEASURES, *[(f"finetuned_{t}", f"fine-tuned {t}", True) for t in tasks
                           if any(f"finetuned_{t}" in r for r in rows_all)]]
  lines = ["# Does the search pick well? (issue 15, part 3)", "",
           "Produced by `experiments/search_validation.py` (command in its docstring; this run: "
           f"`{' '.join(shlex.quote(a) for a in sys.argv)}`).", "",
           "Kendall's tau between the search's held-out relation loss (low first) and each suite "
           f"measure (best first); 95% interval from {resamples} bootstrap resamples of the students.",
           "", "| sub-space | students | " + " | ".join(t for _, t, _ in measures) + " |",
           "|---|---|" + "---|" * len(measures)]
  pooled = [r for rows in cells.values() for r in rows]
  for name, rows in [*cells.items(), *([("all (pooled)", pooled)] if len(cells) > 1 else [])]:
    loss = np.array([r["search_loss"] for r in rows])
    parts = []
    for column, _, higher in measures:
      if any(column not in r for r in rows):
        parts.append("— (not run)")
        continue
      measure = np.array([r[column] for r in rows])
      if len(np.unique(measure)) < 2:  # tau is undefined: say why instead of printing nan
        parts.append(f"— (all {measure[0]:.3g})")
        continue
      tau, low, high = tau_with_interval(loss, measure, higher, resamples)
      parts.append(f"{tau:+.2f} [{low:+.2f}, {high:+.2f}]")
    lines.append(f"| {name} | {len(rows)} | " + " | ".join(parts) + " |")
  lines += ["", "Students (search loss, suite measures):", "",
            "| sub-space | student | search loss | " + " | ".join(t for _, t, _ in measures) + " |",
            "|---|---|---|" + "---|" * len(measures)]
  for name, rows in cells.items():
    for r in rows:
      lines.append(f"| {name} | {r['arch']} | {r['search_loss']:.5f} | "
                   + " | ".join("—" if c not in r else f"{r[c]:.4f}" if c == "relation" else f"{r[c]:.3f}"
                                for c, _, _ in measures)
                   + " |")
  return "\n".join(lines) + "\n"


def main() -> None:
  from autodistil_jax import data, evaluate, finetune_stage, glue, hf_io, parallel, pipeline
  from autodistil_jax.search_space import Arch
  from autodistil_jax.train import load_superlm
  from autodistil_jax.workdir import Workdir

  if bad := [t for t in _FINETUNE.value if t not in glue.TASKS]:
    raise SystemExit(f"error: --finetune_tasks: unknown GLUE tasks {bad}; choose from {sorted(glue.TASKS)}")
  config, out = _CONFIG.value, pathlib.Path(_OUT.value)
  wd = Workdir.at(_WORKDIR.value)
  results = pathlib.Path(wd.search_file("results"))
  if not results.is_file():
    raise SystemExit(f"error: {results} does not exist: run the search stage (--mode=search) on {wd} first")
  with results.open() as f:
    searched: dict[str, list[dict]] = {}
    for row in csv.DictReader(f):
      searched.setdefault(row["subspace"], []).append(row)
  if unknown := [k for k in _SUBSPACES.value if k not in searched]:
    raise SystemExit(f"error: --subspaces: {unknown} not in {results} (searched: {sorted(searched)})")
  by_space = {k: v for k, v in searched.items() if not _SUBSPACES.value or k in _SUBSPACES.value}
  teacher_dir = hf_io.resolve_checkpoint(config.teacher)
  tokenizer = data.load_tokenizer(teacher_dir)
  epochs = lambda task: _EPOCHS.value or finetune_stage.task_epochs(config.glue, task)
  protocols = {t: Protocol.from_config(config, tokenizer, epochs(t), t, _PER_CALL.value)
               for t in _FINETUNE.value}
  chosen = {name: spread(rows, _STUDENTS.value) for name, rows in by_space.items()}
  if stale := stale_outputs(out, chosen, protocols):
    raise SystemExit(f"error: --out={out} holds results of another search or protocol, which this run would "
                     f"mix with or overwrite: {'; '.join(stale)}. Move them away or choose another --out.")
  out.mkdir(parents=True, exist_ok=True)
  teacher = hf_io.load_bert(config.teacher)
  settings, texts = evaluate.read_inputs(config)
  tokens, _, held = pipeline.load_split_corpus(config, wd)
  heldout = data.heldout_batches(tokens, held, config.search.batch_size, teacher.config.pad_token_id)
  suite = evaluate.build_suite(settings, texts, data.load_tokenizer(teacher_dir), teacher, heldout)
  mesh = parallel.make_mesh()
  # The report covers every sub-space scored so far, not only those of this run: what is stored,
  # each replaced by this run's rows once its sub-space is done.
  cells = {k: stored_cell(out, k, protocols) for k in searched if (out / f"{k}.json").is_file()}
  for name, rows in chosen.items():
    archs = [Arch.from_row(r) for r in rows]
    superlm = None
    path = out / f"{name}.json"
    if not path.is_file():
      superlm, step = load_superlm(config, wd, name, teacher, mesh)
      start = time.perf_counter()
      scored = evaluate.run_suite([evaluate.Subject(name, "searched", superlm, archs)], suite)
      cell = [{**s, "search_loss": float(r["loss"]), "superlm_step": step}
              for s, r in zip(scored, rows, strict=True)]
      path.write_text(json.dumps({"rows": cell, "seconds": round(time.perf_counter() - start, 1)}, indent=1))
      print(f"[search_validation] {name}: {len(cell)} students in {time.perf_counter() - start:.0f} s")
    cells[name] = json.loads(path.read_text())["rows"]
    for task, protocol in protocols.items():
      superlm = superlm or load_superlm(config, wd, name, teacher, mesh)[0]
      start = time.perf_counter()
      scores = finetuned_scores(protocol, superlm, archs, mesh, out / f"{name}-{task}.json")
      seconds = time.perf_counter() - start
      print(f"[search_validation] {name} {task}: {len(scores)} students in {seconds:.0f} s")
      for row in cells[name]:
        row[f"finetuned_{task}"] = scores[row["arch"]]
    in_order = {k: cells[k] for k in searched if k in cells}
    (out / "results.md").write_text(report(in_order, _BOOTSTRAP.value, _FINETUNE.value))
  print(f"[search_validation] {out / 'results.md'}")


if __name__ == "__main__":
  cli.run(main)
