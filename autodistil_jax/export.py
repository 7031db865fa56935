"""Export of a student sliced out of its SuperLM as a Hugging Face checkpoint directory.

The directory holds config.json, model.safetensors, the teacher's tokenizer files and a model
card; students whose Q/K/V width differs from their hidden size also carry a small modeling file
registered through auto_map (load with trust_remote_code=True). A directory is written whole
into a temporary sibling and renamed into place, so a failed export leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from autodistil_jax import atomic, hf_io, storage
from autodistil_jax.checkpoints import nonfinite_leaves
from autodistil_jax.model import BertEncoder, count_params, extract_student, get_params
from autodistil_jax.search_space import Arch, exact_flops

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def model_card(arch: Arch, student: BertEncoder, *, seq_len: int, teacher: str, subspace: str,
               loss: float | None, remote_code: bool) -> str:
  c = student.config
  flops = exact_flops(arch, seq_len, c.head_size, c.pooler)
  trust = ", trust_remote_code=True" if remote_code else ""
  loss_line = f"{loss:.6g}" if loss is not None else "not searched"
  return f"""---
library_name: transformers
tags: [autodistil, bert, distillation]
---
# AutoDistil student {arch.name}

Sliced out of the `{subspace}` SuperLM trained by task-agnostic self-attention relation
distillation from `{teacher}` (AutoDistil, Xu et al., NeurIPS 2022), with autodistil_jax.

| | |
|---|---|
| layers L | {arch.layers} |
| hidden H | {arch.hidden} |
| MLP ratio R (FFN width) | {arch.mlp_ratio:g} ({arch.ffn}) |
| heads A x head size | {arch.heads} x {c.head_size} (Q/K/V width {c.qkv_width}) |
| parameters | {count_params(student):,} |
| FLOPs per sequence of {seq_len} tokens | {flops / 1e9:.4f} G (2 per multiply-add) |
| search loss (held-out relation distillation) | {loss_line} |
| teacher | `{teacher}` |
| sub-space | `{subspace}` |

## Load

```python
from transformers import AutoModel, AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained(path)
model = AutoModel.from_pretrained(path{trust})
```

## Fine-tune

The student is task-agnostic: add a task head and fine-tune, e.g.

```python
from transformers import AutoModelForSequenceClassification
model = AutoModelForSequenceClassification.from_pretrained(path{trust}, num_labels=2)
```

or with autodistil_jax: `python launch/main.py --config=... --mode=finetune`. The paper fine-tunes
with learning rate 2e-5, batch 32, up to 20 epochs, sequence length 128.
"""


def export_student(superlm: BertEncoder, arch: Arch, target: str | os.PathLike, *,
                   teacher_dir: str | os.PathLike, teacher_name: str, subspace: str, seq_len: int,
                   loss: float | None = None, overwrite: bool = False) -> Path:
  """Slices `arch` out of `superlm` and writes it to `target` as an HF checkpoint."""
  target = storage.path(target)
  if target.exists() and not overwrite:
    raise FileExistsError(f"export target {target} already exists; remove it or pass --overwrite")
  student = extract_student(superlm, arch)
  if bad := nonfinite_leaves(get_params(student)):
    raise ValueError(f"student {arch.name} has non-finite weights in {', '.join(bad[:3])}: not exported; "
                     "retrain its SuperLM (--redo=train)")
  remote_code = student.config.qkv_width != student.config.hidden
  target.parent.mkdir(parents=True, exist_ok=True)
  tmp = atomic.temp_dir_for(target)
  try:
    with storage.local_folder(tmp) as build:
      hf_io.write_checkpoint(build, student.config, get_params(student))
      for name in TOKENIZER_FILES:
        if (Path(teacher_dir) / name).is_file():
          shutil.copy(Path(teacher_dir) / name, build / name)
      (build / "README.md").write_text(model_card(
          arch, student, seq_len=seq_len, teacher=teacher_name, subspace=subspace, loss=loss,
          remote_code=remote_code))
    atomic.replace_dir(tmp, target)
  except BaseException:
    storage.rmtree(tmp)
    raise
  return target
