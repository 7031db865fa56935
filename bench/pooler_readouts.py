"""What each readout of an encoder knows of sentence meaning, zero-shot: STS-B dev (all pairs),
cosine of the two sentences' vectors, Spearman x100, for three readouts: the mean of the token
states (what the sentence-transformers teacher was trained for), the [CLS] state, and BERT's
pooler tanh(W [CLS] + b) (what a GLUE head reads); with the pooler outputs' spread over sentences
(standard deviation per feature, averaged): a cosine ignores that scale, a freshly initialised
linear head does not.

  python bench/pooler_readouts.py --data_dir=../shared/data/glue --out=runs/pooler_readouts \
      --models=runs/headline/export/base-L6_H288_R2.5_A12,runs/headline/export/small-L6_H176_R2.5_A10

Scores the teacher, the models given and the teacher sliced to each model's architecture; writes
readouts.json and prints a markdown table.
"""

from __future__ import annotations

import json
from pathlib import Path

import common
import jax.numpy as jnp
import numpy as np
from absl import flags

from autodistil_jax import data, glue, hf_io, measures
from autodistil_jax.model import extract_student

flags.DEFINE_string("data_dir", None, "GLUE TSV root")
flags.DEFINE_string("out", None, "folder for readouts.json")
flags.DEFINE_string("teacher", "all-MiniLM-L6-v2", "hub name or HF directory of the teacher")
flags.DEFINE_list("models", [], "HF directories of students (e.g. a workdir's export/*)")
flags.DEFINE_integer("batch_size", 64, "sentences per forward pass")
flags.mark_flags_as_required(["data_dir", "out"])


def readouts(model, tokenizer, texts: list[str], batch_size: int) -> dict[str, np.ndarray]:
  """[N, H] mean-pooled, [CLS] and pooler vectors of `texts`."""
  parts = {"mean": [], "cls": [], "pooler": []}
  for start in range(0, len(texts), batch_size):
    enc = tokenizer(texts[start:start + batch_size], padding=True, truncation=True, max_length=128,
                    return_tensors="np")
    out = model(*(jnp.asarray(enc[k]) for k in ("input_ids", "attention_mask", "token_type_ids")))
    mask = jnp.asarray(enc["attention_mask"])
    parts["mean"].append(np.asarray(measures.pool(out.hidden, mask, "mean")))
    parts["cls"].append(np.asarray(measures.pool(out.hidden, mask, "cls")))
    parts["pooler"].append(np.asarray(out.pooled))
  return {k: np.concatenate(v) for k, v in parts.items()}


def score(model, tokenizer, pairs: glue.Examples, batch_size: int) -> dict[str, float]:
  first = readouts(model, tokenizer, [t[0] for t in pairs.texts], batch_size)
  second = readouts(model, tokenizer, [t[1] for t in pairs.texts], batch_size)
  row = {k: measures.zero_shot_sts(first[k], second[k], pairs.labels)["sts_spearman"] for k in first}
  row["pooler_std"] = float(first["pooler"].std(0).mean())
  return row


def main() -> None:
  args = common.args()
  teacher = hf_io.load_bert(args.teacher)
  tokenizer = data.load_tokenizer(hf_io.resolve_checkpoint(args.teacher))
  pairs = glue.read_split(glue.get_task("stsb"), args.data_dir, "dev")
  models = {"teacher": teacher}
  for path in args.models:
    student = hf_io.load_bert(path)
    arch = student.config.full_arch()
    models[f"sliced {arch.name}"] = extract_student(teacher, arch)
    models[Path(path).name] = student
  rows = {}
  for name, model in models.items():
    rows[name] = score(model, tokenizer, pairs, args.batch_size)
    print(f"{name}: {rows[name]}", flush=True)
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / "readouts.json").write_text(json.dumps(rows, indent=2) + "\n")
  print("| model | mean | [CLS] | pooler | pooler std over sentences |\n|---|---|---|---|---|")
  for name, r in rows.items():
    print(f"| {name} | {r['mean']:.1f} | {r['cls']:.1f} | {r['pooler']:.1f} | {r['pooler_std']:.3f} |")


if __name__ == "__main__":
  common.run(main)
