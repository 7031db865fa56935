"""Search space of student architectures, the layer mapping, sandwich sampling and costs.

An architecture is (layers L, hidden H, MLP ratio R, heads A). The head size stays the
teacher's (64 for BERT-base), so Q/K/V width is A * head_size and FFN width is H * R.
A sub-space lists the values of each factor; the paper uses three of 4*4*4*4 = 256 students.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import numpy as np

# The paper's sub-spaces are defined for a BERT-base teacher of these sizes.
BERT_BASE_LAYERS, BERT_BASE_HIDDEN, BERT_BASE_HEADS, BERT_BASE_MLP_RATIO = 12, 768, 12, 4.0


@dataclasses.dataclass(frozen=True, order=True)
class Arch:
  """One student architecture."""

  layers: int
  hidden: int
  mlp_ratio: float
  heads: int

  @property
  def ffn(self) -> int:
    """FFN width H * R, rounded to an integer number of units."""
    return int(round(self.hidden * self.mlp_ratio))

  def qkv_width(self, head_size: int) -> int:
    return self.heads * head_size

  @property
  def name(self) -> str:
    return f"L{self.layers}_H{self.hidden}_R{self.mlp_ratio:g}_A{self.heads}"

  def as_array(self) -> np.ndarray:
    """[layers, hidden, ffn, heads] as int32: the traced form the model consumes."""
    return np.array([self.layers, self.hidden, self.ffn, self.heads], np.int32)

  @classmethod
  def from_row(cls, row: dict) -> Arch:
    """The architecture of a search result row (results.csv, selected.json)."""
    return cls(int(row["layers"]), int(row["hidden"]), float(row["mlp_ratio"]), int(row["heads"]))

  @classmethod
  def parse(cls, text: str, what: str = "arch") -> Arch:
    """'L,H,R,A' (e.g. '4,96,3.0,8') -> Arch; `what` names the setting in the error."""
    try:
      layers, hidden, ratio, heads = (p.strip() for p in text.split(","))
      return cls(int(layers), int(hidden), float(ratio), int(heads))
    except ValueError as e:
      raise ValueError(f"{what}={text!r} is not 'L,H,R,A' (e.g. '4,96,3.0,8')") from e


@dataclasses.dataclass(frozen=True)
class TeacherShape:
  """The sizes of a teacher that bound every sub-space derived from it."""

  layers: int
  hidden: int
  heads: int
  head_size: int
  ffn: int

  @property
  def mlp_ratio(self) -> float:
    return self.ffn / self.hidden


@dataclasses.dataclass(frozen=True)
class SubSpace:
  """The value list of each factor; its students are their Cartesian product."""

  name: str
  layers: tuple[int, ...]
  hidden: tuple[int, ...]
  mlp_ratio: tuple[float, ...]
  heads: tuple[int, ...]

  @classmethod
  def from_config(cls, name: str, cfg) -> SubSpace:
    """From a config's {layers, hidden, mlp_ratio, heads} (defaults.subspace_config is the inverse)."""
    return cls(name, tuple(cfg.layers), tuple(cfg.hidden), tuple(float(r) for r in cfg.mlp_ratio),
               tuple(cfg.heads))

  def __post_init__(self):
    for field in ("layers", "hidden", "mlp_ratio", "heads"):
      values = getattr(self, field)
      if not values:
        raise ValueError(f"sub-space {self.name!r}: {field} has no values")
      if any(v <= 0 for v in values):
        raise ValueError(f"sub-space {self.name!r}: {field} values must be positive, got {values}")
      if len(set(values)) != len(values):
        raise ValueError(f"sub-space {self.name!r}: {field} has repeated values {values}")
      object.__setattr__(self, field, tuple(sorted(values)))

  @classmethod
  def only(cls, name: str, arch: Arch) -> SubSpace:
    """The sub-space holding `arch` alone: its SuperLM is that student distilled by itself."""
    return cls(name, (arch.layers,), (arch.hidden,), (arch.mlp_ratio,), (arch.heads,))

  @property
  def largest(self) -> Arch:
    return Arch(self.layers[-1], self.hidden[-1], self.mlp_ratio[-1], self.heads[-1])

  @property
  def smallest(self) -> Arch:
    return Arch(self.layers[0], self.hidden[0], self.mlp_ratio[0], self.heads[0])

  @property
  def max_ffn(self) -> int:
    return max(Arch(1, h, r, 1).ffn for h in self.hidden for r in self.mlp_ratio)

  def __len__(self) -> int:
    return len(self.layers) * len(self.hidden) * len(self.mlp_ratio) * len(self.heads)

  def enumerate(self) -> list[Arch]:
    """All students, in (L, H, R, A) lexicographic order."""
    return [Arch(*v) for v in itertools.product(self.layers, self.hidden, self.mlp_ratio, self.heads)]

  def __contains__(self, arch: Arch) -> bool:
    return (arch.layers in self.layers and arch.hidden in self.hidden
            and arch.mlp_ratio in self.mlp_ratio and arch.heads in self.heads)

  def check_arch(self, arch: Arch) -> None:
    """Raises ValueError naming the factor of `arch` that lies outside this sub-space."""
    for field in ("layers", "hidden", "mlp_ratio", "heads"):
      value, allowed = getattr(arch, field), getattr(self, field)
      if value not in allowed:
        raise ValueError(f"arch {arch.name} is outside sub-space {self.name!r}: "
                         f"{field}={value:g} is not one of {list(allowed)}")

  def check_fits(self, teacher: TeacherShape) -> None:
    """Raises ValueError if any student would be larger than the teacher it is sliced from."""
    limits = {"layers": (self.layers[-1], teacher.layers),
              "hidden": (self.hidden[-1], teacher.hidden),
              "heads": (self.heads[-1], teacher.heads),
              "ffn (hidden * mlp_ratio)": (self.max_ffn, teacher.ffn)}
    for what, (mine, limit) in limits.items():
      if mine > limit:
        raise ValueError(f"sub-space {self.name!r} exceeds the teacher: max {what} is {mine} but "
                         f"the teacher has {limit}; lower the sub-space's values")

  def stored_layers(self, teacher_layers: int) -> tuple[int, ...]:
    """Teacher layers that any student of this sub-space maps to (what a SuperLM must hold)."""
    return tuple(sorted({layer_map(i, L, teacher_layers) for L in self.layers for i in range(L)}))


# The paper's sub-spaces for a BERT-base teacher (docs/paper.md §1).
PAPER_SUBSPACES: dict[str, SubSpace] = {
    "tiny": SubSpace("tiny", (4, 5, 6, 7), (128, 160, 192, 224), (2.0, 2.5, 3.0, 3.5), (7, 8, 9, 10)),
    "small": SubSpace("small", (9, 10, 11, 12), (256, 288, 320, 352), (2.5, 3.0, 3.5, 4.0), (7, 8, 9, 10)),
    "base": SubSpace("base", (9, 10, 11, 12), (544, 576, 608, 640), (2.5, 3.0, 3.5, 4.0), (9, 10, 11, 12)),
}


def _scaled(values: Sequence[float], scale: float, lo: int, hi: int, multiple: int = 1) -> tuple[int, ...]:
  out = {int(min(hi, max(lo, multiple * np.floor(v * scale / multiple + 0.5)))) for v in values}
  return tuple(sorted(out))


def derive_subspace(paper: SubSpace, teacher: TeacherShape, hidden_multiple: int = 8) -> SubSpace:
  """The same fractions of the teacher's layers, hidden size and heads as `paper` has of BERT-base.

  Values are rounded (hidden to a multiple of `hidden_multiple`) and de-duplicated, so a small
  teacher may give fewer than 256 students; MLP ratios scale with the teacher's own FFN ratio.
  """
  ratio_scale = teacher.mlp_ratio / BERT_BASE_MLP_RATIO
  sub = SubSpace(
      name=paper.name,
      layers=_scaled(paper.layers, teacher.layers / BERT_BASE_LAYERS, 1, teacher.layers),
      hidden=_scaled(paper.hidden, teacher.hidden / BERT_BASE_HIDDEN, hidden_multiple,
                     teacher.hidden, hidden_multiple),
      mlp_ratio=tuple(sorted({round(r * ratio_scale, 4) for r in paper.mlp_ratio})),
      heads=_scaled(paper.heads, teacher.heads / BERT_BASE_HEADS, 1, teacher.heads),
  )
  sub.check_fits(teacher)
  return sub


def layer_map(i, num_layers, teacher_layers):
  """Teacher layer kept as the student's i-th: floor(i * N / L). Works on ints and jnp arrays."""
  return (i * teacher_layers) // num_layers


def sandwich_sample(space: SubSpace, seed: int, step: int, num_random: int = 2) -> list[Arch]:
  """The sandwich rule: largest, smallest and `num_random` distinct others.

  A pure function of (seed, step), so a resumed run samples exactly the same students. A
  sub-space of one architecture gives that student alone: plain distillation, no weight sharing.
  """
  largest, smallest = space.largest, space.smallest
  if len(space) == 1:
    return [largest]
  others = [a for a in space.enumerate() if a not in (largest, smallest)]
  if len(others) < num_random:
    raise ValueError(f"sub-space {space.name!r} has {len(space)} students, too few for the "
                     f"sandwich rule with {num_random} random ones")
  rng = np.random.default_rng([seed, step])
  picks = rng.choice(len(others), size=num_random, replace=False)
  return [largest, smallest] + [others[int(i)] for i in picks]


# ---------------------------------------------------------------------------------------------
# Costs. Exact counts of the real students (Q/K/V width A * head_size, 2 FLOPs per multiply-add)
# and, separately, the paper's own formula for comparison with its tables.

# Elementwise FLOPs per element, as XLA's cost analysis counts our ops (measured on CPU with
# compiled.cost_analysis(); the erf-based GELU expands to a polynomial of ~64 FLOPs).
LAYER_NORM_FLOPS = 12
SOFTMAX_FLOPS = 6  # per attention score: scale, mask, max, subtract, exp, normalise
GELU_FLOPS = 64


@dataclasses.dataclass(frozen=True)
class Vocab:
  """The embedding table sizes a student inherits from its teacher."""

  vocab_size: int = 30522
  max_position: int = 512
  type_vocab_size: int = 2


def exact_params(arch: Arch, head_size: int, vocab: Vocab = Vocab(), pooler: bool = True) -> int:
  """Number of parameters of the extracted student's arrays."""
  H, F, D = arch.hidden, arch.ffn, arch.qkv_width(head_size)
  embeddings = (vocab.vocab_size + vocab.max_position + vocab.type_vocab_size) * H + 2 * H
  attention = 3 * (H * D + D) + (D * H + H) + 2 * H
  ffn = (H * F + F) + (F * H + H) + 2 * H
  return embeddings + arch.layers * (attention + ffn) + (H * H + H if pooler else 0)


def exact_flops_breakdown(arch: Arch, seq_len: int, head_size: int,
                          pooler: bool = True) -> dict[str, int]:
  """FLOPs of one sequence's forward pass by component (2 per multiply-add)."""
  n, L, A = seq_len, arch.layers, arch.heads
  H, F, D = arch.hidden, arch.ffn, arch.qkv_width(head_size)
  return {
      "embeddings": n * H * (2 + LAYER_NORM_FLOPS),
      "qkv": L * 3 * (2 * n * H * D + n * D),
      "attention_scores": L * (2 * n * n * D + SOFTMAX_FLOPS * A * n * n),
      "attention_context": L * 2 * n * n * D,
      "attention_output": L * (2 * n * D * H + n * H),
      "ffn": L * (2 * n * H * F + n * F * (1 + GELU_FLOPS) + 2 * n * F * H + n * H),
      "residual_layer_norm": L * 2 * n * H * (1 + LAYER_NORM_FLOPS),
      "pooler": 2 * H * H + 2 * H if pooler else 0,
  }


def exact_flops(arch: Arch, seq_len: int, head_size: int, pooler: bool = True) -> int:
  """Total FLOPs of one sequence's forward pass."""
  return sum(exact_flops_breakdown(arch, seq_len, head_size, pooler).values())


def paper_flops(arch: Arch, seq_len: int = 128) -> float:
  """The paper's formula: Q/K/V width H*A/12 and one FLOP per multiply-add (docs/paper.md §5)."""
  n, L, H, R, A = seq_len, arch.layers, arch.hidden, arch.mlp_ratio, arch.heads
  return (L * (3 * n * H**2 * A / 12 + 2 * n**2 * H * A / 12 + n * H**2 + 2 * n * R * H**2)
          + n * H**2 + 2 * H)


def paper_params(arch: Arch, vocab_size: int = 30522) -> float:
  """The paper's parameter formula (docs/paper.md §5)."""
  L, H, R, A = arch.layers, arch.hidden, arch.mlp_ratio, arch.heads
  return (H * (vocab_size + 512 + 2 + 2) + L * (H**2 + 3 * H**2 * A / 12 + 6 * H)
          + L * (2 * R * H**2 + R * H + 3 * H) + H**2 + 2 * H)


def arch_table(archs: Sequence[Arch], size: int) -> np.ndarray:
  """[size, 4] int32 rows of `archs` (at most `size` of them), padded by repeating the last: every
  call of a vmapped program gets one shape, whatever the number of students in it."""
  rows = np.stack([a.as_array() for a in archs])
  return np.concatenate([rows, np.repeat(rows[-1:], size - len(rows), 0)])
