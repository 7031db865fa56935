import pytest

from autodistil_jax import search_space as S

MINILM = S.TeacherShape(layers=6, hidden=384, heads=12, head_size=32, ffn=1536)
BERT_BASE = S.TeacherShape(layers=12, hidden=768, heads=12, head_size=64, ffn=3072)


@pytest.mark.parametrize("name", ["tiny", "small", "base"])
def test_paper_subspaces_have_256_distinct_students_within_bert_base(name):
  space = S.PAPER_SUBSPACES[name]
  students = space.enumerate()
  assert len(students) == len(space) == 256 == len(set(students))
  space.check_fits(BERT_BASE)
  assert space.largest == max(students) and space.smallest == min(students)


def test_tiny_superlm_width_matches_the_paper():
  tiny = S.PAPER_SUBSPACES["tiny"]
  assert (tiny.hidden[-1], tiny.heads[-1], tiny.max_ffn) == (224, 10, 784)
  assert S.Arch(4, 128, 2.0, 10).qkv_width(64) == 640


def test_derived_subspaces_keep_the_fractions_for_the_demo_teacher():
  tiny = S.derive_subspace(S.PAPER_SUBSPACES["tiny"], MINILM)
  assert tiny.hidden == (64, 80, 96, 112)
  assert tiny.layers == (2, 3, 4)
  assert tiny.heads == (7, 8, 9, 10)
  assert tiny.mlp_ratio == (2.0, 2.5, 3.0, 3.5)
  base = S.derive_subspace(S.PAPER_SUBSPACES["base"], MINILM)
  assert base.hidden == (272, 288, 304, 320) and base.layers == (5, 6)
  # A BERT-base teacher derives exactly the paper's sub-spaces.
  for name, space in S.PAPER_SUBSPACES.items():
    assert S.derive_subspace(space, BERT_BASE) == space, name


def test_subspace_larger_than_teacher_is_a_clear_error():
  with pytest.raises(ValueError, match="exceeds the teacher: max layers is 12 but the teacher has 6"):
    S.PAPER_SUBSPACES["small"].check_fits(MINILM)
  with pytest.raises(ValueError, match="max hidden is 640"):
    S.SubSpace("x", (2,), (640,), (1.0,), (2,)).check_fits(MINILM)
  with pytest.raises(ValueError, match="max heads is 16"):
    S.SubSpace("x", (2,), (64,), (1.0,), (16,)).check_fits(MINILM)


def test_arch_outside_subspace_is_a_clear_error():
  tiny = S.PAPER_SUBSPACES["tiny"]
  tiny.check_arch(S.Arch(7, 160, 3.5, 10))
  assert S.Arch(7, 160, 3.5, 10) in tiny
  with pytest.raises(ValueError, match=r"hidden=170 is not one of \[128, 160, 192, 224\]"):
    tiny.check_arch(S.Arch(7, 170, 3.5, 10))
  with pytest.raises(ValueError, match="has repeated values"):
    S.SubSpace("x", (2, 2), (64,), (1.0,), (2,))


def test_layer_mapping_matches_the_paper():
  assert [S.layer_map(i, 4, 12) for i in range(4)] == [0, 3, 6, 9]
  assert [S.layer_map(i, 11, 12) for i in range(11)] == list(range(11))
  assert S.PAPER_SUBSPACES["tiny"].stored_layers(12) == (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
  assert S.SubSpace("x", (2,), (64,), (1.0,), (2,)).stored_layers(6) == (0, 3)


def test_sandwich_sampling_is_a_pure_function_of_seed_and_step():
  space = S.PAPER_SUBSPACES["small"]
  a = S.sandwich_sample(space, seed=3, step=17)
  assert a == S.sandwich_sample(space, seed=3, step=17)
  assert a[0] == space.largest and a[1] == space.smallest and len(set(a)) == 4
  assert all(x in space for x in a)
  draws = {tuple(S.sandwich_sample(space, 3, step)[2:]) for step in range(50)}
  assert len(draws) > 40  # the random pair changes from step to step
  assert S.sandwich_sample(space, 4, 17) != a


def test_paper_formula_reproduces_the_published_figures():
  # (arch, params in M, GFLOPs) as printed in docs/paper.md §5 and the paper.
  table = [(S.Arch(12, 768, 4.0, 12), "109.5", "11.25"), (S.Arch(11, 352, 4.0, 10), "26.77", "2.128"),
           (S.Arch(12, 544, 3.0, 9), "50.11", "4.403"), (S.Arch(11, 352, 4.0, 8), "26.09", "2.019"),
           (S.Arch(7, 160, 3.5, 10), "6.89", "0.275")]
  for arch, params, gflops in table:
    decimals = len(params.split(".")[1])
    assert f"{S.paper_params(arch) / 1e6:.{decimals}f}" == params, arch
    decimals = len(gflops.split(".")[1])
    assert f"{S.paper_flops(arch, 128) / 1e9:.{decimals}f}" == gflops, arch


def test_exact_costs_count_qkv_at_head_size_64():
  a = S.Arch(4, 128, 2.0, 10)
  b = S.Arch(4, 128, 2.0, 2)
  # Eight fewer heads drop 3 projections + output projection of 8*64 units per layer.
  assert S.exact_params(a, 64) - S.exact_params(b, 64) == 4 * (3 * (128 * 512 + 512) + 512 * 128)
  bd = S.exact_flops_breakdown(a, 128, 64)
  assert bd["qkv"] == 4 * 3 * (2 * 128 * 128 * 640 + 128 * 640)
  assert S.exact_flops(a, 128, 64) == sum(bd.values())
  # Attention is quadratic in the sequence length, everything else linear.
  ratio = S.exact_flops(a, 256, 64, pooler=False) / S.exact_flops(a, 128, 64, pooler=False)
  assert 2.0 < ratio < 4.0
