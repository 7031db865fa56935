"""Our jitted student training step (forward, backward, AdamW) against transformers' BertModel in
PyTorch: the same weights (all-MiniLM-L6-v2 by default, or a student export), batch, sequence
length, loss (MSE of the last hidden state to a fixed target) and dropout, on this machine's CPU.

  python bench/versus_torch.py --batch=16 --seq_len=128      # CPU, ~2 min

Target: ours >= 1.5x faster.
"""

from __future__ import annotations

import json

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

def ours(encoder, batch, target, dropout: float, lr: float):
  graphdef = nnx.graphdef(encoder)
  optimizer = optax.adamw(lr, weight_decay=0.01)

  def loss_fn(params, rng):
    out = nnx.merge(graphdef, params)(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                                      dropout_rate=dropout, dropout_rng=rng, unroll=True)
    return jnp.mean(jnp.square(out.hidden - target))

  @jax.jit
  def step(params, opt_state, rng):
    loss, grads = jax.value_and_grad(loss_fn)(params, rng)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  params = jax.tree.map(jnp.copy, get_params(encoder))
  return step, params, optimizer.init(params), jax.jit(loss_fn)


def main():
  args = common.args()
  directory = hf_io.resolve_checkpoint(args.model)
  encoder = hf_io.load_bert(directory)
  c = encoder.config
  if c.qkv_width != c.hidden:
    raise SystemExit(f"{args.model}: Q/K/V width {c.qkv_width} != hidden {c.hidden}; "
                     "BertModel cannot hold it")
  batch = common.make_batch(args.batch, args.seq_len, c.vocab_size, args.corpus, directory)
  target = jax.random.normal(jax.random.key(1), (args.batch, args.seq_len, c.hidden))
  dropout, lr = 0.1, 1e-4

  step, params, opt_state, eval_loss = ours(encoder, batch, target, dropout, lr)
  # Ours has no dropout on attention probabilities; neither has the PyTorch model here.
  hf_cfg = BertConfig.from_pretrained(directory, hidden_dropout_prob=dropout,
                                      attention_probs_dropout_prob=0.0)
  model = BertModel.from_pretrained(directory, config=hf_cfg, add_pooling_layer=False)
  t_batch = {k: torch.from_numpy(np.asarray(v).astype(np.int64)) for k, v in batch.items()}
  t_target = torch.from_numpy(np.asarray(target))
  opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)

  model.eval()
  with torch.no_grad():
    t_loss = torch.mean((model(**t_batch).last_hidden_state - t_target) ** 2).item()
  j_loss = float(eval_loss(params, None))
  model.train()

  state = {"params": params, "opt": opt_state, "i": 0}

  def run_ours():
    state["params"], state["opt"], loss = step(state["params"], state["opt"], jax.random.key(state["i"]))
    state["i"] += 1
    loss.block_until_ready()

  def run_torch():
    opt.zero_grad(set_to_none=True)
    loss = torch.mean((model(**t_batch).last_hidden_state - t_target) ** 2)
    loss.backward()
    opt.step()

  times = common.interleaved_times({"ours": run_ours, "torch": run_torch}, rounds=args.rounds)
  tokens = args.batch * args.seq_len
  result = {"model": args.model, "batch": args.batch, "seq_len": args.seq_len,
            "torch_threads": torch.get_num_threads(),
            "ours_s": times["ours"], "torch_s": times["torch"], "speedup": times["torch"] / times["ours"],
            "ours_tokens_per_s": tokens / times["ours"], "torch_tokens_per_s": tokens / times["torch"],
            "initial_loss_diff": abs(j_loss - t_loss)}
  print(f"device: {common.device_description()}; torch {torch.__version__} on "
        f"{torch.get_num_threads()} threads")
  print(f"{args.model} batch {args.batch} x {args.seq_len}: same initial loss to "
        f"{result['initial_loss_diff']:.1e}")
  print(f"train step: ours {1e3 * times['ours']:.0f} ms ({result['ours_tokens_per_s']:.0f} tokens/s), "
        f"PyTorch {1e3 * times['torch']:.0f} ms ({result['torch_tokens_per_s']:.0f} tokens/s): "
        f"ours {result['speedup']:.2f}x faster (target >= 1.5)")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"device": common.device_description(), **result}, f, indent=2)


if __name__ == "__main__":
  common.run(main)
