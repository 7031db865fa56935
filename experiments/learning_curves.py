"""Issue 15, parts 1-2: as a SuperLM trains, do its students get better than their initialisation
(the same student sliced from the teacher), and under which objective?

  python experiments/learning_curves.py --workdir=runs/curves --data_dir=../shared/data \
      --out=docs/learning_curves --steps=20,80 --variants=paper,hidden1

Per variant (an objective: config overrides of the demo config, VARIANTS), the demo Base SuperLM
is trained on WikiText-2 (resumable, its own workdir under --workdir) to the last of --steps, and
at each of --steps the evaluation suite scores fixed students inside it: the largest, the
smallest, the one nearest half the teacher's FLOPs and --random_students drawn at random. Their
sliced twins are scored once (step 0). One JSON per (variant, step) under --out, each written
when it is done; a re-run skips them; results.md is rewritten after each, from every cell under
--out: a variant run again under other seeds (`<variant>_seedN`) gets, at each step two or more of
its seeds reached, each student's mean, spread and the count of seeds above its sliced twin.
"""

from __future__ import annotations

import itertools
import json
import pathlib
import shlex
import sys
import time

import ml_collections
import numpy as np
from absl import flags

from autodistil_jax import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "Where the SuperLMs of the variants are trained.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Root holding glue/ and wikitext-2/.")
_OUT = flags.DEFINE_string("out", None, "Folder for the cells (JSON) and results.md.")
_STEPS = flags.DEFINE_list("steps", ["20", "80"], "Training steps at which the students are scored.")
_VARIANTS = flags.DEFINE_list("variants", ["paper", "hidden1"], "Objectives to compare (VARIANTS).")
_RANDOM_STUDENTS = flags.DEFINE_integer(
    "random_students", 0, "How many students, drawn at random (seed 0), to score besides the fixed three.")
flags.mark_flags_as_required(["workdir", "data_dir", "out"])

# An objective: overrides of the demo config's training settings.
VARIANTS = {
    "paper": {},  # Q-Q, K-K, V-V relations of the last layer, MSE (docs/paper.md §3)
    "hidden1": {"hidden_relation_weight": 1.0},  # + the H-H relation of the last layer's output
    "kl": {"loss": "kl"},  # MiniLMv2's KL instead of the MSE
    "lr4e-5": {"learning_rate": 4e-5},  # the paper's peak learning rate instead of the demo's 2e-4
    # + the similarities of the batch's mean-pooled sentence embeddings (what the teacher is for)
    "lr4e-5_embed1": {"learning_rate": 4e-5, "embedding_relation_weight": 1.0},
    # the unlabeled sentences of the GLUE training sets, one per sequence, instead of WikiText-2
    "lr4e-5_glue": {"learning_rate": 4e-5, "glue_sentences": True},
    # as lr4e-5_glue with MiniLMv2's KL of the relation distributions instead of the paper's MSE
    "lr4e-5_glue_kl": {"learning_rate": 4e-5, "glue_sentences": True, "loss": "kl"},
    # lr4e-5_glue again under other seeds (config.seed: data order, sampled students, held-out
    # split, dropout), to tell its gains over the sliced twins from one run's luck
    "lr4e-5_glue_seed1": {"learning_rate": 4e-5, "glue_sentences": True, "seed": 1},
    "lr4e-5_glue_seed2": {"learning_rate": 4e-5, "glue_sentences": True, "seed": 2},
    # lr4e-5_glue_kl under the same seeds: KL's lead over the MSE, measured against both spreads
    "lr4e-5_glue_kl_seed1": {"learning_rate": 4e-5, "glue_sentences": True, "loss": "kl", "seed": 1},
    "lr4e-5_glue_kl_seed2": {"learning_rate": 4e-5, "glue_sentences": True, "loss": "kl", "seed": 2},
}
GLUE_SENTENCES = ("sst2", "mrpc", "rte", "cola", "stsb")


def variant_config(name: str, data_dir: pathlib.Path, steps: int) -> ml_collections.ConfigDict:
  from autodistil_jax.defaults import demo_config

  config = demo_config()
  config.subspaces = ml_collections.ConfigDict({"base": config.subspaces.base.to_dict()})
  config.data.corpus = f"{data_dir}/wikitext-2/*.txt"
  config.data.glue_dir = str(data_dir / "glue")
  config.train.num_steps = steps
  overrides = dict(VARIANTS[name])
  if overrides.pop("glue_sentences", False):  # one sentence per sequence, as a sentence encoder sees
    from autodistil_jax import glue

    target = pathlib.Path(_WORKDIR.value) / f"{name}.glue_sentences.txt"  # beside its workdir
    config.data.corpus = str(glue.write_training_sentences(data_dir / "glue", list(GLUE_SENTENCES), target))
    config.data.pack = False
  config.seed = overrides.pop("seed", config.seed)
  config.train.update(overrides)
  return config


def fixed_students(config, teacher, random_students: int = 0) -> dict[str, object]:
  from autodistil_jax.search_space import SubSpace, exact_flops

  space = SubSpace.from_config("base", config.subspaces.base)
  c = teacher.config
  flops = lambda a: exact_flops(a, config.data.seq_len, c.head_size, c.pooler)
  half = min(space.enumerate(), key=lambda a: abs(flops(a) / flops(c.full_arch()) - 0.5))
  chosen = {"largest": space.largest, "half FLOPs": half, "smallest": space.smallest}
  others = [a for a in space.enumerate() if a not in chosen.values()]
  for i, index in enumerate(np.random.default_rng(0).choice(len(others), random_students, replace=False)):
    chosen[f"random {i + 1}"] = others[index]
  return chosen


def main() -> None:
  from autodistil_jax import data, evaluate, hf_io, measures, parallel, pipeline
  from autodistil_jax.model import extract_student
  from autodistil_jax.train import load_superlm, train_superlm
  from autodistil_jax.workdir import Workdir

  data_dir = pathlib.Path(_DATA_DIR.value).expanduser().absolute()
  out = pathlib.Path(_OUT.value)
  if bad := [s for s in _STEPS.value if not s.isdigit() or int(s) < 1]:
    raise SystemExit(f"error: --steps: {bad} are not positive whole numbers of training steps")
  steps = sorted(int(s) for s in _STEPS.value)
  if bad := [v for v in _VARIANTS.value if v not in VARIANTS]:
    raise SystemExit(f"error: unknown variants {bad}: choose from {list(VARIANTS)}")
  out.mkdir(parents=True, exist_ok=True)  # only once the flags are known good
  base = variant_config("paper", data_dir, steps[-1])
  teacher = hf_io.load_bert(base.teacher)
  teacher_dir = hf_io.resolve_checkpoint(base.teacher)
  settings = evaluate.SuiteSettings.from_config(base, measures.read_pooling(teacher_dir))
  texts = evaluate.read_texts(settings, base.data.glue_dir)
  mesh = parallel.make_mesh()
  students = fixed_students(base, teacher, _RANDOM_STUDENTS.value)
  suite = None

  def scored(path: pathlib.Path, subjects) -> None:
    nonlocal suite
    if path.is_file():
      return
    if suite is None:  # built once, on the first cell to run
      tokens, _, held = pipeline.load_split_corpus(base, Workdir.at(pathlib.Path(_WORKDIR.value) / "paper"))
      heldout = data.heldout_batches(tokens, held, base.search.batch_size, teacher.config.pad_token_id)
      suite = evaluate.build_suite(settings, texts, data.load_tokenizer(teacher_dir), teacher, heldout)
    start = time.perf_counter()
    rows = evaluate.run_suite(subjects, suite)
    path.write_text(json.dumps({"rows": rows, "seconds": round(time.perf_counter() - start, 1)}, indent=1))
    (out / "results.md").write_text(report(out, students))
    plot(out, students)
    print(f"[curves] {path.name}: " + ", ".join(f"{r['model']} STS-B {r['sts_spearman']:.1f}" for r in rows))

  scored(out / "sliced-0.json", [evaluate.Subject(f"sliced {k}", "sliced", extract_student(teacher, a))
                                 for k, a in students.items()])
  for variant in _VARIANTS.value:
    config = variant_config(variant, data_dir, steps[-1])
    wd = Workdir.at(pathlib.Path(_WORKDIR.value) / variant)
    inputs = pipeline.stage_inputs(config, "train", "base")
    for step in steps:
      path = out / f"{variant}-{step}.json"
      if path.is_file():
        continue
      tokens, train_idx, _ = pipeline.load_split_corpus(config, wd)
      t0 = time.perf_counter()
      train_superlm(config, wd, "base", teacher, tokens, train_idx, mesh, stop_after=step, inputs=inputs)
      print(f"[curves] {variant}: trained to step {step} ({time.perf_counter() - t0:.0f} s)")
      superlm = load_superlm(config, wd, "base", teacher, mesh)[0]
      scored(path, [evaluate.Subject(variant, "searched", superlm, list(students.values()),
                                     [f"{variant} {k}" for k in students])])
  (out / "results.md").write_text(report(out, students))
  plot(out, students)
  print(f"[curves] {out / 'results.md'}, {out / 'curves.png'}")


MEASURES = {"relation": "held-out relation loss (the paper's objective) ↓", "cka": "CKA to the teacher",
            "sts_spearman": "zero-shot STS-B ρ", "probe_sst2": "SST-2 probe accuracy"}


def plot(out: pathlib.Path, students: dict) -> None:
  """curves.png: each measure against SuperLM steps (log scale), a line per student and variant,
  its sliced initialisation drawn at step 0 as a dotted level."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  cells = read_cells(out)
  fig, axes = plt.subplots(1, len(MEASURES), figsize=(5 * len(MEASURES), 4.2), dpi=110)
  colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for ax, (key, label) in zip(axes, MEASURES.items(), strict=True):
    for i, kind in enumerate(students):
      colour = colours[i % len(colours)]
      if "sliced-0" in cells:
        ax.axhline(cells["sliced-0"][i].get(key, float("nan")), color=colour, linestyle=":", linewidth=1)
      styles = itertools.cycle(("-", "--", "-.", (0, (3, 1, 1, 1, 1, 1)), (0, (1, 1))))
      for style, variant in zip(styles, VARIANTS, strict=False):  # styles cycle without end
        done = [(step, cells[f"{variant}-{step}"]) for step in scored_steps(cells, variant)]
        if done:
          ax.plot([s for s, _ in done], [rows[i].get(key, float("nan")) for _, rows in done], marker="o",
                  color=colour, linestyle=style, label=f"{kind} ({variant})")
    ax.set_xscale("log")
    ax.set_xlabel("SuperLM training steps (dotted: sliced from the teacher)")
    ax.set_title(label, fontsize=10)
    ax.grid(True, alpha=0.3)
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(out / "curves.png")
  plt.close(fig)


def report(out: pathlib.Path, students: dict) -> str:
  """Per student and measure: sliced, then each variant at each step it has been scored at (by this
  run or an earlier one, whatever its --steps); then the variants run under several seeds."""
  cells = read_cells(out)
  columns = [("sliced", 0)] + [(v, s) for v in VARIANTS for s in scored_steps(cells, v)]
  lines = ["# Learning curves: students of the demo Base SuperLM against their sliced initialisation",
           "", "Command (resumes; cells run so far):", "", "```",
           shlex.join(["python", "experiments/learning_curves.py", *sys.argv[1:]]), "```", ""]
  for key, label in MEASURES.items():
    lines += [f"## {label}", "", "| student | arch | " + " | ".join(
        "sliced" if v == "sliced" else f"{v} @{s}" for v, s in columns) + " |",
              "|---" * (len(columns) + 2) + "|"]
    for i, (kind, arch) in enumerate(students.items()):
      values = [cells[f"{v}-{s}"][i].get(key, float("nan")) for v, s in columns]
      lines.append(f"| {kind} | {arch.name} | " + " | ".join(_FORMATS[key].format(x) for x in values) + " |")
    lines.append("")
  return "\n".join(lines + seed_lines(cells, students))


_FORMATS = {"relation": "{:.5f}", "cka": "{:.3f}", "sts_spearman": "{:.1f}", "probe_sst2": "{:.1f}"}


def read_cells(out: pathlib.Path) -> dict[str, list[dict]]:
  """"<variant>-<step>" (and "sliced-0") -> the suite's rows, for every cell scored under `out`."""
  return {p.stem: json.loads(p.read_text())["rows"] for p in sorted(out.glob("*.json"))}


def scored_steps(cells: dict, variant: str) -> list[int]:
  return sorted(int(n.rsplit("-", 1)[1]) for n in cells if n.rsplit("-", 1)[0] == variant)


def seed_groups() -> dict[str, list[str]]:
  """variant -> [it, its _seedN variants]: the same objective under other seeds."""
  groups: dict[str, list[str]] = {}
  for name in VARIANTS:
    base, _, seed = name.rpartition("_seed")
    if base in VARIANTS and seed.isdigit():
      groups.setdefault(base, [base]).append(name)
  return groups


def seed_lines(cells: dict, students: dict) -> list[str]:
  """Per seeded objective and step that two or more of its seeds have reached: each student's
  mean, standard deviation and range over seeds, and how many seeds end above its sliced twin."""
  lines = []
  for base, group in seed_groups().items():
    for step in sorted({s for v in group for s in scored_steps(cells, v)}):
      runs = [cells[f"{v}-{step}"] for v in group if f"{v}-{step}" in cells]
      if len(runs) < 2:
        continue
      lines += [f"## {base} over {len(runs)} seeds at step {step}", "",
                "| student | arch | measure | sliced | mean ± sd | min..max | seeds above sliced |",
                "|---" * 7 + "|"]
      for i, (kind, arch) in enumerate(students.items()):
        for key in ("sts_spearman", "cka", "probe_sst2"):
          values = np.array([rows[i].get(key, float("nan")) for rows in runs])
          sliced = cells["sliced-0"][i].get(key, float("nan")) if "sliced-0" in cells else float("nan")
          f = _FORMATS[key].format
          lines.append(f"| {kind} | {arch.name} | {MEASURES[key]} | {f(sliced)} | {f(values.mean())} ± "
                       f"{f(values.std(ddof=1))} | {f(values.min())}..{f(values.max())} | "
                       f"{int((values > sliced).sum())} of {len(values)} |")
      lines.append("")
  return lines


if __name__ == "__main__":
  cli.run(main)
