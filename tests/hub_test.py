"""Uploads to the Hub, up to the upload itself (nothing can reach the Hub here): the repository
ids, the refusal without a token before any work, and the folder that would be uploaded."""

import pytest
from hostile_inputs_test import _config

from autodistil_jax import export, hub, runner
from autodistil_jax import model as M
from autodistil_jax import search_space as S


@pytest.fixture()
def no_token(monkeypatch, tmp_path):
  monkeypatch.delenv("HF_TOKEN", raising=False)
  monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # no saved login either


def test_each_export_gets_its_own_valid_repository():
  ids = hub.repo_ids("me/minilm-autodistil", ["base-L6_H288_R2.5_A12", "small-L6_H176_R2.5_A10"])
  assert ids == {"base-L6_H288_R2.5_A12": "me/minilm-autodistil-base-L6_H288_R2.5_A12",
                 "small-L6_H176_R2.5_A10": "me/minilm-autodistil-small-L6_H176_R2.5_A10"}
  with pytest.raises(ValueError, match="must be 'OWNER/NAME'"):
    hub.repo_ids("minilm", ["x"])
  with pytest.raises(ValueError, match="gives the invalid repository id 'me/bad name-x'"):
    hub.repo_ids("me/bad name", ["x"])


def test_without_a_token_the_export_is_refused_before_anything_is_written(no_token, data_dir, tmp_path):
  with pytest.raises(ValueError, match="needs a Hugging Face token"):
    hub.token()
  config = _config({"export.push_to_hub": "me/minilm", "export.subspace": "mini",
                    "export.arch": "1,32,1.0,2"}, str(data_dir / "wikitext-2" / "valid.txt"))
  with pytest.raises(ValueError, match="push_to_hub needs a Hugging Face token with write access"):
    runner.run("export", config, tmp_path / "work")
  assert not (tmp_path / "work").exists()


def test_the_uploaded_folder_is_the_export_with_its_card_loading_from_the_repository(teacher, teacher_dir,
                                                                                      tmp_path):
  student = M.init_superlm(teacher, S.SubSpace("t", (2,), (64,), (2.0,), (2,)))
  target = export.export_student(student, S.Arch(2, 64, 2.0, 2), tmp_path / "t-L2_H64_R2_A2",
                                 teacher_dir=teacher_dir, teacher_name="all-MiniLM-L6-v2", subspace="t",
                                 seq_len=128)
  staged = hub.stage(target, "me/minilm-t-L2_H64_R2_A2", tmp_path / "upload")
  assert sorted(p.name for p in staged.rglob("*")) == sorted(p.name for p in target.rglob("*"))
  card = (staged / "README.md").read_text()
  assert card.count('path = "me/minilm-t-L2_H64_R2_A2"') == 1 and str(target) not in card
  assert f'path = "{target.absolute()}"' in (target / "README.md").read_text()  # the export is untouched
