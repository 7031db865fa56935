"""BERT whose Q/K/V width (heads x attention_head_size) differs from its hidden size.

Written by autodistil_jax into exported AutoDistil students, whose heads keep the teacher's size
(64 for BERT-base) while the hidden size shrinks. Load with trust_remote_code=True:

    AutoModel.from_pretrained(path, trust_remote_code=True)
    SentenceTransformer(path, trust_remote_code=True)       # exports of sentence-transformers teachers
    AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True, num_labels=2)

Everything but the attention projections is transformers' own BERT; config.json is a plain
BertConfig with `attention_head_size`, and only the model classes are mapped to this file, so a
tokenizer or config loads without running (or being asked about) remote code.
"""

import contextlib

from torch import nn
from transformers import BertConfig, BertForSequenceClassification, BertModel
from transformers.models.bert.modeling_bert import BertSelfAttention


class AutoDistilSelfAttention(BertSelfAttention):
  """BERT self-attention with Q/K/V of width heads * attention_head_size."""

  def __init__(self, config, is_causal=False, layer_idx=None):
    nn.Module.__init__(self)
    self.config = config
    self.num_attention_heads = config.num_attention_heads
    self.attention_head_size = _head_size(config)
    self.all_head_size = self.num_attention_heads * self.attention_head_size
    self.scaling = self.attention_head_size**-0.5
    self.query = nn.Linear(config.hidden_size, self.all_head_size)
    self.key = nn.Linear(config.hidden_size, self.all_head_size)
    self.value = nn.Linear(config.hidden_size, self.all_head_size)
    self.dropout = nn.Dropout(config.attention_probs_dropout_prob)
    self.is_decoder = config.is_decoder
    self.is_causal = is_causal
    self.layer_idx = layer_idx


def _head_size(config) -> int:
  """config.json is a plain BertConfig (so tokenizers and configs load without remote code) that
  carries the heads' own size."""
  return getattr(config, "attention_head_size", config.hidden_size // config.num_attention_heads)


@contextlib.contextmanager
def _single_head(config):
  """BERT's own constructors insist that hidden divides by the head count: build with one head
  (whose attention modules are replaced right after), then restore the real count."""
  heads = config.num_attention_heads
  config.num_attention_heads = 1
  try:
    yield config
  finally:
    config.num_attention_heads = heads


def _widen_attention(model, config):
  for i, layer in enumerate(model.encoder.layer):
    layer.attention.self = AutoDistilSelfAttention(config, layer_idx=i)
    width = config.num_attention_heads * _head_size(config)
    layer.attention.output.dense = nn.Linear(width, config.hidden_size)


class AutoDistilBertModel(BertModel):
  config_class = BertConfig

  def __init__(self, config, add_pooling_layer=True):
    with _single_head(config):
      super().__init__(config, add_pooling_layer=add_pooling_layer)
    _widen_attention(self, config)
    self.post_init()


class AutoDistilBertForSequenceClassification(BertForSequenceClassification):
  config_class = BertConfig

  def __init__(self, config):
    with _single_head(config):
      super().__init__(config)
    self.bert = AutoDistilBertModel(config)
    self.post_init()
