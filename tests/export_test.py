import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from autodistil_jax import export, hf_io
from autodistil_jax import model as M
from autodistil_jax import search_space as S

torch = pytest.importorskip("torch", reason="torch is in the test extra")


@pytest.fixture(scope="module")
def superlm(teacher):
  space = S.SubSpace("t", (2, 3), (64, 96, 384), (2.0, 3.0), (3, 7, 12))
  sup = M.init_superlm(teacher, space)
  leaves, treedef = jax.tree.flatten(M.get_params(sup))
  keys = jax.random.split(jax.random.key(3), len(leaves))
  return M.from_params(sup.config, jax.tree.unflatten(
      treedef, [w * (1 + 0.05 * jax.random.normal(k, w.shape)) for w, k in zip(leaves, keys, strict=True)]))


@pytest.fixture(scope="module")
def batch(teacher_dir):
  from transformers import AutoTokenizer
  tok = AutoTokenizer.from_pretrained(teacher_dir)
  return tok(["A searched student should load straight into transformers.", "Short one."],
             ["With a second segment.", "Yes"], padding=True, return_tensors="np")


# (arch, needs remote code): Q/K/V width 3*32 == hidden 96 is a plain BertModel.
@pytest.mark.parametrize("arch,remote", [(S.Arch(3, 96, 2.0, 3), False), (S.Arch(2, 64, 3.0, 7), True)])
def test_export_loads_in_transformers_and_matches(superlm, teacher_dir, batch, tmp_path, arch, remote):
  from transformers import AutoModel, AutoModelForSequenceClassification
  target = export.export_student(superlm, arch, tmp_path / "student", teacher_dir=teacher_dir,
                                 teacher_name="all-MiniLM-L6-v2", subspace="t", seq_len=128,
                                 selection={"loss": 0.5, "budget": "flops<=0.5*teacher"})
  assert (target / "modeling_autodistil.py").exists() == remote
  assert {"config.json", "model.safetensors", "vocab.txt", "tokenizer.json", "README.md"} <= {
      p.name for p in target.iterdir()}
  model, info = AutoModel.from_pretrained(target, trust_remote_code=True, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  assert type(model).__name__ == ("AutoDistilBertModel" if remote else "BertModel")
  inputs = {k: torch.from_numpy(v) for k, v in batch.items()}
  with torch.no_grad():
    want = model.eval()(**inputs).last_hidden_state.numpy()
  got = np.asarray(M.extract_student(superlm, arch)(
      *(jnp.asarray(batch[k]) for k in ("input_ids", "attention_mask", "token_type_ids"))).hidden)
  diff = np.abs(want - got).max()
  print(f"{arch.name} ({'remote code' if remote else 'BertModel'}): max |transformers - ours| = {diff:.2e}")
  assert diff <= 1e-4
  classifier, info = AutoModelForSequenceClassification.from_pretrained(
      target, trust_remote_code=True, num_labels=3, output_loading_info=True)
  assert set(info["missing_keys"]) == {"classifier.weight", "classifier.bias"}
  assert not info["unexpected_keys"]
  with torch.no_grad():
    classifier.eval()
    assert classifier(**inputs).logits.shape == (2, 3)
    np.testing.assert_allclose(classifier.bert(**inputs).last_hidden_state.numpy(), want, atol=1e-5)
  card = (target / "README.md").read_text()
  assert arch.name in card and "all-MiniLM-L6-v2" in card and ("trust_remote_code=True" in card) == remote


def test_import_of_an_export_gives_identical_parameters(superlm, teacher_dir, tmp_path):
  arch = S.Arch(2, 64, 3.0, 7)
  target = export.export_student(superlm, arch, tmp_path / "s", teacher_dir=teacher_dir,
                                 teacher_name="t", subspace="t", seq_len=128)
  back = hf_io.load_bert(target)
  student = M.extract_student(superlm, arch)
  assert back.config == student.config
  for a, b in zip(jax.tree.leaves(M.get_params(back)), jax.tree.leaves(M.get_params(student)), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_existing_target_is_kept_unless_overwrite(superlm, teacher_dir, tmp_path):
  target = tmp_path / "s"
  target.mkdir()
  (target / "keep.txt").write_text("mine")
  kwargs = dict(teacher_dir=teacher_dir, teacher_name="t", subspace="t", seq_len=128)
  with pytest.raises(FileExistsError, match="already exists; remove it or pass --overwrite"):
    export.export_student(superlm, S.Arch(2, 64, 2.0, 3), target, **kwargs)
  assert (target / "keep.txt").read_text() == "mine"
  with pytest.raises(ValueError, match="exceeds this model's"):
    export.export_student(superlm, S.Arch(2, 512, 2.0, 3), tmp_path / "bad", **kwargs)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # nothing half-written
  export.export_student(superlm, S.Arch(2, 64, 2.0, 3), target, overwrite=True, **kwargs)
  assert not (target / "keep.txt").exists() and (target / "model.safetensors").exists()


def test_a_student_with_non_finite_weights_is_not_exported(superlm, teacher_dir, tmp_path):
  params = M.get_params(superlm)
  params["layers"]["ffn_in_kernel"] = params["layers"]["ffn_in_kernel"].at[0, 0, 0].set(jnp.inf)
  broken = M.from_params(superlm.config, params)
  with pytest.raises(ValueError, match=r"non-finite weights in .*ffn_in_kernel.*not exported"):
    export.export_student(broken, S.Arch(2, 64, 2.0, 3), tmp_path / "s", teacher_dir=teacher_dir,
                          teacher_name="t", subspace="t", seq_len=128)
  assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("arch", [S.Arch(3, 96, 2.0, 3), S.Arch(2, 64, 3.0, 7)], ids=["plain", "remote"])
def test_export_is_a_sentence_transformer_that_pools_as_ours(superlm, teacher_dir, tmp_path, arch):
  from sentence_transformers import SentenceTransformer
  from transformers import AutoConfig, AutoTokenizer

  from autodistil_jax import data, measures

  target = export.export_student(superlm, arch, tmp_path / "student", teacher_dir=teacher_dir,
                                 teacher_name="all-MiniLM-L6-v2", subspace="t", seq_len=128)
  pooling = json.loads((target / "1_Pooling" / "config.json").read_text())
  assert pooling["word_embedding_dimension"] == arch.hidden and pooling["pooling_mode_mean_tokens"]
  # A config and a tokenizer load as a plain BERT's, without being asked to run remote code.
  assert type(AutoConfig.from_pretrained(target)).__name__ == "BertConfig"
  assert AutoTokenizer.from_pretrained(target)("two words")["input_ids"][0] == 101
  texts = ["A searched student should drop into sentence-transformers.", "Short one.",
           "Mean pooling over the real tokens only, padding excluded."]
  st = SentenceTransformer(str(target), trust_remote_code=True, device="cpu")
  got = st.encode(texts, convert_to_numpy=True)
  batch = data.load_tokenizer(teacher_dir)(texts, padding=True, return_tensors="np")
  ids, mask, types = (jnp.asarray(batch[k]) for k in ("input_ids", "attention_mask", "token_type_ids"))
  out = M.extract_student(superlm, arch)(ids, mask, types)
  want = np.array(measures.pool(out.hidden, mask, "mean"))
  want /= np.linalg.norm(want, axis=-1, keepdims=True)  # the teacher's Normalize module
  assert got.shape == (3, arch.hidden)
  np.testing.assert_allclose(got, want, atol=1e-5)
  card = (target / "README.md").read_text()
  assert "library_name: sentence-transformers" in card
  assert "base_model: sentence-transformers/all-MiniLM-L6-v2" in card
  # The card's usage snippets run as written, without a prompt (stdin is closed under pytest).
  blocks = [b.split("```", 1)[0] for b in card.split("```python\n")[1:]]
  assert len(blocks) == 2
  scope = {}
  for block in blocks:
    exec(block, scope)
  assert scope["embeddings"].shape == (2, arch.hidden)
  assert scope["outputs"].last_hidden_state.shape[-1] == arch.hidden


def test_exported_files_follow_the_umask(superlm, teacher_dir, tmp_path):
  old = os.umask(0o022)
  try:
    target = export.export_student(superlm, S.Arch(2, 64, 2.0, 3), tmp_path / "s", teacher_dir=teacher_dir,
                                   teacher_name="t", subspace="t", seq_len=128)
  finally:
    os.umask(old)
  modes = {p.relative_to(target).as_posix(): p.stat().st_mode & 0o777 for p in target.rglob("*")}
  assert modes["model.safetensors"] == 0o644 and modes["1_Pooling"] == 0o755, modes
  assert set(modes.values()) <= {0o644, 0o755}


@pytest.mark.slow  # torch training through transformers' Trainer
def test_the_trainer_example_fine_tunes_an_export(superlm, teacher_dir, data_dir, tmp_path):
  """docs/exports.md's Trainer example, run as written but for its four settings at the top."""
  import re

  target = export.export_student(superlm, S.Arch(2, 64, 2.0, 3), tmp_path / "student",
                                 teacher_dir=teacher_dir, teacher_name="all-MiniLM-L6-v2", subspace="t",
                                 seq_len=128)
  doc = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "exports.md").read_text()
  [example] = [b.split("```", 1)[0] for b in doc.split("```python\n")[1:] if "Trainer(" in b]
  settings = {"export_dir": str(target), "glue_dir": str(data_dir / "glue"),
              "output_dir": str(tmp_path / "trainer"), "max_steps": 3}
  for name, value in settings.items():
    example, count = re.subn(rf"^{name} = .*$", f"{name} = {value!r}", example, flags=re.M)
    assert count == 1, name
  scope = {}
  exec(compile(example, "docs/exports.md", "exec"), scope)
  assert scope["trainer"].state.global_step == 3 and 0.0 <= scope["accuracy"] <= 1.0
