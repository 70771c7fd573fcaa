"""The suites: named, versioned, built from fastconv.problem descriptors, ResNet shapes derived correctly."""

import pytest

from fastconv.bench import suites
from fastconv.problem import Conv2dProblem


@pytest.mark.parametrize("name", sorted(suites.SUITES))
def test_suite_builds_unique_ids(name):
    suite = suites.get_suite(name)
    assert suite.name == name and isinstance(suite.version, int) and suite.description
    cases = suite.cases()
    ids = [c.id for c in cases]
    assert cases and len(ids) == len(set(ids))
    for case in cases:
        assert case.label and case.count >= 1
        assert case.unit in (suites.GFLOPS, suites.GBPS)
        assert case.work > 0
        assert "_f32" in case.id


def test_resnet50_is_every_distinct_convolution():
    convs = suites.resnet_convs(50)
    assert len(convs) == 53  # 1 stem + 16 bottlenecks x 3 + 4 projections
    cases = suites.get_suite("resnet50").cases(batch_sizes=(1,))
    assert sum(c.count for c in cases) == 53
    stem = cases[0].problem
    assert (stem.c, stem.h, stem.k, stem.r, stem.stride, stem.padding) == (3, 224, 64, 7, (2, 2), (3, 3, 3, 3))
    # v1.5: the first block of stages 3-5 strides on its 3x3 convolution, and on the projection.
    strided = [(label, p) for label, p in convs if p.stride == (2, 2)]
    assert [label.split()[1] for label, _ in strided[1:]] == ["3x3/2", "proj"] * 3
    assert all(isinstance(c.problem, Conv2dProblem) for c in cases)


def test_model_flops_match_the_published_counts():
    # torchvision: ResNet-50 4.09 GMACs, ResNet-18 1.81 GMACs at 224x224.
    assert suites.ModelProblem("resnet50", 1).flops == pytest.approx(2 * 4.09e9, rel=0.01)
    assert suites.ModelProblem("resnet18", 1).flops == pytest.approx(2 * 1.81e9, rel=0.01)
    assert suites.ModelProblem("resnet50", 8).flops == 8 * suites.ModelProblem("resnet50", 1).flops


def test_batch_sizes_and_dtype():
    cases = suites.get_suite("conv-zoo").cases(batch_sizes=(2, 3), dtype="float64")
    assert {c.n for c in cases} == {2, 3}
    assert all(c.id.endswith("_f64") and c.problem.dtype == "float64" for c in cases)
    default = suites.get_suite("pool-bn").cases()
    assert {c.n for c in default} == set(suites.DEFAULT_BATCH_SIZES)


def test_quick_is_a_subset_of_the_other_suites():
    others = {c.id for name in ("resnet50", "conv-zoo", "pool-bn") for c in suites.get_suite(name).cases()}
    assert {c.id for c in suites.get_suite("quick").cases()} <= others


def test_unknown_suite_names_the_choices():
    with pytest.raises(ValueError, match="suite.*nope.*resnet50"):
        suites.get_suite("nope")


@pytest.mark.parametrize("name", sorted(suites.SUITES))
def test_names_are_unique_and_asv_uses_them(name, monkeypatch):
    import importlib.util
    import pathlib

    cases = suites.get_suite(name).cases()
    assert len({c.name for c in cases}) == len(cases)
    monkeypatch.setenv("FASTCONV_ASV_SUITE", name)
    path = pathlib.Path(__file__).parent.parent / "benchmarks" / "bench_ops.py"
    spec = importlib.util.spec_from_file_location(f"asv_bench_ops_{name.replace('-', '_')}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    params = [p for cls in (module.Compute, module.MemoryBound) for p in cls.params[1] if p != "none"]
    assert sorted(params) == sorted(c.name for c in cases)  # the labels `fastconv bench` prints


def test_training_suite_runs_every_direction_with_one_flop_count():
    cases = suites.get_suite("training").cases()
    assert len(cases) == 3 * len(suites.get_suite("training").entries)
    by_shape = {}
    for c in cases:
        by_shape.setdefault(c.label, set()).add((c.problem.direction, c.problem.flops))
    for label, seen in by_shape.items():
        assert {d for d, _ in seen} == {"fwd", "bwd_data", "bwd_weight"} and len({f for _, f in seen}) == 1, label
    assert all(c.problem.flops < 2e9 for c in cases)  # scaled for 2 cores
    only = suites.get_suite("quick").cases(directions=("bwd_data",))
    assert only and all(c.op == "conv2d" and c.problem.direction == "bwd_data" for c in only)
