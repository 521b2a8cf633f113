"""Data loading: named sets, image folders, arrays, pickled CIFAR batches, selection, guards."""

from __future__ import annotations

import gzip
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from l0tre.data import Dataset, EmbeddedDataWarning, load_data, read_idx


def test_mnist_test_full(shared_data: Path) -> None:
    ds = load_data("mnist:test", data_root=shared_data)
    assert isinstance(ds, Dataset) and ds.name == "mnist:test"
    assert ds.x.shape == (10000, 1, 28, 28) and ds.x.dtype == torch.float32
    assert ds.y is not None and ds.y.dtype == torch.int64 and ds.y[:5].tolist() == [7, 2, 1, 0, 4]
    assert float(ds.x.min()) == 0.0 and float(ds.x.max()) == 1.0
    assert torch.equal(ds.indices, torch.arange(10000))
    assert ds.notes == ["uint8 input scaled by 1/255"]


def test_mnist_embedded_equals_shared(shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("L0TRE_DATA", raising=False)
    with pytest.warns(EmbeddedDataWarning):
        emb = load_data("mnist:test")
    assert emb.name == "mnist:test (embedded 100)" and any("embedded" in n for n in emb.notes)
    ref = load_data("mnist:test", data_root=shared_data, limit=100)
    assert torch.equal(emb.x, ref.x) and emb.y is not None and ref.y is not None
    assert torch.equal(emb.y, ref.y)
    with pytest.raises(
        ValueError,
        match=r"indices: expected positions in \[0, 100\) of mnist:test \(embedded 100\)",
    ), pytest.warns(EmbeddedDataWarning):
        load_data("mnist:test", indices=[100])
    with pytest.raises(
        FileNotFoundError, match=r"data 'mnist:train': needs the MNIST IDX files.*L0TRE_DATA"
    ):
        load_data("mnist:train")


def test_embedded_fallback_warns(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No data root: the 100 embedded images, with a warning that names the fallback, the way to
    set a root, and the caller's line (not l0tre's)."""
    monkeypatch.delenv("L0TRE_DATA", raising=False)
    with pytest.warns(EmbeddedDataWarning) as record:
        ds = load_data("mnist:test", limit=3)
    assert len(ds) == 3 and ds.name == "mnist:test (embedded 100)"
    assert len(record) == 1 and issubclass(record[0].category, UserWarning)
    text = str(record[0].message)
    assert "embedded" in text and "100" in text and "data_root=" in text and "L0TRE_DATA" in text
    assert record[0].filename == __file__
    np.save(tmp_path / "q.npy", np.zeros((1, 1, 2, 2), np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any other source: no warning
        load_data(tmp_path / "q.npy")


def test_mnist_train(shared_data: Path) -> None:
    ds = load_data("mnist:train", data_root=shared_data, start=59998)
    assert ds.x.shape == (2, 1, 28, 28) and ds.indices.tolist() == [59998, 59999]
    labels = shared_data / "mnist" / "train-labels-idx1-ubyte.gz"
    if labels.is_file():
        assert ds.y is not None
    else:  # the shared data lacks the train labels
        assert ds.y is None and any("labels are unknown" in n for n in ds.notes)


def test_mnist_folder_spec_and_idx_errors(tmp_path: Path) -> None:
    imgs = np.arange(2 * 28 * 28, dtype=np.uint32).astype(np.uint8).reshape(2, 28, 28)
    header = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in (2, 28, 28))
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as fh:
        fh.write(header + imgs.tobytes())
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 2, 3, 9]))
    ds = load_data(f"mnist:test@{tmp_path}")
    assert ds.y is not None and ds.y.tolist() == [3, 9]
    np.testing.assert_array_equal((ds.x[:, 0] * 255).round().numpy().astype(np.uint8), imgs)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 5, 3, 9]))
    with pytest.raises(ValueError, match=r"expected 13 bytes for an IDX array of shape \(5,\)"):
        read_idx(tmp_path / "t10k-labels-idx1-ubyte")
    with pytest.raises(FileNotFoundError, match=r"expected train-images-idx3-ubyte.gz in"):
        load_data(f"mnist:train@{tmp_path}")


def test_cifar10_npz(shared_data: Path) -> None:
    ds = load_data("cifar10:test", data_root=shared_data, limit=10)
    assert ds.x.shape == (10, 3, 32, 32)
    assert ds.y is not None and ds.y.tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    raw = np.load(shared_data / "cifar10" / "cifar10_test_first100.npz")["x"]
    assert torch.equal(
        ds.x[1], torch.from_numpy(raw[1].transpose(2, 0, 1).astype(np.float32) / 255)
    )
    assert any("first 100" in n for n in ds.notes)
    with pytest.raises(ValueError, match=r"cifar10:train@DIR"):
        load_data("cifar10:train", data_root=shared_data)


def _cifar_dir(tmp_path: Path) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, size=(4, 3072), dtype=np.uint8)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name, offset in [("test_batch", 0)] + [(f"data_batch_{i}", i) for i in range(1, 6)]:
        batch = {
            b"batch_label": b"x",
            b"labels": [offset, 1, 2, 3],
            b"data": data,
            b"filenames": [],
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2 if offset % 2 == 0 else 5))
    return folder, data


def test_cifar10_python_batches(tmp_path: Path) -> None:
    folder, data = _cifar_dir(tmp_path)
    test = load_data(f"cifar10:test@{folder}")
    assert test.x.shape == (4, 3, 32, 32) and test.y is not None and test.y.tolist() == [0, 1, 2, 3]
    assert torch.equal(test.x[2].reshape(-1), torch.from_numpy(data[2].astype(np.float32) / 255))
    train = load_data(f"cifar10:train@{folder}", indices=[4, 8])
    assert train.y is not None and train.y.tolist() == [2, 3] and train.indices.tolist() == [4, 8]


def test_cifar10_pickle_refuses_code(tmp_path: Path) -> None:
    folder, _ = _cifar_dir(tmp_path)

    class Evil:  # ``os.getcwd``: harmless if run, and unlike ``print`` not replaced by an
        # imported library (Ray swaps ``builtins.print`` for its own once imported in the process)
        def __reduce__(self) -> tuple[object, tuple[()]]:
            return (os.getcwd, ())

    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(ValueError, match=r"global (posix|os|nt)\.getcwd is not allowed"):
        load_data(f"cifar10:test@{folder}")
    (folder / "test_batch").unlink()
    with pytest.raises(
        FileNotFoundError, match=r"expected the CIFAR-10 python batches \['test_batch'\]"
    ):
        load_data(f"cifar10:test@{folder}")


def test_image_folder(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, size=(8, 6, 3), dtype=np.uint8) for _ in range(3)]
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(tmp_path / f"img_{i:02d}_{[7, 1, 4][i]}.png")
    (tmp_path / "readme.txt").write_text("ignored")
    ds = load_data(tmp_path)
    assert ds.x.shape == (3, 3, 8, 6) and ds.y is not None and ds.y.tolist() == [7, 1, 4]
    assert torch.equal(
        ds.x[1], torch.from_numpy(arrays[1].transpose(2, 0, 1).astype(np.float32) / 255)
    )
    gray = load_data(tmp_path, input_shape=(1, 4, 3), indices=[2])
    assert gray.x.shape == (1, 1, 4, 3) and gray.indices.tolist() == [2]
    assert any("resized to 4x3" in n for n in gray.notes)
    Image.fromarray(arrays[0]).save(tmp_path / "unlabelled.png")
    assert load_data(tmp_path).y is None
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"data: expected a readable image, got .*broken\.png"):
        load_data(tmp_path)


def test_imagenet_samples(shared_data: Path) -> None:
    ds = load_data(shared_data / "imagenet" / "samples", input_shape=(3, 64, 64), limit=3)
    assert ds.x.shape == (3, 3, 64, 64) and ds.y is not None and ds.y.tolist() == [243, 559, 438]


def test_npy_and_npz(tmp_path: Path) -> None:
    x8 = np.random.default_rng(0).integers(0, 256, size=(5, 1, 4, 4), dtype=np.uint8)
    np.save(tmp_path / "a.npy", x8)
    ds = load_data(tmp_path / "a.npy")
    assert (
        ds.y is None and ds.notes == ["uint8 input scaled by 1/255"] and ds.name.endswith("a.npy")
    )
    torch.testing.assert_close(ds.x, torch.from_numpy(x8.astype(np.float32) / 255))
    xf = np.random.default_rng(1).uniform(size=(5, 3, 2, 2)).astype(np.float64)
    np.savez(tmp_path / "b.npz", x=xf, y=np.array([1, 2, 3, 4, 0]))
    ds = load_data(tmp_path / "b.npz", start=1, limit=2)
    assert ds.x.dtype == torch.float32 and ds.notes == []
    assert ds.y is not None and ds.y.tolist() == [2, 3] and ds.indices.tolist() == [1, 2]
    np.savez(tmp_path / "hwc.npz", x=xf.transpose(0, 2, 3, 1))
    assert load_data(tmp_path / "hwc.npz", input_shape=(3, 2, 2)).x.shape == (5, 3, 2, 2)
    np.save(tmp_path / "flat3d.npy", x8[:, 0])
    assert load_data(tmp_path / "flat3d.npy").x.shape == (5, 1, 4, 4)


def test_array_guards(tmp_path: Path) -> None:
    x = np.full((2, 1, 3, 3), 0.5, dtype=np.float32)
    x[0, 0, 0, 0] = 1.5
    np.save(tmp_path / "range.npy", x)
    with pytest.raises(
        ValueError,
        match=r"x: expected values in \[0, 1\] \(or uint8 0..255\), got range \[0.5, 1.5\]",
    ):
        load_data(tmp_path / "range.npy")
    x[0, 0, 0, 0] = np.nan
    np.save(tmp_path / "nan.npy", x)
    with pytest.raises(ValueError, match=r"x: expected finite values, got 1 NaN/Inf"):
        load_data(tmp_path / "nan.npy")
    np.save(tmp_path / "int.npy", np.zeros((2, 1, 3, 3), dtype=np.int64))
    with pytest.raises(ValueError, match=r"got dtype int64"):
        load_data(tmp_path / "int.npy")
    np.savez(tmp_path / "noxy.npz", images=x)
    with pytest.raises(ValueError, match=r"expected an array 'x' in .*got keys \['images'\]"):
        load_data(tmp_path / "noxy.npz")
    np.savez(tmp_path / "bady.npz", x=np.zeros((2, 1, 3, 3), np.float32), y=np.array([1]))
    with pytest.raises(ValueError, match=r"y: expected labels of shape \(2,\), got \(1,\)"):
        load_data(tmp_path / "bady.npz")
    np.save(tmp_path / "shape.npy", np.zeros((2, 3), np.float32))
    with pytest.raises(
        ValueError, match=r"x: expected an array \(N, C, H, W\), got shape \(2, 3\)"
    ):
        load_data(tmp_path / "shape.npy")
    (tmp_path / "corrupt.npz").write_bytes(b"PK\x03\x04 nope")
    with pytest.raises(ValueError, match=r"is not a valid \.npz/\.npy file"):
        load_data(tmp_path / "corrupt.npz")


@pytest.mark.parametrize("name", ["random.npz", "random.npy"])
def test_random_bytes_are_not_a_valid_array_file(tmp_path: Path, name: str) -> None:
    """Random bytes are named as such, never answered with numpy's allow_pickle hint."""
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ValueError) as info:
        load_data(path)
    text = str(info.value)
    assert "is not a valid .npz/.npy file" in text and name in text
    assert "pickle" not in text.lower()


def test_object_arrays_are_refused_without_pickle_hint(tmp_path: Path) -> None:
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}, None], dtype=object))
    for name in ("obj.npy", "obj.npz"):
        with pytest.raises(ValueError, match=r"not a valid \.npz/\.npy file \(it holds Python objects") as info:
            load_data(tmp_path / name)
        assert "allow_pickle" not in str(info.value)


def test_array_file_by_content_not_suffix(tmp_path: Path) -> None:
    x = np.zeros((2, 1, 3, 3), np.float32)
    np.save(tmp_path / "a.npy", x)
    (tmp_path / "a.npy").rename(tmp_path / "really_npy.npz")
    assert load_data(tmp_path / "really_npy.npz").x.shape == (2, 1, 3, 3)
    np.savez(tmp_path / "b.npz", x=x, y=np.array([0, 1]))
    (tmp_path / "b.npz").rename(tmp_path / "really_npz.npy")
    assert load_data(tmp_path / "really_npz.npy").x.shape == (2, 1, 3, 3)


def test_selection(tmp_path: Path) -> None:
    np.save(tmp_path / "s.npy", np.zeros((10, 1, 2, 2), np.float32))
    path = tmp_path / "s.npy"
    assert load_data(path, start=3, indices=[9, 3, 5], limit=2).indices.tolist() == [9, 3]
    assert load_data(path, start=8).indices.tolist() == [8, 9]
    assert load_data(path, indices=torch.tensor([4, 1])).indices.tolist() == [4, 1]
    assert len(load_data(path, limit=0)) == 0
    with pytest.raises(
        ValueError, match=r"indices: expected positions in \[2, 10\) of s.npy, got \[1, 10\]"
    ):
        load_data(path, start=2, indices=[1, 4, 10])
    with pytest.raises(ValueError, match=r"start: expected a position below the 10 images"):
        load_data(path, start=10)
    with pytest.raises(ValueError, match=r"start: expected an integer >= 0, got -1"):
        load_data(path, start=-1)
    with pytest.raises(ValueError, match=r"limit: expected an integer >= 0, got -2"):
        load_data(path, limit=-2)
    with pytest.raises(ValueError, match=r"indices: expected a list of integers"):
        load_data(path, indices=[1.5])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"input_shape: expected images of shape \(3, 2, 2\)"):
        load_data(path, input_shape=(3, 2, 2))


def test_spec_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"data: expected one of mnist:test, .*got 'imagenet:val'"):
        load_data("imagenet:val")
    with pytest.raises(
        FileNotFoundError, match=r"data: expected an existing file or folder, got .*missing"
    ):
        load_data(tmp_path / "missing")
    (tmp_path / "x.csv").write_text("1,2")
    with pytest.raises(ValueError, match=r"got the file .*x\.csv' of unknown type"):
        load_data(tmp_path / "x.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"expected PNG/JPEG images in the folder"):
        load_data(tmp_path / "empty")
