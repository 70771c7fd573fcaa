"""fastconv.onnx.load: torch.onnx exports of the plain-torch CNNs (tests/torch_nets.py) and
hand-built graphs for the attributes exporters rarely emit, checked against ONNX Runtime on every
backend."""

import io
import warnings

import numpy as np
import pytest

from nn_helpers import BACKENDS, assert_matches, require

from fastconv.graph import Graph, UnsupportedOpError

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")
torch_nets = pytest.importorskip("torch_nets")
import fastconv.onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

RTOL = 1e-5
BACKENDS = list(dict.fromkeys(BACKENDS))


def _export(model, x, opset, dynamo=False) -> bytes:
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), f, dynamo=dynamo, opset_version=opset)
    return f.getvalue()


def _runtime(data: bytes, *inputs):
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return sess.run(None, {i.name: x for i, x in zip(sess.get_inputs(), inputs)})[0]


def _input(backend, channels=3):
    shape = (1, channels, 16, 16) if backend == "naive" else (1, channels, 32, 32)
    return np.random.default_rng(1).standard_normal(shape).astype(np.float32)


@pytest.fixture(scope="module")
def exports():
    cache = {}

    def get(name, opset, shape):
        key = (name, opset, shape)
        if key not in cache:
            cache[key] = _export(torch_nets.build(name), torch.zeros(shape), opset)
        return cache[key]

    return get


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(torch_nets.NETS))
def test_torch_exports_match_onnx_runtime(name, backend, exports):
    require(backend)
    x = _input(backend)
    data = exports(name, 13, x.shape)
    g = fastconv.onnx.load(data).to_backend(backend)
    assert isinstance(g, Graph) and not g.training
    expected = _runtime(data, x)
    assert_matches(g(x), expected, what=f"onnx.load({name}) on {backend}", rtol=RTOL)
    assert_matches(g.fuse()(x), expected, what=f"onnx.load({name}).fuse() on {backend}", rtol=RTOL)


@pytest.mark.parametrize("opset, names", [(7, ("mobilenet_v2", "catnet")), (11, ("densenet", "catnet"))])
def test_older_opsets(opset, names, exports):
    x = _input("im2col")
    for name in names:
        data = exports(name, opset, x.shape)
        assert_matches(fastconv.onnx.load(data)(x), _runtime(data, x), what=f"{name} opset {opset}", rtol=RTOL)


def test_dynamo_export_and_torch_names(tmp_path):
    t = torch_nets.build("hand_resnet")
    x = _input("im2col")
    path = tmp_path / "net.onnx"
    path.write_bytes(_export(t, torch.from_numpy(x), 18, dynamo=True))
    g = fastconv.onnx.load(path)
    assert_matches(g(x), _runtime(path.read_bytes(), x), rtol=RTOL)
    assert "fc.weight" in g.state_dict() and "layers.0.c1.weight" in g.state_dict()
    assert fastconv.onnx.load(onnx.load(str(path))).describe() == g.describe()


def _model(nodes, inits, in_shape, opset=13, out="y"):
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v.astype(np.float32) if v.dtype.kind == "f" else v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    return model.SerializeToString()


def _w(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("backend", ["im2col", "c", "numba"])
def test_conv_and_pool_attributes(backend):
    require(backend)
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "w1", "b1"], ["a"], kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
        n("Conv", ["a", "w2"], ["b"], kernel_shape=[3, 3], pads=[0, 1, 2, 1], dilations=[2, 1], group=2),
        n("MaxPool", ["b"], ["c"], kernel_shape=[3, 2], strides=[2, 2], pads=[1, 0, 0, 1]),
        n("Conv", ["c", "w3"], ["d"], kernel_shape=[2, 2], strides=[2, 2], auto_pad="SAME_LOWER"),
        n("AveragePool", ["d"], ["e"], kernel_shape=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1),
        n("AveragePool", ["d"], ["e2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], ceil_mode=1, strides=[2, 2]),
        n("GlobalMaxPool", ["e2"], ["g"]),
        n("Sum", ["e", "g", "e"], ["s"]),
        n("LRN", ["s"], ["l"], size=3, alpha=1e-3, beta=0.75, bias=2.0),
        n("Pad", ["l", "pads", "pv"], ["p"], mode="constant"),
        n("Transpose", ["p"], ["t"], perm=[0, 2, 3, 1]),
        n("Flatten", ["t"], ["f"], axis=1),
        n("Gemm", ["f", "wg", "bg"], ["gm"], alpha=0.5, beta=2.0),
        n("Softmax", ["gm"], ["y"], axis=1),
    ]
    inits = {
        "w1": _w(4, 3, 3, 3),
        "b1": _w(4),
        "w2": _w(6, 2, 3, 3, seed=1),
        "w3": _w(6, 6, 2, 2, seed=2),
        "pads": np.array([0, 0, 1, 0, 0, 0, 0, 2], np.int64),
        "pv": np.array(0.5, np.float32),
    }
    x = _input(backend)[:1, :, :19, :21].copy()
    probe = fastconv.onnx.load(_model(nodes[:-3] + [n("Identity", ["t"], ["y"])], inits, x.shape))
    features = int(np.prod(probe(x).shape[1:]))
    inits.update(wg=_w(features, 7, seed=3), bg=_w(1, 7, seed=4))
    data = _model(nodes, inits, x.shape)
    g = fastconv.onnx.load(data).to_backend(backend)
    assert_matches(g(x), _runtime(data, x), rtol=RTOL)


def test_opset7_clip_dropout_matmul_and_activations():
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "w"], ["a"], kernel_shape=[1, 1]),
        n("Clip", ["a"], ["b"], min=-0.5, max=0.7),
        n("LeakyRelu", ["a"], ["c"], alpha=0.2),
        n("Sigmoid", ["c"], ["d"]),
        n("Mul", ["b", "d"], ["e"]),
        n("Dropout", ["e"], ["f"], ratio=0.3),
        n("GlobalAveragePool", ["f"], ["g"]),
        n("Reshape", ["g", "shape"], ["h"]),
        n("MatMul", ["h", "m"], ["y"]),
    ]
    inits = {"w": _w(4, 3, 1, 1), "shape": np.array([0, -1], np.int64), "m": _w(4, 2, seed=5)}
    x = _input("im2col")
    data = _model(nodes, inits, x.shape, opset=7)
    assert_matches(fastconv.onnx.load(data)(x), _runtime(data, x), rtol=RTOL)


def test_unsupported_op_is_named():
    data = _model([helper.make_node("Erf", ["x"], ["y"], name="my_erf")], {}, (1, 3, 4, 4))
    with pytest.raises(UnsupportedOpError, match=r"unsupported op Erf .*node 'my_erf'.*converts Conv"):
        fastconv.onnx.load(data)
    with pytest.raises(TypeError, match="path, bytes or an onnx.ModelProto"):
        fastconv.onnx.load(3)


def test_what_is_not_an_onnx_model_is_a_value_error(tmp_path):
    """Corrupt bytes reached the caller as protobuf's DecodeError, and bytes protobuf reads as an
    empty model loaded as an empty graph (found by probing the loader)."""
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage")
    for source in (bad, str(bad), b"garbage"):
        with pytest.raises(ValueError, match="not an ONNX model"):
            fastconv.onnx.load(source)
    for empty in (b"", b"\x08\x07"):
        with pytest.raises(ValueError, match="no graph outputs"):
            fastconv.onnx.load(empty)
