"""The evaluation suite on reference encoders, with its wall time: the teacher, students sliced from
it at about 25%, 50% and 75% of its FLOPs (the demo sub-spaces' students nearest those fractions),
and a randomly initialised student of the 50% architecture. A working suite orders them
teacher > 75% > 50% > 25% > random on most measures (docs/evaluation.md).

  python bench/evaluate_suite.py --data_dir=../shared/data --out=runs/evaluate_suite   # CPU, ~5 min

Writes suite.md / suite.csv / suite.png and timing.json under --out. --models adds HF directories
(students this project exported, say) to the subjects; --pooling reads sentences another way than
the teacher's sentence-transformers config says (e.g. `cls`: the [CLS] state that a GLUE head reads).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import common
from absl import flags

from autodistil_jax import data, evaluate, evaluate_report, hf_io, measures
from autodistil_jax.defaults import demo_config as get_config
from autodistil_jax.model import extract_student, random_student
from autodistil_jax.search_space import SubSpace, exact_flops

flags.DEFINE_string("data_dir", None, "root holding glue/ and wikitext-2/")
flags.DEFINE_string("out", None, "folder for the suite's table, plot and JSON")
flags.DEFINE_integer("probe_train_examples", -1, "-1: the config's")
flags.DEFINE_list("models", [], "HF directories scored too (e.g. a workdir's export/*)")
flags.DEFINE_enum("pooling", "", ["", *measures.POOLINGS], "sentence pooling ('': the teacher's own)")
flags.mark_flags_as_required(['data_dir', 'out'])

def nearest_archs(config, teacher, fractions: tuple[float, ...]):
  """Per fraction, the demo student whose FLOPs are nearest that share of the teacher's."""
  c = teacher.config
  flops = lambda a: exact_flops(a, config.data.seq_len, c.head_size, c.pooler)
  spaces = [SubSpace.from_config(n, config.subspaces[n]) for n in config.subspaces]
  archs = sorted({a for space in spaces for a in space.enumerate()})
  full = flops(c.full_arch())
  return {f: min(archs, key=lambda a: (abs(flops(a) / full - f), -a.hidden)) for f in fractions}


def main() -> None:
  args = common.args()
  start = time.perf_counter()
  config = get_config()
  if args.probe_train_examples >= 0:
    config.evaluate.probe_train_examples = args.probe_train_examples
  config.evaluate.pooling = args.pooling
  teacher = hf_io.load_bert(config.teacher)
  teacher_dir = hf_io.resolve_checkpoint(config.teacher)
  tokens = data.load_corpus(f"{args.data_dir}/wikitext-2/*.txt", teacher_dir, config.data.seq_len)
  _, held = data.split_heldout(len(tokens), config.data.heldout, config.seed)
  heldout = data.heldout_batches(tokens, held, config.search.batch_size)
  settings = evaluate.SuiteSettings.from_config(config, measures.read_pooling(teacher_dir))
  texts = evaluate.read_texts(settings, f"{args.data_dir}/glue")
  suite = evaluate.build_suite(settings, texts, data.load_tokenizer(teacher_dir), teacher, heldout)
  prepared = time.perf_counter() - start
  archs = nearest_archs(config, teacher, (0.75, 0.5, 0.25))
  subjects = [evaluate.Subject("teacher", "teacher", teacher)]
  subjects += [evaluate.Subject(f"sliced {int(100 * f)}%", "sliced", extract_student(teacher, a))
               for f, a in archs.items()]
  subjects.append(evaluate.Subject("random 50%", "random", random_student(teacher.config, archs[0.5], 0)))
  subjects += [evaluate.Subject(Path(m).name, "model", hf_io.load_bert(m)) for m in args.models]
  rows, seconds = [], {}
  for subject in subjects:
    t0 = time.perf_counter()
    rows += evaluate.run_suite([subject], suite)
    seconds[subject.name] = round(time.perf_counter() - t0, 1)
    print(f"{subject.name}: {seconds[subject.name]} s", flush=True)
  out = Path(args.out)
  evaluate_report.write_report(out, rows, {})
  total = time.perf_counter() - start
  timing = {"prepare_s": round(prepared, 1), "per_subject_s": seconds, "total_s": round(total, 1),
            "teacher_and_3_students_s": round(prepared + sum(list(seconds.values())[:4]), 1),
            "sentences": suite.num_sentences, "settings": dataclasses.asdict(settings)}
  (out / "timing.json").write_text(json.dumps(timing, indent=2) + "\n")
  print(evaluate_report.markdown_table(rows))
  print(f"suite: prepare {prepared:.0f} s, teacher + 3 students {timing['teacher_and_3_students_s']:.0f} s, "
        f"all {total:.0f} s ({suite.num_sentences} sentences)")


if __name__ == "__main__":
  common.run(main)
