"""The tool verbs (convert_imageset, compute_image_mean, extract_features, upgrade_*) and export, as
commands: flags in gflags' spellings reach the functions of torchcaffe.data.tools / export."""
from __future__ import annotations

import numpy as np
import pytest

from torchcaffe.data.datum import datum_image, parse_datum
from torchcaffe.data.db import open_database
from torchcaffe.io.binaryproto import read_blobproto
from torchcaffe.io.prototxt import read_net

from ..data.fixtures import write_png
from .helpers import messages, run_main

NET = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 1 dim: 6 dim: 6 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 3 kernel_size: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "prob" type: "Softmax" bottom: "pool" top: "prob" }
"""


@pytest.fixture
def image_list(tmp_path):
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (5, 4, 3), dtype=np.uint8) for _ in range(4)]
    lines = [f"{write_png(tmp_path / f'im{i}.png', im).rsplit('/', 1)[1]} {i}\n" for i, im in enumerate(images)]
    (tmp_path / "list.txt").write_text("".join(lines))
    return images


def records(path):
    return [(key, parse_datum(value, "x")) for key, value in open_database(str(path), "lmdb").items()]


@pytest.mark.parametrize("gray_flag", ["--gray", "-gray=true", "--gray=1"])
def test_convert_imageset_takes_gflags_booleans(tmp_path, capsys, image_list, gray_flag):
    status, err = run_main(capsys, "convert_imageset", gray_flag, "--resize_width=2", "--resize_height", "3",
                           f"{tmp_path}/", str(tmp_path / "list.txt"), str(tmp_path / "db"))
    assert status == 0, err
    assert "Processed 4 files." in messages(err)
    (key, first), *_ = records(tmp_path / "db")
    assert key.startswith(b"00000000_") and datum_image(first, "x").shape == (1, 3, 2)


def test_convert_imageset_false_boolean_keeps_color(tmp_path, capsys, image_list):
    status, err = run_main(capsys, "convert_imageset", "--gray=false", f"{tmp_path}/", str(tmp_path / "list.txt"),
                           str(tmp_path / "db"))
    assert status == 0, err
    stored = [datum_image(d, "x") for _, d in records(tmp_path / "db")]
    np.testing.assert_array_equal(stored[2], image_list[2].transpose(2, 0, 1))


def test_compute_image_mean_verb(tmp_path, capsys, image_list):
    assert run_main(capsys, "convert_imageset", f"{tmp_path}/", str(tmp_path / "list.txt"), str(tmp_path / "db"))[0] == 0
    status, err = run_main(capsys, "compute_image_mean", str(tmp_path / "db"), str(tmp_path / "mean.binaryproto"))
    assert status == 0, err
    mean = read_blobproto(str(tmp_path / "mean.binaryproto"))
    expected = np.mean([im.transpose(2, 0, 1).astype(np.float32) for im in image_list], axis=0)
    np.testing.assert_allclose(mean.reshape(expected.shape), expected, rtol=1e-6)


def test_convert_imageset_errors_name_the_list(tmp_path, capsys):
    (tmp_path / "list.txt").write_text("missing.png 0\n")
    status, err = run_main(capsys, "convert_imageset", f"{tmp_path}/", str(tmp_path / "list.txt"), str(tmp_path / "db"))
    assert status == 1 and "torchcaffe convert_imageset: error:" in err[-1]
    assert not (tmp_path / "db").exists()


def test_upgrade_verbs(tmp_path, capsys):
    (tmp_path / "v1.prototxt").write_text(
        'name: "old" input: "data" input_dim: 1 input_dim: 1 input_dim: 4 input_dim: 4\n'
        'layers { name: "relu" type: RELU bottom: "data" top: "data" }\n')
    status, err = run_main(capsys, "upgrade_net_proto_text", str(tmp_path / "v1.prototxt"), str(tmp_path / "v2.prototxt"))
    assert status == 0, err
    net = read_net(str(tmp_path / "v2.prototxt"))
    assert [layer.type for layer in net.layer] == ["Input", "ReLU"] and not net.layers
    (tmp_path / "solver.prototxt").write_text('net: "x.prototxt" solver_type: ADAM base_lr: 0.1\n')
    status, err = run_main(capsys, "upgrade_solver_proto_text", str(tmp_path / "solver.prototxt"), str(tmp_path / "new.prototxt"))
    assert status == 0, err
    assert 'type: "Adam"' in (tmp_path / "new.prototxt").read_text()


def test_extract_features_verb(tmp_path, capsys):
    import h5py

    import torchcaffe

    (tmp_path / "net.prototxt").write_text(NET)
    torchcaffe.Net(str(tmp_path / "net.prototxt"), torchcaffe.TEST).save(str(tmp_path / "w.caffemodel"))
    status, err = run_main(capsys, "extract_features", str(tmp_path / "w.caffemodel"), str(tmp_path / "net.prototxt"),
                           "conv,prob", f"{tmp_path}/conv,{tmp_path}/prob", "2", "hdf5", "CPU")
    assert status == 0, err
    assert "Successfully extracted the features!" in messages(err)
    with h5py.File(tmp_path / "prob.h5" if (tmp_path / "prob.h5").exists() else tmp_path / "prob", "r") as f:
        assert f["prob"].shape == (4, 3, 2, 2)
    status, err = run_main(capsys, "extract_features", "a", "b", "conv", "d", "0", "lmdb")
    assert status == 1 and "NUM_MINI_BATCHES must be positive" in err[-1]


@pytest.mark.parametrize("fmt", ["onnx", "pytorch"])
def test_export_verb(tmp_path, capsys, fmt):
    import torchcaffe

    (tmp_path / "net.prototxt").write_text(NET)
    torchcaffe.Net(str(tmp_path / "net.prototxt"), torchcaffe.TEST).save(str(tmp_path / "w.caffemodel"))
    out = tmp_path / ("m.onnx" if fmt == "onnx" else "pt")
    status, err = run_main(capsys, "export", str(tmp_path / "net.prototxt"), str(tmp_path / "w.caffemodel"),
                           "--to", fmt, str(out))
    assert status == 0, err
    assert any("checked against torchcaffe" in m for m in messages(err))
    assert (out.is_file() if fmt == "onnx" else (out / "model.py").is_file())


def test_export_verb_refuses_bad_arguments(tmp_path, capsys):
    (tmp_path / "net.prototxt").write_text(NET)
    status, err = run_main(capsys, "export", str(tmp_path / "net.prototxt"), "--to", "tf", "m.pb")
    assert status == 1 and "--to takes onnx or pytorch" in err[-1]
    status, err = run_main(capsys, "export", str(tmp_path / "net.prototxt"), "--to", "pytorch", str(tmp_path / "pt"),
                           "--opset", "13")
    assert status == 1 and "--opset is for --to onnx" in err[-1]
    status, err = run_main(capsys, "export", str(tmp_path / "net.prototxt"), "--to", "onnx", str(tmp_path / "m.onnx"),
                           "--outputs", "nope")
    assert status == 1 and "no blob named 'nope'" in err[-1] and not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("verb", ["test", "time"])
def test_no_python_layers_flag_refuses_them(tmp_path, capsys, verb):
    (tmp_path / "net.prototxt").write_text(
        'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 } } }\n'
        'layer { name: "py" type: "Python" bottom: "data" top: "out" python_param { module: "os" layer: "system" } }\n')
    weights = ["--weights", str(tmp_path / "missing.caffemodel")] if verb == "test" else []
    status, err = run_main(capsys, verb, "--model", str(tmp_path / "net.prototxt"), "--iterations", "1",
                           "--no_python_layers", *weights)
    assert status == 1 and "Python layers are refused" in err[-1]


def test_train_refuses_python_layers_and_takes_allow_nonfinite(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.prototxt").write_text(
        'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 } } }\n'
        'layer { name: "py" type: "Python" bottom: "data" top: "out" python_param { module: "os" layer: "system" } }\n')
    (tmp_path / "solver.prototxt").write_text('net: "net.prototxt" base_lr: 0.1 lr_policy: "fixed" max_iter: 1\n')
    status, err = run_main(capsys, "train", "--solver", "solver.prototxt", "--no_python_layers", "--allow_nonfinite")
    assert status == 1 and "Python layers are refused" in err[-1]
