"""Our jitted dense training step (forward, backward, AdamW) against transformers' BertModel in
PyTorch: the same weights (all-MiniLM-L6-v2 by default, a student export, or with --size=paper a
BERT-base of random weights), batch, sequence length, loss (MSE of the last hidden state to a fixed
target) and dropout, on the GPU when torch sees one (bf16 autocast, SDPA attention, fused AdamW),
else on the CPU. --torch_compile also times torch.compile's model, side by side.

  python bench/versus_torch.py --batch=16 --seq_len=128                       # CPU, ~2 min
  python bench/versus_torch.py --size=paper --dtype=bfloat16 --batch=32 --torch_compile   # GPU

Targets: ours >= 1.5x faster than eager on the CPU; on a GPU >= 2x eager and >= 1.2x torch.compile.
"""

from __future__ import annotations

import json
import tempfile

import common
import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from absl import flags
from flax import nnx
from transformers import BertConfig, BertModel

from autodistil_jax import hf_io
from autodistil_jax.model import get_params

common.define_flags(batch=16)
flags.DEFINE_string("model", "all-MiniLM-L6-v2",
                    "HF BERT directory or name; a plain-BERT student export works too")
flags.DEFINE_integer("rounds", 10, "timing rounds per side (medians reported)")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "compute dtype (torch: autocast)")
flags.DEFINE_bool("torch_compile", False, "also time torch.compile(model)")

def ours(encoder, batch, target, dropout: float, lr: float, dtype):
  graphdef = nnx.graphdef(encoder)
  optimizer = optax.adamw(lr, weight_decay=0.01)

  def loss_fn(params, rng):
    out = nnx.merge(graphdef, params)(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                                      dropout_rate=dropout, dropout_rng=rng, dtype=dtype, unroll=True)
    return jnp.mean(jnp.square(out.hidden - target))

  @jax.jit
  def step(params, opt_state, rng):
    loss, grads = jax.value_and_grad(loss_fn)(params, rng)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  params = jax.tree.map(jnp.copy, get_params(encoder))
  return step, params, optimizer.init(params), jax.jit(loss_fn)


def checkpoint(args, workdir: str) -> str:
  """The HF directory both sides load: --model, or for --size=paper a BERT-base of random weights."""
  if args.size != "paper":
    return str(hf_io.resolve_checkpoint(args.model))
  torch.manual_seed(0)
  BertModel(BertConfig(), add_pooling_layer=False).save_pretrained(workdir)
  return workdir


def torch_side(directory: str, batch, target, dropout: float, lr: float, args):
  """(step functions by name, initial eval loss) of transformers' BertModel on torch's device."""
  device = "cuda" if torch.cuda.is_available() else "cpu"
  # Ours has no dropout on attention probabilities; neither has the PyTorch model here.
  hf_cfg = BertConfig.from_pretrained(directory, hidden_dropout_prob=dropout,
                                      attention_probs_dropout_prob=0.0)
  model = BertModel.from_pretrained(directory, config=hf_cfg, add_pooling_layer=False,
                                    attn_implementation="sdpa").to(device)
  t_batch = {k: torch.from_numpy(np.asarray(v).astype(np.int64)).to(device) for k, v in batch.items()}
  t_target = torch.from_numpy(np.array(target)).to(device)  # a writable copy
  opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, fused=device == "cuda")
  autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")
  model.eval()
  with torch.no_grad():
    initial = torch.mean((model(**t_batch).last_hidden_state.float() - t_target) ** 2).item()
  model.train()

  def stepper(m):
    def run():
      opt.zero_grad(set_to_none=True)
      with autocast:
        loss = torch.mean((m(**t_batch).last_hidden_state.float() - t_target) ** 2)
      loss.backward()
      opt.step()
      if device == "cuda":
        torch.cuda.synchronize()
    return run
  steps = {"torch": stepper(model)}
  if args.torch_compile:
    steps["torch_compile"] = stepper(torch.compile(model))
  return steps, initial


def main():
  args = common.args()
  with tempfile.TemporaryDirectory() as workdir:
    directory = checkpoint(args, workdir)
    encoder = hf_io.load_bert(directory)
    c = encoder.config
    if c.qkv_width != c.hidden:
      raise SystemExit(f"{args.model}: Q/K/V width {c.qkv_width} != hidden {c.hidden}; "
                       "BertModel cannot hold it")
    corpus_dir = directory if args.size != "paper" else None
    batch = common.make_batch(args.batch, args.seq_len, c.vocab_size, args.corpus, corpus_dir)
    target = jax.random.normal(jax.random.key(1), (args.batch, args.seq_len, c.hidden))
    dropout, lr = 0.1, 1e-4
    step, params, opt_state, eval_loss = ours(encoder, batch, target, dropout, lr, jnp.dtype(args.dtype))
    torch_steps, t_loss = torch_side(directory, batch, target, dropout, lr, args)
  j_loss = float(eval_loss(params, None))
  state = {"params": params, "opt": opt_state, "i": 0}

  def run_ours():
    state["params"], state["opt"], loss = step(state["params"], state["opt"], jax.random.key(state["i"]))
    state["i"] += 1
    loss.block_until_ready()

  times = common.interleaved_times({"ours": run_ours, **torch_steps}, rounds=args.rounds)
  tokens = args.batch * args.seq_len
  result = {"model": args.model if args.size != "paper" else "bert-base (random weights)",
            "batch": args.batch, "seq_len": args.seq_len, "dtype": args.dtype,
            "torch_device": "cuda" if torch.cuda.is_available() else "cpu",
            "torch_threads": torch.get_num_threads(), "initial_loss_diff": abs(j_loss - t_loss),
            **{f"{k}_s": t for k, t in times.items()},
            **{f"{k}_tokens_per_s": tokens / t for k, t in times.items()},
            **{f"speedup_vs_{k}": t / times["ours"] for k, t in times.items() if k != "ours"}}
  result["speedup"] = result["speedup_vs_torch"]
  print(f"device: {common.device_description()}; torch {torch.__version__} on {result['torch_device']}")
  print(f"{result['model']} batch {args.batch} x {args.seq_len} {args.dtype}: same initial loss to "
        f"{result['initial_loss_diff']:.1e}")
  print("train step: " + ", ".join(f"{k} {1e3 * t:.1f} ms ({tokens / t:.0f} tokens/s)"
                                   for k, t in times.items())
        + "; ours " + ", ".join(f"{result[f'speedup_vs_{k}']:.2f}x faster than {k}" for k in torch_steps))
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"device": common.device_description(), **result}, f, indent=2)


if __name__ == "__main__":
  common.run(main)
