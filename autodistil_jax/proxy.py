"""Task-proxy search (docs/paper.md §4): every student of a sub-space is fine-tuned briefly from its
SuperLM's weights on a proxy GLUE task and scored on that task's dev set.

One compiled program per sub-space: the masked SuperLM with a head, stepped by the very train step
that fine-tunes an exported student (finetune.step_functions), vmapped over students. Each student
holds its own full-width copy of the SuperLM's parameters, its head and its AdamW state; what lies
past its width gets zero gradient and so never moves, which makes a student fine-tuned here the
student extracted and fine-tuned alone (tests/proxy_test.py). Every student of every sub-space sees
the same batches in the same order. Students go through in chunks sized to the device's memory
(`students_per_call`); scores are kept after every chunk, so a stopped search resumes.

The students of a call run side by side (`student_batching="vmap"`: large kernels, which an
accelerator needs to be busy) or one after another inside the same program ("map", lax.map: each
student skips the layers past its depth for real, where vmap turns that skip into a select; on a
CPU, where arithmetic dominates, that is the faster one). "auto" picks map on CPU, vmap elsewhere.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from autodistil_jax import finetune, glue, parallel
from autodistil_jax.model import BertEncoder, EncoderConfig, get_params, param_shapes
from autodistil_jax.search_space import Arch, arch_table

# GLUE's classification tasks, largest training set first: the default proxy is the first present.
_BY_SIZE = ("mnli", "qqp", "qnli", "sst2", "cola", "mrpc", "rte", "wnli")
# Share of the free memory the students of one call may take (the rest: XLA's own buffers).
_MEMORY_SHARE = 0.6
_BATCHING = ("auto", "vmap", "map")


@dataclasses.dataclass(frozen=True)
class ProxySettings:
  """config.search.proxy, checked: every bad value is refused before any work."""
  task: glue.Task
  steps: int
  learning_rate: float
  batch_size: int
  eval_batch_size: int
  warmup_ratio: float
  seq_len: int
  pad_multiple: int
  dropout: float
  attention_dropout: float
  dev_examples: int
  students: int
  students_per_call: int
  student_batching: str
  seed: int

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> ProxySettings:
    p = config.search.proxy
    problems = [f"config.search.proxy.{key}={p[key]!r} must be {what}" for key, ok, what in (
        ("steps", p.steps >= 1, "at least 1"),
        ("learning_rate", np.isfinite(p.learning_rate) and p.learning_rate > 0, "a positive number"),
        ("batch_size", p.batch_size >= 1, "at least 1"),
        ("eval_batch_size", p.eval_batch_size >= 1, "at least 1"),
        ("warmup_ratio", 0 <= p.warmup_ratio < 1, "in [0, 1)"),
        ("seq_len", p.seq_len >= 8, "at least 8"),
        ("pad_multiple", p.pad_multiple >= 0, "0 or more"),
        ("dropout", 0 <= p.dropout < 1, "in [0, 1)"),
        ("attention_dropout", 0 <= p.attention_dropout < 1, "in [0, 1)"),
        ("dev_examples", p.dev_examples >= 0, "0 (all) or more"),
        ("students", p.students >= 0, "0 (every student) or more"),
        ("students_per_call", p.students_per_call >= 0, "0 (as many as fit) or more"),
        ("student_batching", p.student_batching in _BATCHING, f"one of {', '.join(_BATCHING)}"))
        if not ok]
    if problems:
      raise ValueError("; ".join(problems))
    if not config.data.glue_dir:
      raise ValueError("config.search.proxy.enabled needs config.data.glue_dir (the GLUE TSV root, or "
                       "tfds:) to read the proxy task from")
    task = glue.get_task(p.task or default_task(config.data.glue_dir))
    if task.is_regression:
      raise ValueError(f"config.search.proxy.task={task.name!r} is a regression task; the proxy "
                       "search ranks students by a classification task's dev score")
    return cls(task, p.steps, float(p.learning_rate), p.batch_size, p.eval_batch_size,
               float(p.warmup_ratio), p.seq_len, p.pad_multiple, float(p.dropout),
               float(p.attention_dropout), p.dev_examples, p.students, p.students_per_call,
               p.student_batching, config.seed)

  def inputs(self) -> dict:
    """What a student's proxy score depends on besides its SuperLM (stored beside the scores)."""
    fields = dataclasses.asdict(self)
    # Neither how many run in a call, nor how, nor the sample's size changes a student's score.
    for key in ("students_per_call", "student_batching", "students"):
      fields.pop(key)
    return {**fields, "task": self.task.name}


def default_task(glue_dir: str) -> str:
  """The largest GLUE classification task whose training and dev files are under `glue_dir`
  (MNLI, the paper's proxy, when all are; tensorflow-datasets holds every task)."""
  if glue_dir.startswith(glue.TFDS_PREFIX):
    return _BY_SIZE[0]
  for name in _BY_SIZE:
    task = glue.get_task(name)
    if all(glue.tsv_path(task, glue_dir, s).is_file() for s in ("train", *task.dev_splits)):
      return name
  raise ValueError(f"no GLUE classification task with train and dev files under {glue_dir}; set "
                   "config.search.proxy.task or config.data.glue_dir")


def sample_students(archs: Sequence[Arch], count: int, seed: int) -> list[Arch]:
  """Every arch (count 0), or a seeded sample of `count` in their original order."""
  if count == 0 or count >= len(archs):
    return list(archs)
  keep = np.sort(np.random.default_rng(seed).choice(len(archs), count, replace=False))
  return [archs[i] for i in keep]


def read_task(settings: ProxySettings, glue_dir: str, tokenizer) -> tuple[dict, dict]:
  """(train features, features of the first dev split, cut to a seeded dev_examples subset)."""
  task = settings.task
  splits = {"train": glue.read_split(task, glue_dir, "train"),
            task.dev_splits[0]: glue.read_split(task, glue_dir, task.dev_splits[0])}
  train, dev = finetune.task_features(task, splits, tokenizer, settings.seq_len, 0, settings.seed)
  dev = next(iter(dev.values()))
  keep = glue.seeded_subset(len(dev["labels"]), settings.dev_examples, settings.seed)
  return train, {k: v[keep] for k, v in dev.items()}


def glue_protocol(config: ml_collections.ConfigDict, task_name: str, epochs: int,
                  tokenizer) -> tuple[ProxySettings, dict, dict, float]:
  """config.glue's protocol for this program, which fine-tunes many students side by side: its
  learning rate, batch, warmup, dropouts and sequence length, its seeded max_train_examples subset
  for `epochs` epochs, one seed, every dev example, the dev score after the last step (the GLUE
  stage keeps the best epoch's); regression tasks allowed (experiments/search_validation.py).
  (settings, train features, dev features, the head's initial bias: finetune.head_bias)."""
  g = config.glue
  settings = ProxySettings(glue.get_task(task_name), 0, float(g.learning_rates[0]), g.batch_size,
                           g.eval_batch_size, float(g.warmup_ratio), g.seq_len, g.pad_multiple,
                           float(g.dropout), float(g.attention_dropout), 0, 0, 0, "auto", config.seed)
  train, dev = read_task(settings, config.data.glue_dir, tokenizer)
  keep = glue.seeded_subset(len(train["labels"]), g.max_train_examples, config.seed)
  train = {k: v[keep] for k, v in train.items()}
  settings = dataclasses.replace(settings, steps=epochs * (len(train["labels"]) // settings.batch_size))
  return settings, train, dev, finetune.head_bias(settings.task, train["labels"], g.regression_bias)


def training_batches(train: dict[str, np.ndarray], settings: ProxySettings) -> Iterator[dict]:
  """`steps` batches: seeded permutations of the training set, one after another."""
  n, size = len(train["labels"]), settings.batch_size
  if n < size:
    raise ValueError(f"proxy task {settings.task.name}: {n} training examples are fewer than one "
                     f"batch of {size}")
  rng, order = np.random.default_rng(settings.seed), np.empty(0, np.int64)
  for step in range(settings.steps):
    while len(order) < (step + 1) * size:
      order = np.concatenate([order, rng.permutation(n)])
    idx = order[step * size:(step + 1) * size]
    yield finetune.trim_padding({k: v[idx] for k, v in train.items()}, settings.pad_multiple)


# --- memory ---------------------------------------------------------------------------------------

def student_bytes(c: EncoderConfig, num_labels: int, rows_per_device: int, seq_len: int) -> tuple[int, int]:
  """(what each student of a call holds: its fp32 parameters, gradients, two AdamW moments and one
  update's temporaries; the activations one student's backward pass keeps)."""
  params = sum(int(np.prod(shape)) for group in param_shapes(c).values() for shape in group.values())
  params += (c.hidden + 1) * num_labels
  per_token_layer = 12 * c.hidden + 3 * c.ffn + 3 * c.heads * seq_len + 4 * c.qkv_width
  activations = c.max_layers * rows_per_device * seq_len * per_token_layer
  return 4 * 5 * params, 4 * activations


def student_batching(settings: ProxySettings, mesh: jax.sharding.Mesh) -> str:
  """"vmap" or "map", with "auto" resolved for the mesh's devices (map on CPU: module docstring)."""
  if settings.student_batching != "auto":
    return settings.student_batching
  return "map" if mesh.devices.flat[0].platform == "cpu" else "vmap"


def free_bytes(device: jax.Device) -> int:
  """Free memory of an accelerator (its allocator's limit less what is in use), or the host's
  available RAM for the CPU."""
  stats = device.memory_stats() if device.platform != "cpu" else None
  if stats and "bytes_limit" in stats:
    return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
  return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def students_per_call(settings: ProxySettings, superlm_config: EncoderConfig, students: int,
                      mesh: jax.sharding.Mesh, free: int | None = None) -> int:
  """How many students one call fine-tunes: as many as fit in _MEMORY_SHARE of the free memory
  (side by side, each keeps its activations; one after another, only one student's are alive), or
  the configured number, refused (one line, before any work) when it would not fit."""
  rows = -(-settings.batch_size // mesh.size)
  state, activations = student_bytes(superlm_config, settings.task.num_labels, rows, settings.seq_len)
  per, fixed = ((state + activations, 0) if student_batching(settings, mesh) == "vmap"
                else (state, activations))
  free = free_bytes(mesh.devices.flat[0]) if free is None else free
  fit = max(int((free * _MEMORY_SHARE - fixed) // per), 0)
  if settings.students_per_call:
    if settings.students_per_call > fit:
      raise ValueError(
          f"config.search.proxy.students_per_call={settings.students_per_call} needs about "
          f"{(fixed + settings.students_per_call * per) / 2**30:.1f} GiB per call, more than "
          f"{_MEMORY_SHARE:.0%} of the {free / 2**30:.1f} GiB free on {mesh.devices.flat[0].platform}; "
          f"lower it (at most {fit} fit) or set 0 to size it from memory")
    return settings.students_per_call
  if fit == 0:
    raise ValueError(f"one student of the proxy search needs about {(fixed + per) / 2**30:.1f} GiB, "
                     f"more than {_MEMORY_SHARE:.0%} of the {free / 2**30:.1f} GiB free; lower "
                     "config.search.proxy.batch_size or seq_len")
  return min(fit, students)


# --- the compiled program -------------------------------------------------------------------------

@functools.lru_cache(maxsize=16)
def make_program(superlm_config: EncoderConfig, task: glue.Task, dropout: float, attention_dropout: float,
                 mesh: jax.sharding.Mesh, chunk: int, batching: str):
  """Jitted (start, train_step, predict) for `chunk` students of a SuperLM of `superlm_config`:
  start(params, head) -> stacked per-student parameters and AdamW states; train_step and predict
  are finetune's, over students (parameters, optimizer state and arch; one shared batch) by
  `batching`: "vmap" (side by side) or "map" (one after another)."""
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: BertEncoder(superlm_config, rngs=nnx.Rngs(0))))
  optimizer = finetune.make_optimizer()
  train_one, predict_one = finetune.step_functions(graphdef, task, dropout, attention_dropout, optimizer)
  rep, data = parallel.replicated(mesh), parallel.batch_sharded(mesh)

  def start(params):
    stacked = jax.tree.map(lambda x: jnp.broadcast_to(x, (chunk, *x.shape)), params)
    return stacked, jax.vmap(optimizer.init)(stacked)

  if batching == "vmap":
    train_step = jax.vmap(train_one, in_axes=(0, 0, None, None, None, 0))
    predict = jax.vmap(predict_one, in_axes=(0, None, 0))
  else:
    def train_step(params, opt_state, batch, rng, schedule, table):
      return jax.lax.map(lambda s: train_one(*s[:2], batch, rng, schedule, s[2]), (params, opt_state, table))

    def predict(params, batch, table):
      return jax.lax.map(lambda s: predict_one(s[0], batch, s[1]), (params, table))
  return (jax.jit(start, in_shardings=(rep,), out_shardings=(rep, rep)),
          jax.jit(train_step, in_shardings=(rep, rep, data, rep, rep, rep),
                  out_shardings=(rep, rep, rep), donate_argnums=(0, 1)),
          jax.jit(predict, in_shardings=(rep, data, rep), out_shardings=rep))


def _train(train_step, params, opt_state, train: dict, settings: ProxySettings, mesh: jax.sharding.Mesh,
           *args) -> tuple[dict, np.ndarray]:
  """`settings.steps` steps of `train_step(params, opt_state, batch, rng, schedule, *args)` on
  training_batches; (final parameters, the losses, one row per step)."""
  schedule = finetune.schedule_values(mesh, settings.learning_rate, settings.steps, settings.warmup_ratio)
  key, losses = jax.random.key(settings.seed), []
  for step, batch in enumerate(training_batches(train, settings)):
    params, opt_state, loss = train_step(params, opt_state, parallel.global_batch_from_full(mesh, batch),
                                         jax.random.fold_in(key, step), schedule, *args)
    losses.append(loss)  # fetched once, after the last step: the host never waits per step
  return params, np.stack(jax.device_get(losses))


def finetune_chunk(superlm: BertEncoder, archs: Sequence[Arch], train: dict, dev: dict,
                   settings: ProxySettings, mesh: jax.sharding.Mesh, chunk: int,
                   head_bias: float = 0.0) -> tuple[list[dict], np.ndarray]:
  """(GLUE metrics on dev of each of `archs`, their training losses [steps, len(archs)]) after
  fine-tuning each from the SuperLM's weights, the head's bias starting at `head_bias`; at most
  `chunk` archs, the call padded to `chunk` with copies of the last."""
  table = parallel.replicate(mesh, arch_table(archs, chunk))
  start, train_step, predict = make_program(superlm.config, settings.task, settings.dropout,
                                            settings.attention_dropout, mesh, chunk,
                                            student_batching(settings, mesh))
  head = finetune.init_head(superlm.config.hidden, settings.task.num_labels, settings.seed, head_bias)
  params, opt_state = start(parallel.replicate(mesh, {"encoder": get_params(superlm), "head": head}))
  params, losses = _train(train_step, params, opt_state, train, settings, mesh, table)
  preds = finetune.predict_all(predict, params, dev, settings.eval_batch_size, settings.pad_multiple, mesh,
                               table)
  losses = losses[:, :len(archs)]
  finite = np.isfinite(losses).all(0)
  # A student whose loss went non-finite scores NaN: never selected, never kept (load_done).
  return [glue.compute_metrics(settings.task, preds[i], dev["labels"]) if finite[i]
          else dict.fromkeys(settings.task.metrics, float("nan")) for i in range(len(archs))], losses


def finetune_alone(superlm: BertEncoder, arch: Arch, train: dict, dev: dict, settings: ProxySettings,
                   mesh: jax.sharding.Mesh) -> tuple[dict, np.ndarray]:
  """What finetune_chunk computes for one student, the slow way: the student extracted, its head
  cut from the same initial head, fine-tuned by finetune.make_functions (the step that fine-tunes
  exports: one compilation per student shape) on the same batches. (dev metrics, losses [steps])."""
  from autodistil_jax.model import extract_student

  student = extract_student(superlm, arch)
  optimizer, train_step, predict = finetune.make_functions(
      student.config, settings.task, settings.dropout, settings.attention_dropout, mesh)
  head = finetune.init_head(superlm.config.hidden, settings.task.num_labels, settings.seed)
  params = {"encoder": jax.tree.map(jnp.array, get_params(student)),
            "head": {"kernel": head["kernel"][:arch.hidden], "bias": head["bias"]}}
  params, opt_state = parallel.replicate(mesh, params), parallel.replicate(mesh, optimizer.init(params))
  params, losses = _train(train_step, params, opt_state, train, settings, mesh)
  preds = finetune.predict_all(predict, params, dev, settings.eval_batch_size, settings.pad_multiple, mesh)
  return glue.compute_metrics(settings.task, preds, dev["labels"]), losses


def score_students(superlm: BertEncoder, archs: Sequence[Arch], train: dict, dev: dict,
                   settings: ProxySettings, mesh: jax.sharding.Mesh, chunk: int,
                   done: dict[str, dict], save: Callable[[dict[str, dict]], None],
                   progress: Callable[[int], None] | None = None,
                   head_bias: float = 0.0) -> dict[str, dict]:
  """arch name -> {"proxy_score": main GLUE score, **metrics} for every arch; those in `done` are
  kept, the rest fine-tuned `chunk` at a time (finetune_chunk), `save` called with everything after
  each chunk."""
  scores = {a.name: done[a.name] for a in archs if a.name in done}
  todo = [a for a in archs if a.name not in scores]
  if progress is not None:
    progress(len(archs) - len(todo))
  for begin in range(0, len(todo), chunk):
    part = todo[begin:begin + chunk]
    metrics, losses = finetune_chunk(superlm, part, train, dev, settings, mesh, chunk, head_bias)
    for arch, m, loss in zip(part, metrics, losses.T, strict=True):
      scores[arch.name] = {"proxy_score": glue.main_score(settings.task, m), **m,
                           "final_train_loss": float(loss[-1])}
    save(scores)
    if progress is not None:
      progress(len(part))
  return scores


def made_with(path, inputs: dict) -> bool:
  """Whether the scores kept at `path` were made with `inputs` (no file: they were not)."""
  return path.is_file() and json.loads(path.read_text(encoding="utf-8")).get("inputs") == inputs


def load_done(path, inputs: dict) -> dict[str, dict]:
  """The scores kept at `path` when they were made with `inputs` and are finite; else none."""
  if not made_with(path, inputs):
    return {}
  stored = json.loads(path.read_text(encoding="utf-8"))
  return {name: s for name, s in stored["scores"].items() if np.isfinite(s["proxy_score"])}


def constant_score(task: glue.Task, dev_labels: np.ndarray) -> float:
  """The best dev score of a model that predicts one class for everything: a student at or below
  it has learnt nothing the proxy can rank it by."""
  return max(glue.main_score(task, glue.compute_metrics(task, np.full(len(dev_labels), c), dev_labels))
             for c in range(task.num_labels))


def kendall_tau(rows: Sequence[dict]) -> float | None:
  """Agreement of the agnostic ranking (low loss first) with the proxy's (high score first), from
  -1 to 1; None where it is undefined (fewer than two students, or one ranking all ties)."""
  from scipy.stats import kendalltau

  if len({r["proxy_score"] for r in rows}) < 2 or len({r["loss"] for r in rows}) < 2:
    return None
  return float(kendalltau([-r["loss"] for r in rows], [r["proxy_score"] for r in rows]).statistic)


def superlm_identity(record: dict, step: int) -> str:
  """A SuperLM as the proxy scores depend on it: its training record and checkpoint step."""
  import hashlib

  return hashlib.sha256(json.dumps([record, step], sort_keys=True).encode()).hexdigest()[:20]


def search(settings: ProxySettings, superlms: dict[str, tuple[BertEncoder, str, list[Arch]]],
           train: dict, dev: dict, chunks: dict[str, int], mesh: jax.sharding.Mesh,
           store) -> tuple[dict, dict]:
  """({sub-space: {arch name: scores}}, timing) for `superlms`: name -> (SuperLM, its identity
  (superlm_identity), its students), `chunks[name]` students per call (students_per_call).
  `store(name)` is the file that keeps a sub-space's scores: those made with the same settings and
  SuperLM are reused, the rest computed and saved after every chunk."""
  import time

  from tqdm import tqdm

  from autodistil_jax.workdir import write_text_atomic

  bar = tqdm(total=sum(len(a) for _, _, a in superlms.values()), desc=f"proxy {settings.task.name}",
             unit="student", disable=jax.process_index() != 0, dynamic_ncols=True)
  scores, timing = {}, {}
  for name, (superlm, identity, archs) in superlms.items():
    inputs, path = {**settings.inputs(), "superlm": identity}, store(name)
    done = load_done(path, inputs)

    def save(new, inputs=inputs, path=path, done=done):
      # Every score kept so far, those of students outside this sample included.
      if jax.process_index() == 0:
        write_text_atomic(path, json.dumps({"inputs": inputs, "scores": {**done, **new}}, indent=1) + "\n")
    reused = sum(a.name in done for a in archs)
    start = time.perf_counter()
    scores[name] = score_students(superlm, archs, train, dev, settings, mesh, chunks[name], done, save,
                                  bar.update)
    wall = time.perf_counter() - start
    fresh = len(archs) - reused
    timing[name] = {"students": len(archs), "reused": reused, "wall_s": wall,
                    "students_per_s": fresh / wall if fresh else None,
                    "students_per_call": chunks[name]}
  bar.close()
  return scores, timing
