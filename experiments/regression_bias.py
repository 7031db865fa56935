"""Why students do not learn STS-B by fine-tuning (docs/objective.md section 11): the same students
fine-tuned from their SuperLM under each config.glue.regression_bias, side by side.

  python experiments/regression_bias.py --workdir=runs/demo_proxy --subspace=base \
      --arch=6,288,2.5,12 --out=docs/regression_bias \
      --config.data.corpus='../shared/data/wikitext-2/*.txt' --config.data.glue_dir=../shared/data/glue

--workdir holds a trained SuperLM of --subspace, made with --config (default configs/demo.py,
overrides as on launch/main.py). Each --arch student is fine-tuned on --task under the config's
GLUE protocol (one seed, its max_train_examples subset, the dev score after the last epoch) in the
proxy search's program, once with the head's bias at zero (transformers' init) and once at the
training labels' mean. Writes <out>/<subspace>-<task>-<training examples>.md with the dev scores,
the first and last training losses and the seconds each took (a subset and the full set of the
same task go to separate pages).
"""

from __future__ import annotations

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
                                          "The config the SuperLM was trained with.", lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "A workdir holding the trained SuperLM.")
_SUBSPACE = flags.DEFINE_string("subspace", "base", "The sub-space whose SuperLM is read.")
_ARCHS = flags.DEFINE_multi_string("arch", None, "A student of that sub-space as 'L,H,R,A' (repeatable).")
_TASK = flags.DEFINE_string("task", "stsb", "A GLUE regression task.")
_OUT = flags.DEFINE_string("out", None, "Folder for the report.")
flags.mark_flags_as_required(["workdir", "out", "arch"])


def main() -> None:
  from autodistil_jax import data, finetune, glue, hf_io, parallel, proxy
  from autodistil_jax.search_space import Arch
  from autodistil_jax.train import load_superlm
  from autodistil_jax.workdir import Workdir

  config = _CONFIG.value
  task = glue.get_task(_TASK.value)
  if not task.is_regression:
    raise SystemExit(f"error: --task={task.name} is not a regression task; the head's bias matters there")
  archs = [Arch.parse(text, "--arch") for text in _ARCHS.value]
  teacher = hf_io.load_bert(config.teacher)
  mesh = parallel.make_mesh()
  superlm, step = load_superlm(config, Workdir.at(_WORKDIR.value), _SUBSPACE.value, teacher, mesh)
  tokenizer = data.load_tokenizer(hf_io.resolve_checkpoint(config.teacher))
  settings, train, dev, _ = proxy.glue_protocol(config, task.name, config.glue.epochs, tokenizer)
  lines = [f"# {task.name} fine-tuned from the {_SUBSPACE.value} SuperLM (step {step}), by head bias", "",
           f"`{' '.join(shlex.quote(a) for a in sys.argv)}`", "",
           f"{len(train['labels'])} training examples, {settings.steps} steps at peak learning rate "
           f"{settings.learning_rate:g}, one seed; labels: mean {np.mean(train['labels']):.3f}, "
           f"variance {np.var(train['labels']):.3f} (the loss of predicting the mean).", "",
           "| head bias | student | dev score | first loss | last loss | seconds (all students) |",
           "|---|---|---|---|---|---|"]
  for mode in glue.REGRESSION_BIAS:
    bias = finetune.head_bias(task, train["labels"], mode)
    start = time.perf_counter()
    metrics, losses = proxy.finetune_chunk(superlm, archs, train, dev, settings, mesh, len(archs), bias)
    seconds = time.perf_counter() - start
    for i, arch in enumerate(archs):
      lines.append(f"| {mode} ({bias:.3f}) | {arch.name} | {100 * glue.main_score(task, metrics[i]):.1f} | "
                   f"{losses[0, i]:.3f} | {losses[-1, i]:.3f} | {seconds:.0f} |")
  out = pathlib.Path(_OUT.value)
  out.mkdir(parents=True, exist_ok=True)
  path = out / f"{_SUBSPACE.value}-{task.name}-{len(train['labels'])}.md"
  path.write_text("\n".join(lines) + "\n")
  print("\n".join(lines[6:]))
  print(f"[regression_bias] {path}")


if __name__ == "__main__":
  cli.run(main)
