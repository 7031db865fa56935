import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from autodistil_jax import hf_io

SENTENCES = [("The cat sat on the mat.", "It was warm."),
             ("Distilling a large language model into a family of small students.", "Yes."),
             ("Hi", "there")]


def _tokenized(teacher_dir):
  from transformers import AutoTokenizer
  tok = AutoTokenizer.from_pretrained(teacher_dir)
  first, second = zip(*SENTENCES, strict=True)
  return tok(list(first), list(second), padding=True, return_tensors="np")


def test_forward_equals_transformers_bert(teacher, teacher_dir):
  torch = pytest.importorskip("torch", reason="torch is in the test extra")
  from transformers import BertModel
  batch = _tokenized(teacher_dir)
  assert batch["attention_mask"].min() == 0, "the batch must contain padding"
  reference = BertModel.from_pretrained(teacher_dir).eval()
  with torch.no_grad():
    want = reference(**{k: torch.from_numpy(v) for k, v in batch.items()})
  got = teacher(*(jnp.asarray(batch[k]) for k in ("input_ids", "attention_mask", "token_type_ids")))
  real = batch["attention_mask"][..., None].astype(bool)
  diff = np.abs(np.asarray(got.hidden) - want.last_hidden_state.numpy())
  print(f"max |ours - transformers| last_hidden_state: {diff[np.broadcast_to(real, diff.shape)].max():.2e} "
        f"(real tokens), {diff.max():.2e} (all); pooler "
        f"{np.abs(np.asarray(got.pooled) - want.pooler_output.numpy()).max():.2e}")
  assert diff.max() <= 1e-4
  assert np.abs(np.asarray(got.pooled) - want.pooler_output.numpy()).max() <= 1e-4


def test_teacher_config_is_read(teacher):
  c = teacher.config
  assert (c.depth, c.hidden, c.heads, c.head_size, c.ffn, c.vocab_size) == (6, 384, 12, 32, 1536, 30522)
  assert c.pooler and c.is_dense


def _copy(teacher_dir, tmp_path):
  target = tmp_path / "ckpt"
  target.mkdir()
  for name in ("config.json", "model.safetensors"):
    shutil.copy(teacher_dir / name, target / name)
  return target


def test_bert_prefixed_checkpoint_and_pytorch_bin_load(teacher, teacher_dir, tmp_path):
  torch = pytest.importorskip("torch", reason="torch is in the test extra")
  tensors = load_file(teacher_dir / "model.safetensors")
  target = tmp_path / "bin"
  target.mkdir()
  shutil.copy(teacher_dir / "config.json", target / "config.json")
  state = {f"bert.{k}": torch.from_numpy(v) for k, v in tensors.items()}
  state["cls.predictions.bias"] = torch.zeros(3)  # an MLM head is ignored
  torch.save(state, target / "pytorch_model.bin")
  loaded = hf_io.load_bert(target)
  np.testing.assert_array_equal(loaded.layers.q_kernel[...], teacher.layers.q_kernel[...])


def test_not_bert_is_an_error(teacher_dir, tmp_path):
  target = _copy(teacher_dir, tmp_path)
  config = json.loads((target / "config.json").read_text())
  config["model_type"] = "roberta"
  (target / "config.json").write_text(json.dumps(config))
  with pytest.raises(hf_io.CheckpointError, match="model_type is 'roberta'"):
    hf_io.load_bert(target)


def test_missing_tensor_is_named(teacher_dir, tmp_path):
  target = _copy(teacher_dir, tmp_path)
  tensors = load_file(target / "model.safetensors")
  del tensors["encoder.layer.3.attention.self.key.bias"]
  save_file(tensors, target / "model.safetensors")
  with pytest.raises(hf_io.CheckpointError,
                     match="lacks the tensor 'encoder.layer.3.attention.self.key.bias'"):
    hf_io.load_bert(target)


def test_wrong_shape_is_named(teacher_dir, tmp_path):
  target = _copy(teacher_dir, tmp_path)
  tensors = load_file(target / "model.safetensors")
  tensors["encoder.layer.0.intermediate.dense.weight"] = np.zeros((1000, 384), np.float32)
  save_file(tensors, target / "model.safetensors")
  with pytest.raises(hf_io.CheckpointError, match="'encoder.layer.0.intermediate.dense.weight' has shape"):
    hf_io.load_bert(target)


def test_truncated_checkpoint_is_an_error(teacher_dir, tmp_path):
  target = _copy(teacher_dir, tmp_path)
  data = (target / "model.safetensors").read_bytes()
  (target / "model.safetensors").write_bytes(data[: len(data) // 2])
  with pytest.raises(hf_io.CheckpointError, match="unreadable or truncated"):
    hf_io.load_bert(target)


def test_unknown_name_offline_is_an_error(monkeypatch):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  with pytest.raises(hf_io.CheckpointError, match="not in the Hugging Face cache"):
    hf_io.resolve_checkpoint("google-bert/bert-base-uncased-not-cached")
  with pytest.raises(hf_io.CheckpointError, match="not a checkpoint directory"):
    hf_io.resolve_checkpoint("./no/such/dir")
