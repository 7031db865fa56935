"""Our GLUE fine-tuning against transformers' own, on the same examples, batches, seeds and
hyperparameters: the reference is AutoModelForSequenceClassification trained in PyTorch with
AdamW and get_linear_schedule_with_warmup; ours is autodistil_jax.finetune.finetune, the code the
pipeline runs. Both see the identical sequence of batches (same permutation, same padding cut)
and pick their best epoch on dev the same way.

  python bench/glue_reference.py --data_dir=../shared/data/glue --out=docs/glue_reference \
      --tasks=stsb,mrpc,rte,cola --seeds=0,1,2        # 2-core CPU: see docs/evaluation.md

One JSON per (implementation, task, seed) under --out: a re-run skips finished cells, so the
script resumes where it was stopped. --report_only prints the table from the cells so far.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import common
import ml_collections
import numpy as np
from absl import flags

from autodistil_jax import data, finetune, glue, hf_io, parallel

flags.DEFINE_string("data_dir", None, "GLUE TSV root")
flags.DEFINE_string("out", None, "folder for one JSON per cell (resumable)")
flags.DEFINE_string("teacher", "all-MiniLM-L6-v2", "the model fine-tuned on both sides: a hub name or "
                    "HF directory, a student exported by this project included (its modeling code, "
                    "which lets hidden differ from heads x head size, is loaded: trust_remote_code)")
flags.DEFINE_string("tasks", "stsb,mrpc,rte,cola", "comma-separated GLUE tasks")
flags.DEFINE_string("seeds", "0,1,2", "comma-separated seeds")
flags.DEFINE_string("impls", "ours,torch", "which sides run: ours, torch")
flags.DEFINE_float("learning_rate", 0.0001, "peak learning rate")
flags.DEFINE_integer("batch_size", 32, "training batch size")
flags.DEFINE_integer("epochs", 3, "training epochs")
flags.DEFINE_float("warmup_ratio", 0.1, "share of the steps spent warming up")
flags.DEFINE_integer("seq_len", 128, "maximum tokens per example")
flags.DEFINE_integer("max_train", 0, "0: the full training set")
flags.DEFINE_enum("regression_bias", "zero", list(glue.REGRESSION_BIAS), "where a regression head's bias "
                  "starts, on both sides (config.glue.regression_bias; zero is transformers' init)")
flags.DEFINE_bool("report_only", False, "print the table from the cells so far, run nothing")
flags.mark_flags_as_required(['data_dir', 'out'])

def protocol(args) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "batch_size": args.batch_size, "eval_batch_size": 128, "epochs": args.epochs,
      "warmup_ratio": args.warmup_ratio, "pad_multiple": 16, "dropout": 0.1,
      "attention_dropout": 0.1, "regression_bias": args.regression_bias})


def load_task(task: glue.Task, data_dir: str, tokenizer, seq_len: int, max_train: int, seed: int):
  """The same features the pipeline's fine-tuning stage builds (finetune.task_features)."""
  splits = {s: glue.read_split(task, data_dir, s) for s in ("train", *task.dev_splits)}
  return finetune.task_features(task, splits, tokenizer, seq_len, max_train, seed)


def run_ours(teacher_dir, task, train, dev, cfg, lr: float, seed: int) -> dict:
  encoder = hf_io.load_bert(teacher_dir)
  result = finetune.finetune(encoder, task, train, dev, cfg, lr, seed, parallel.make_mesh(1))
  return {"best_epoch": result.best_epoch, "epochs": result.epochs}


def run_torch(teacher_dir, task, train, dev, cfg, lr: float, seed: int) -> dict:
  """The reference: transformers' classifier in PyTorch, fed our batches in our order."""
  import torch
  from transformers import AutoModelForSequenceClassification, get_linear_schedule_with_warmup

  torch.manual_seed(seed)
  model = AutoModelForSequenceClassification.from_pretrained(
      str(teacher_dir), num_labels=task.num_labels, attn_implementation="eager", trust_remote_code=True,
      problem_type="regression" if task.is_regression else "single_label_classification")
  with torch.no_grad():  # zero unless asked otherwise: transformers' own init
    model.classifier.bias.fill_(finetune.head_bias(task, train["labels"], cfg.regression_bias))
  steps_per_epoch = len(train["labels"]) // cfg.batch_size
  total = steps_per_epoch * cfg.epochs
  optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
  schedule = get_linear_schedule_with_warmup(optimizer, finetune.warmup_steps(total, cfg.warmup_ratio), total)
  as_torch = lambda b: {k: torch.as_tensor(v) for k, v in b.items()}
  rng = np.random.default_rng(seed)  # the same permutations finetune.finetune draws
  epochs = []
  for _ in range(cfg.epochs):
    model.train()
    for batch, _ in finetune.batches(train, cfg.batch_size, rng.permutation(len(train["labels"])),
                                     pad_multiple=cfg.pad_multiple):
      batch = as_torch(batch)
      if task.is_regression:
        batch["labels"] = batch["labels"].float()
      else:
        batch["labels"] = batch["labels"].long()
      model(**batch).loss.backward()
      optimizer.step()
      schedule.step()
      optimizer.zero_grad()
    model.eval()
    scores = {}
    for split, features in dev.items():
      preds = []
      with torch.no_grad():
        for b, n in finetune.batches(features, cfg.eval_batch_size, drop_last=False,
                                     pad_multiple=cfg.pad_multiple):
          logits = model(**as_torch({k: v for k, v in b.items() if k != "labels"})).logits.numpy()[:n]
          preds.append(logits[:, 0] if task.is_regression else logits.argmax(-1))
      scores[split] = glue.compute_metrics(task, np.concatenate(preds), features["labels"])
    epochs.append(scores)
  main = [glue.main_score(task, next(iter(e.values()))) for e in epochs]
  return {"best_epoch": int(np.argmax(main)), "epochs": epochs}


RUNNERS = {"ours": run_ours, "torch": run_torch}


def cell_score(cell: dict) -> float:
  task = glue.get_task(cell["task"])
  return 100 * glue.main_score(task, next(iter(cell["epochs"][cell["best_epoch"]].values())))


def report(out: Path, tasks: list[str]) -> str:
  cells = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
  lines = ["| task | ours (mean ± std) | transformers (mean ± std) | ours - reference | seeds | "
           "s/run ours | s/run torch |", "|---|---|---|---|---|---|---|"]
  for task in tasks:
    by = {impl: [c for c in cells if c["task"] == task and c["impl"] == impl] for impl in RUNNERS}
    scores = {impl: [cell_score(c) for c in cs] for impl, cs in by.items()}
    fmt = lambda s: f"{np.mean(s):.1f} ± {np.std(s):.1f}" if s else "—"
    diff = f"{np.mean(scores['ours']) - np.mean(scores['torch']):+.1f}" if all(scores.values()) else "—"
    secs = {impl: f"{np.mean([c['seconds'] for c in cs]):.0f}" if cs else "—" for impl, cs in by.items()}
    seeds = sorted({c["seed"] for cs in by.values() for c in cs})
    lines.append(f"| {task} | {fmt(scores['ours'])} | {fmt(scores['torch'])} | {diff} | "
                 f"{','.join(map(str, seeds))} | {secs['ours']} | {secs['torch']} |")
  return "\n".join(lines)


def main() -> None:
  args = common.args()
  tasks = [glue.get_task(t).name for t in args.tasks.split(",")]
  out = Path(args.out)
  if not args.report_only:
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    out.mkdir(parents=True, exist_ok=True)
    teacher_dir = hf_io.resolve_checkpoint(args.teacher)
    tokenizer = data.load_tokenizer(teacher_dir)
    cfg = protocol(args)
    for name in tasks:
      task = glue.get_task(name)
      train, dev = load_task(task, args.data_dir, tokenizer, args.seq_len, args.max_train, 0)
      for seed in (int(s) for s in args.seeds.split(",")):
        for impl in args.impls.split(","):
          path = out / f"{impl}-{name}-{seed}.json"
          if path.is_file():
            continue
          start = time.perf_counter()
          cell = RUNNERS[impl](teacher_dir, task, train, dev, cfg, args.learning_rate, seed)
          cell.update(impl=impl, task=name, seed=seed, seconds=round(time.perf_counter() - start, 1),
                      protocol={**cfg.to_dict(), "learning_rate": args.learning_rate,
                                "seq_len": args.seq_len, "max_train": args.max_train,
                                "train_examples": int(len(train["labels"]))})
          path.with_suffix(".tmp").write_text(json.dumps(cell, indent=1) + "\n")
          path.with_suffix(".tmp").replace(path)
          print(f"{impl} {name} seed {seed}: {cell_score(cell):.1f} ({cell['seconds']:.0f} s)", flush=True)
  print(report(out, tasks))


if __name__ == "__main__":
  common.run(main)
