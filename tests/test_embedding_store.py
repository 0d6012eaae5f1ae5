import numpy as np
import pytest

from speakertrip.errors import FormatError, KeyNotFoundError
from speakertrip.data.embedding_store import EmbeddingStore, load_store, save_store


def make_store(count=6, dim=4, seed=0):
    rng = np.random.default_rng(seed)
    return EmbeddingStore([f"id1000{i}/v/{i}.wav" for i in range(count)], rng.normal(size=(count, dim)).astype(np.float32))


@pytest.mark.parametrize("name", ["emb.npz", "emb_dir"])
def test_round_trip_both_formats(tmp_path, name):
    store = make_store()
    path = save_store(store, tmp_path / name)
    loaded = load_store(path)
    assert loaded.keys == store.keys and loaded.dim == 4 and len(loaded) == 6
    np.testing.assert_array_equal(loaded.embeddings, store.embeddings)
    assert loaded.embeddings.dtype == np.float32
    if name == "emb_dir":
        assert isinstance(loaded.embeddings, np.memmap)  # large stores are not read into memory
        assert (path / "keys.txt").read_text().splitlines() == store.keys
    assert not list(tmp_path.rglob("*.partial"))


def test_lookup():
    store = make_store()
    np.testing.assert_array_equal(store.index_of([store.keys[3], store.keys[0]]), [3, 0])
    np.testing.assert_array_equal(store.get(store.keys[2]), store.embeddings[2])
    assert store.keys[1] in store and "nope" not in store
    with pytest.raises(KeyNotFoundError, match=r"2 of 3 keys not found: 'x', 'y'"):
        store.index_of([store.keys[0], "x", "y", "x"])


def test_many_missing_keys_are_counted_and_a_few_shown():
    with pytest.raises(KeyNotFoundError, match=r"^8 of 8 keys not found: 'k0', 'k1', 'k2', 'k3', 'k4', \.\.\. \(3 more\)"):
        make_store().index_of([f"k{i}" for i in range(8)])


def test_float64_input_is_kept_as_float32():
    store = EmbeddingStore(["a"], np.ones((1, 3)))
    assert store.embeddings.dtype == np.float32


@pytest.mark.parametrize("keys, embeddings, message", [
    (["a", "b", "a"], np.zeros((3, 2)), "1 duplicate keys, e.g. 'a'"),
    (["a", "b"], np.zeros((3, 2)), "2 keys but 3 embedding rows"),
    (["a", "b"], np.zeros(2), r"must be a 2-D \(N, D\) array, got shape \(2,\)"),
    (["a", "b"], np.array([[0.0, 1.0], [np.nan, 0.0]]), "NaN or infinite values in the embedding of 'b'"),
    (["a", "b"], np.zeros((2, 2), dtype=np.int64), "must be floating point"),
    (["a", ""], np.zeros((2, 2)), "non-empty"),
])
def test_bad_stores(keys, embeddings, message):
    with pytest.raises(FormatError, match=message):
        EmbeddingStore(keys, embeddings, source="store.npz")


def test_errors_name_the_file(tmp_path):
    path = tmp_path / "dup.npz"
    np.savez(path, keys=np.array(["a", "a"]), embeddings=np.zeros((2, 3), np.float32))
    with pytest.raises(FormatError, match=r"dup\.npz: 1 duplicate keys"):
        load_store(path)
    np.savez(tmp_path / "nokeys.npz", embeddings=np.zeros((2, 3)))
    with pytest.raises(FormatError, match=r"nokeys\.npz: missing arrays \['keys'\]"):
        load_store(tmp_path / "nokeys.npz")
    np.savez(tmp_path / "empty.npz", keys=np.array([], dtype=str), embeddings=np.zeros((0, 3)))
    with pytest.raises(FormatError, match="empty embedding store"):
        load_store(tmp_path / "empty.npz")
    np.savez(tmp_path / "objects.npz", keys=np.array(["a", 1], dtype=object), embeddings=np.zeros((2, 3)))
    with pytest.raises(FormatError, match="not a readable .npz"):  # object arrays would need pickle: refused
        load_store(tmp_path / "objects.npz")
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(FormatError, match=r"junk\.npz: not a readable"):
        load_store(tmp_path / "junk.npz")
    with pytest.raises(FormatError, match="no such embedding store"):
        load_store(tmp_path / "absent.npz")


def test_directory_errors(tmp_path):
    folder = tmp_path / "store"
    save_store(make_store(), folder)
    (folder / "keys.txt").write_text("a\n\nb\n")
    with pytest.raises(FormatError, match=r"keys\.txt:2: expected one key per line"):
        load_store(folder)
    (folder / "keys.txt").write_text("a\nb\n")
    with pytest.raises(FormatError, match="2 keys but 6 embedding rows"):
        load_store(folder)
    (folder / "embeddings.npy").unlink()
    with pytest.raises(FormatError, match="missing embeddings.npy"):
        load_store(folder)
