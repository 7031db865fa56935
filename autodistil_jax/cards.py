"""Model cards of exported students, written with huggingface_hub's ModelCard: the Hub's YAML
header (license and language from the teacher's card, library, pipeline tag, tags, base model,
and a model-index holding every measured result), what the student is against its teacher, how it
was found, the command that made it, and usage that runs as written.

Stages after the export add to a card in place: each owns a named section (`put_section`) and a
group of model-index results (`put_results`), replaced, never repeated, when it runs again.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from autodistil_jax import hf_io
from autodistil_jax.model import EncoderConfig
from autodistil_jax.search_space import Arch, Vocab, exact_flops, exact_params


def hub_id(teacher: str) -> str | None:
  """The teacher's Hub repository id, or None for a local directory."""
  if teacher in hf_io.PACKAGED_MINILM:
    return hf_io.PACKAGED_MINILM[-1]
  if Path(teacher).expanduser().exists() or teacher.startswith((".", "/", "~")) or teacher.count("/") > 1:
    return None
  return teacher


def teacher_card(teacher_dir: Path) -> ModelCardData:
  """The teacher's card data (license, language, datasets), empty when it has no card."""
  readme = Path(teacher_dir) / "README.md"
  return ModelCard.load(readme).data if readme.is_file() else ModelCardData()


def costs(arch: Arch, config: EncoderConfig, seq_len: int) -> tuple[int, int]:
  vocab = Vocab(config.vocab_size, config.max_position, config.type_vocab_size)
  return (exact_params(arch, config.head_size, vocab, config.pooler),
          exact_flops(arch, seq_len, config.head_size, config.pooler))


def model_card(arch: Arch, student: EncoderConfig, teacher: EncoderConfig, *, teacher_name: str,
               teacher_dir: Path, subspace: str, seq_len: int, selection: dict | None,
               remote_code: bool, sentence_transformers: bool, location: str,
               settings: dict[str, str] | None = None, datasets: Sequence[str] = ()) -> ModelCard:
  """The card of a freshly exported student. `selection`: the search's row for it (its loss, and
  the budget it was chosen under), None for an arch given by hand or a baseline. `location`: where
  the usage snippets load it from (the export's folder, or its Hub repository id). `settings`: how
  it was made (sub-space, training, search), one table row each; `datasets`: Hub ids of the
  transfer corpus, when it is one."""
  base = teacher_card(teacher_dir)
  data = ModelCardData(
      language=base.language, license=base.license,
      library_name="sentence-transformers" if sentence_transformers else "transformers",
      pipeline_tag="sentence-similarity" if sentence_transformers else "feature-extraction",
      tags=["autodistil", "bert", "distillation", "knowledge-distillation",
            *(["sentence-transformers"] if sentence_transformers else [])],
      base_model=hub_id(teacher_name), model_name=f"{subspace}-{arch.name}", datasets=list(datasets) or None)
  params, flops = costs(arch, student, seq_len)
  t_params, t_flops = costs(teacher.full_arch(), teacher, seq_len)
  trust = ", trust_remote_code=True" if remote_code else ""
  how = ("chosen by the search" + (f" under the budget `{selection['budget']}`" if "budget" in selection
                                    else "") + f": held-out relation loss {selection['loss']:.6g}"
         + (f", proxy score {100 * selection['proxy_score']:.1f}" if "proxy_score" in selection else "")
         if selection else "given by hand (not searched)")
  body = f"""
# AutoDistil student {arch.name}

A student of `{teacher_name}`, sliced out of the `{subspace}` SuperLM that autodistil_jax trained by
task-agnostic self-attention relation distillation from it (AutoDistil, Xu et al., NeurIPS 2022),
{how}.

| | student | teacher |
|---|---|---|
| layers | {arch.layers} | {teacher.depth} |
| hidden size | {arch.hidden} | {teacher.hidden} |
| FFN width (MLP ratio) | {arch.ffn} ({arch.mlp_ratio:g}) | {teacher.ffn} |
| heads x head size | {arch.heads} x {student.head_size} | {teacher.heads} x {teacher.head_size} |
| parameters | {params:,} ({params / t_params:.1%}) | {t_params:,} |
| GFLOPs per sequence of {seq_len} tokens | {flops / 1e9:.4f} ({flops / t_flops:.1%}) | {t_flops / 1e9:.4f} |

{_settings_table(subspace, settings or {})}
Made by `{shlex.join(["python", *sys.argv])}`.

## Use

```python
from transformers import AutoModel, AutoTokenizer

path = "{location}"
tokenizer = AutoTokenizer.from_pretrained(path)
model = AutoModel.from_pretrained(path{trust})
outputs = model(**tokenizer(["A sentence to encode."], return_tensors="pt"))
```
{_st_usage(trust) if sentence_transformers else ""}
To fine-tune it on a task, load it with `AutoModelForSequenceClassification.from_pretrained(path{trust},
num_labels=2)` and train as any BERT (the paper: learning rate 2e-5, batch 32, sequence length 128).
"""
  return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def _settings_table(subspace: str, settings: dict[str, str]) -> str:
  rows = [("sub-space", f"`{subspace}`"), *settings.items()]
  return "| how it was made | |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)


def _st_usage(trust: str) -> str:
  return f"""
As a sentence encoder (the teacher's sentence-transformers pooling, narrowed to the student):

```python
from sentence_transformers import SentenceTransformer

model = SentenceTransformer(path{trust})
embeddings = model.encode(["A sentence to embed.", "Another one."])
```
"""


def put_section(card_path: Path, name: str, text: str) -> str:
  """The card's text with section `name` put in place of its previous version (or appended)."""
  begin, end = f"<!-- autodistil-{name} -->", f"<!-- /autodistil-{name} -->"
  content = card_path.read_text(encoding="utf-8") if card_path.is_file() else ""
  section = f"{begin}\n{text.strip()}\n{end}\n"
  if begin in content and end in content:
    before, rest = content.split(begin, 1)
    return before + section + rest.split(end, 1)[1].lstrip("\n")
  return content.rstrip("\n") + "\n\n" + section


def put_results(content: str, source: str, results: Sequence[EvalResult]) -> str:
  """`content` with the model-index results of `source` (e.g. "suite", "glue") replaced by
  `results`. The source is the end of each result's metric name, "(source)": the Hub's
  model-index keeps a result's source only with a URL, which these have not."""
  card = ModelCard(content)
  tag = f"({source})"
  kept = [r for r in (card.data.eval_results or []) if not (r.metric_name or "").endswith(tag)]
  for r in results:
    r.metric_name = f"{r.metric_name} {tag}"
  card.data.eval_results = kept + list(results) or None
  if card.data.eval_results and not card.data.model_name:
    card.data.model_name = "autodistil-student"
  return str(card)


def put_glue(card_path: Path, results: Sequence[dict], teacher: dict[str, dict]) -> str:
  """The card's text with its GLUE fine-tuning section and model-index results (from the
  fine-tuning stage's results.json of this model, and the teacher's beside them) put in place."""
  from autodistil_jax import glue

  lines = ["## GLUE (fine-tuned by autodistil_jax's `--mode=finetune`)", "",
           "Dev scores, mean ± std over seeds, at the best learning rate of the grid; the teacher's "
           "under the same protocol beside them.", "",
           "| task | this student | teacher | training examples | seeds |", "|---|---|---|---|---|"]
  evals = []
  for r in results:
    task = glue.get_task(r["task"])
    theirs = f"{100 * teacher[r['task']]['score_mean']:.1f}" if r["task"] in teacher else "—"
    lines.append(f"| {task.directory} | {100 * r['score_mean']:.1f} ± {100 * r['score_std']:.1f} | "
                 f"{theirs} | {r['train_examples']} | {len(r['runs'])} |")
    evals.append(EvalResult(
        task_type="sentence-similarity" if task.is_regression else "text-classification",
        dataset_type="glue", dataset_config=task.name,
        dataset_name=f"GLUE {task.directory}", dataset_split=task.dev_splits[0].replace("dev", "validation"),
        metric_type=task.metrics[0] if len(task.metrics) == 1 else "+".join(task.metrics),
        metric_name=f"{'/'.join(task.metrics)}, fine-tuned", metric_value=round(100 * r["score_mean"], 2)))
  return put_results(put_section(card_path, "glue", "\n".join(lines)), "glue", evals)


def settings(config, space, step: int) -> dict[str, str]:
  """How a student of `space` was made under `config` (its SuperLM trained `step` steps), as rows
  of its card."""
  t, s = config.train, config.search
  extra = f" + H-H relation x {t.hidden_relation_weight:g}" if t.hidden_relation_weight else ""
  if t.embedding_relation_weight:
    extra += f" + sentence-embedding similarities x {t.embedding_relation_weight:g}"
  return {
      "sub-space options": f"layers {list(space.layers)}, hidden {list(space.hidden)}, MLP ratio "
                           f"{list(space.mlp_ratio)}, heads {list(space.heads)} "
                           f"({len(space.enumerate())} students)",
      "SuperLM training": f"{step} steps of batch {t.batch_size} x {config.data.seq_len} tokens, peak "
                          f"learning rate {t.learning_rate:g}, relation loss `{t.loss}`{extra}",
      "transfer corpus": f"`{config.data.corpus}`",
      "search": f"by the {s.selection} score under {', '.join(f'`{b}`' for b in s.budgets)}",
  }


def hub_datasets(corpus: str) -> tuple[str, ...]:
  """The corpus as Hub dataset ids where it names one (tfds:NAME), else none."""
  items = [c.strip() for c in corpus.split(",")]
  return tuple(c[len("tfds:"):].split("/")[0] for c in items if c.startswith("tfds:"))
