"""Issue 15, part 2: which parameters SuperLM training moves, by how much, and how large each
student's gradient is, at the teacher-sliced initialisation and at the latest checkpoint.

  python experiments/parameter_movement.py --workdir=runs/curves_long/lr4e-5 \
      --out=docs/parameter_movement --config.data.corpus='../shared/data/wikitext-2/*.txt'

--workdir holds a trained SuperLM of --subspace (a learning-curves variant's workdir, say);
--config the config it was trained with (default configs/demo.py, overrides as on launch/main.py:
its sub-space, objective and corpus). Writes <out>/<workdir name>.md: per parameter and stored
layer, ||trained - initial|| / ||initial||; per fixed student (largest, nearest half the teacher's
FLOPs, smallest), the distillation loss and gradient norm per parameter kind on the first held-out
batch, dropout off.
"""

from __future__ import annotations

import pathlib
import shlex
import sys

import numpy as np
from absl import flags
from ml_collections import config_flags

from autodistil_jax import cli

ROOT = pathlib.Path(__file__).resolve().parents[1]
_CONFIG = config_flags.DEFINE_config_file("config", str(ROOT / "configs" / "demo.py"),
                                          "The config the SuperLM was trained with.", lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "A workdir holding the trained SuperLM.")
_SUBSPACE = flags.DEFINE_string("subspace", "base", "The sub-space whose SuperLM is read.")
_OUT = flags.DEFINE_string("out", None, "Folder for the report.")
flags.mark_flags_as_required(["workdir", "out"])

# Parameter kinds, for gradient norms: what each name of model.PARAM_AXES does.
KINDS = {"embeddings": ("word", "position", "token_type", "ln_scale", "ln_bias"),
         "q, k, v": ("q_kernel", "q_bias", "k_kernel", "k_bias", "v_kernel", "v_bias"),
         "attention output": ("attn_out_kernel", "attn_out_bias", "attn_ln_scale", "attn_ln_bias"),
         "FFN": ("ffn_in_kernel", "ffn_in_bias", "ffn_out_kernel", "ffn_out_bias", "ffn_ln_scale",
                 "ffn_ln_bias")}


def relative_change(initial: dict, trained: dict) -> dict[str, np.ndarray]:
  """"group/name" -> ||trained - initial|| / ||initial||: one value per stored layer for the layer
  group, one for the others."""
  out = {}
  for group, names in initial.items():
    for name, before in names.items():
      before, after = np.asarray(before, np.float64), np.asarray(trained[group][name], np.float64)
      rows = len(before) if group == "layers" else 1
      before, after = before.reshape(rows, -1), after.reshape(rows, -1)
      out[f"{group}/{name}"] = (np.linalg.norm(after - before, axis=1)
                                / np.maximum(np.linalg.norm(before, axis=1), 1e-12))
  return out


def gradient_norms(grads: dict) -> dict[str, float]:
  """Norm of the gradient per parameter kind (KINDS), over all layers, and of the last stored layer."""
  norm = lambda xs: float(np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64))) for x in xs)))
  out = {kind: norm([grads[g][n] for g in ("embeddings", "layers") for n in names if n in grads[g]])
         for kind, names in KINDS.items()}
  out["last stored layer"] = norm([v[-1] for v in grads["layers"].values()])
  out["total"] = norm([x for g in grads.values() for x in g.values()])
  return out


def report(changes: dict[str, np.ndarray], students: dict[str, dict], step: int, command: str) -> str:
  layers = max(len(v) for v in changes.values())
  lines = [f"# Parameter movement and gradient norms: `{_WORKDIR.value}`, sub-space {_SUBSPACE.value}", "",
           f"Produced by `{command}`; the SuperLM's latest checkpoint is step {step}.", "",
           "## ||trained - initial|| / ||initial|| (%), per stored layer", "",
           "| parameter | " + " | ".join(f"layer {i}" for i in range(layers)) + " |",
           "|---|" + "---|" * layers]
  for name, values in changes.items():
    cells = [f"{100 * v:.3f}" for v in values] + [""] * (layers - len(values))
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  kinds = list(next(iter(students.values()))["initial"]["grads"])
  lines += ["", "## Distillation loss and gradient norm per parameter kind (first held-out batch, "
            "no dropout)", "", "| student | weights | loss | " + " | ".join(kinds) + " |",
            "|---|---|---|" + "---|" * len(kinds)]
  for label, row in students.items():
    for when in ("initial", "trained"):
      r = row[when]
      lines.append(f"| {label} {row['arch']} | {when} | {r['loss']:.5f} | "
                   + " | ".join(f"{r['grads'][k]:.2e}" for k in kinds) + " |")
  return "\n".join(lines) + "\n"


def main() -> None:
  import jax
  from flax import nnx

  from autodistil_jax import data, distill, hf_io, parallel, pipeline
  from autodistil_jax.model import get_params, init_superlm
  from autodistil_jax.search_space import SubSpace, exact_flops
  from autodistil_jax.train import StepConfig, load_superlm
  from autodistil_jax.workdir import Workdir

  config, wd, name = _CONFIG.value, Workdir.at(_WORKDIR.value), _SUBSPACE.value
  if name not in config.subspaces:
    raise SystemExit(f"error: --subspace={name} is not in the config's sub-spaces {list(config.subspaces)}")
  teacher = hf_io.load_bert(config.teacher)
  space = SubSpace.from_config(name, config.subspaces[name])
  mesh = parallel.make_mesh()
  initial = init_superlm(teacher, space)
  trained, step = load_superlm(config, wd, name, teacher, mesh)
  changes = relative_change(jax.device_get(get_params(initial)), jax.device_get(get_params(trained)))

  sc = StepConfig.from_config(config, teacher)
  tokens, _, held = pipeline.load_split_corpus(config, wd)
  batch = data.heldout_batches(tokens, held, config.search.batch_size, teacher.config.pad_token_id)[0]
  t_out = teacher(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
  mask = batch["attention_mask"] if sc.embedding_relation_weight > 0 else None
  targets = distill.teacher_relations(t_out, sc.relation_heads, sc.hidden_relation_weight > 0, mask)

  def loss_and_grads(model, arch):
    graphdef, params = nnx.graphdef(model), get_params(model)

    def loss(p):
      out = nnx.merge(graphdef, p)(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                                   arch)
      return distill.distill_loss(targets, out, arch[3] * sc.head_size, batch["attention_mask"], sc.loss,
                                  arch[1], sc.hidden_relation_weight, sc.embedding_relation_weight)
    value, grads = jax.value_and_grad(loss)(params)
    return float(value), gradient_norms(jax.device_get(grads))

  c = teacher.config
  flops = lambda a: exact_flops(a, config.data.seq_len, c.head_size, c.pooler)
  half = min(space.enumerate(), key=lambda a: abs(flops(a) / flops(c.full_arch()) - 0.5))
  students = {}
  for label, arch in {"largest": space.largest, "half FLOPs": half, "smallest": space.smallest}.items():
    vector = jax.numpy.asarray(arch.as_array())
    students[label] = {"arch": arch.name, **{
        when: dict(zip(("loss", "grads"), loss_and_grads(model, vector), strict=True))
        for when, model in (("initial", initial), ("trained", trained))}}
  out = pathlib.Path(_OUT.value)
  out.mkdir(parents=True, exist_ok=True)
  path = out / f"{pathlib.Path(_WORKDIR.value).name}.md"
  path.write_text(report(changes, students, step, shlex.join(["python", *sys.argv])), encoding="utf-8")
  print(f"[movement] {path}")


if __name__ == "__main__":
  cli.run(main)
