import numpy as np
import pytest

from autodistil_jax import data

# WikiText's layout: headings and blank lines carry a leading and trailing space.
WIKI = "\n".join([" = Valkyria Chronicles III = ", " ",
                  " Senjō no Valkyria 3 is a tactical role @-@ playing game . ", " ",
                  " = = Gameplay = = ", " ", " The game plays like its predecessors . ", ""])


@pytest.fixture(scope="module")
def tokenizer(teacher_dir):
  return data.load_tokenizer(teacher_dir)


def test_wikitext_headings_and_blank_lines_are_dropped(tmp_path):
  (tmp_path / "a.txt").write_text(WIKI, encoding="utf-8")
  (tmp_path / "b.txt").write_text("Second file .\n", encoding="utf-8")
  got = list(data.paragraphs(f"{tmp_path}/*.txt"))
  assert got == ["Senjō no Valkyria 3 is a tactical role @-@ playing game .",
                 "The game plays like its predecessors .", "Second file ."]
  assert list(data.paragraphs(f"{tmp_path}/b.txt,{tmp_path}/a.txt"))[0] == "Second file ."


def test_packing_fills_sequences_with_cls_and_sep(tokenizer):
  texts = ["the quick brown fox jumps over the lazy dog"] * 20
  tokens = data.tokenize(iter(texts), tokenizer, seq_len=16, pack=True)
  assert tokens.shape[1] == 16
  assert np.all(tokens[:, 0] == tokenizer.cls_token_id)
  assert np.all(tokens[:-1, -1] == tokenizer.sep_token_id)
  body = tokens[:-1, 1:-1].reshape(-1)
  assert tokenizer.decode(body[:9]) == "the quick brown fox jumps over the lazy dog"
  assert (tokens[:-1] != 0).all()  # only the last sequence may be padded
  truncated = data.tokenize(iter(["a b c", "a very long sentence " * 10]), tokenizer, 8, pack=False)
  assert truncated.shape == (2, 8) and truncated[0, 4] == tokenizer.sep_token_id and truncated[0, 5] == 0
  assert truncated[1, -1] == tokenizer.sep_token_id


def test_bad_corpora_are_clear_errors(tmp_path, tokenizer):
  with pytest.raises(ValueError, match="matches no file"):
    list(data.paragraphs(str(tmp_path / "missing*.txt")))
  (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
  with pytest.raises(ValueError, match=r"latin1.txt: not UTF-8 text \(bad byte at offset 3\)"):
    list(data.paragraphs(str(tmp_path / "latin1.txt")))
  (tmp_path / "empty.txt").write_text(" = Heading = \n\n", encoding="utf-8")
  with pytest.raises(ValueError, match="the corpus has no text"):
    data.tokenize(data.paragraphs(str(tmp_path / "empty.txt")), tokenizer, 16)
  with pytest.raises(ValueError, match="fewer than one batch of 64"):
    data.train_dataset(np.zeros((10, 16), np.int32), np.arange(10), 64, seed=0)


def test_corpus_cache_is_reused(tmp_path, teacher_dir, data_dir):
  spec = str(data_dir / "wikitext-2" / "valid.txt")
  first = data.load_corpus(spec, teacher_dir, 64, cache_dir=tmp_path)
  assert len(list(tmp_path.glob("corpus_*.npy"))) == 1
  again = data.load_corpus(spec, teacher_dir, 64, cache_dir=tmp_path)
  np.testing.assert_array_equal(first, again)
  assert first.shape[1] == 64 and len(first) > 1000


def test_heldout_split_is_disjoint_and_seeded():
  train, held = data.split_heldout(100, 10, seed=3)
  assert len(held) == 10 and len(train) == 90 and not set(train) & set(held)
  np.testing.assert_array_equal(held, data.split_heldout(100, 10, seed=3)[1])
  with pytest.raises(ValueError, match="leaves no training data"):
    data.split_heldout(10, 10, seed=0)


def test_hosts_get_disjoint_rows_of_the_same_global_batch():
  tokens = np.arange(40 * 4, dtype=np.int32).reshape(40, 4) + 1
  indices = np.arange(40)
  whole = data.train_dataset(tokens, indices, 8, seed=1)
  halves = [data.train_dataset(tokens, indices, 8, seed=1, process_index=i, process_count=2)
            for i in range(2)]
  for step in range(12):  # crosses epoch boundaries (5 batches per epoch)
    joined = np.concatenate([h[step]["input_ids"] for h in halves])
    np.testing.assert_array_equal(joined, whole[step]["input_ids"])
  epoch0 = np.concatenate([whole[s]["input_ids"][:, 0] for s in range(5)])
  epoch1 = np.concatenate([whole[s]["input_ids"][:, 0] for s in range(5, 10)])
  assert sorted(epoch0) == sorted(epoch1) and list(epoch0) != list(epoch1)  # reshuffled


def test_iterator_state_resumes_at_the_next_batch():
  tokens = np.arange(64 * 4, dtype=np.int32).reshape(64, 4) + 1
  ds = data.train_dataset(tokens, np.arange(64), 8, seed=0)
  it = data.make_iterator(ds)
  for _ in range(3):
    next(it)
  state = it.get_state()
  expected = next(it)["input_ids"]
  resumed = data.make_iterator(ds)
  resumed.set_state(state)
  np.testing.assert_array_equal(next(resumed)["input_ids"], expected)


def test_tfds_dataset_by_name_offline(tmp_path, tokenizer):
  import tensorflow_datasets as tfds

  texts = ["First article line one.\nLine two of it.", "Second article.", " = Heading = \nBody text."]

  class AutodistilTinyCorpus(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self,
                                   features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for i, text in enumerate(texts):
        yield i, {"text": text}

  AutodistilTinyCorpus(data_dir=str(tmp_path)).download_and_prepare(file_format="array_record")
  got = list(data.paragraphs("tfds:autodistil_tiny_corpus", tfds_data_dir=str(tmp_path)))
  assert sorted(got) == sorted(["First article line one.", "Line two of it.", "Second article.",
                                "Body text."])
  tokens = data.load_corpus("tfds:autodistil_tiny_corpus", tokenizer.name_or_path, 64,
                            tfds_data_dir=str(tmp_path))
  assert tokens.shape == (1, 64) and tokens[0, 0] == tokenizer.cls_token_id
  with pytest.raises(ValueError, match="have no feature 'body'"):
    list(data.paragraphs("tfds:autodistil_tiny_corpus", tfds_data_dir=str(tmp_path), text_key="body"))
