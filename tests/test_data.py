"""Token data: the shipped corpus, user files, deterministic batches."""

import lzma
from importlib import resources

import numpy as np
import pytest
import torch

from cp.data import DataConfig, TokenData


def test_bundled_corpus_is_over_a_megabyte_of_english_shipped_compressed():
    raw = resources.files("cp.corpora").joinpath("shakespeare.txt.xz").read_bytes()
    text = lzma.decompress(raw)
    assert len(raw) < len(text) / 2          # shipped compressed
    assert len(text) > 1_000_000
    assert b"To be, or not to be" in text
    data = TokenData(DataConfig())
    assert data.vocab_size == 256 and len(data.tokens) == len(text)


def test_batches_are_a_pure_function_of_seed_and_step():
    data = TokenData(DataConfig())
    x1, y1 = data.train_batch(7, 4, 32, seed=3)
    x2, y2 = TokenData(DataConfig()).train_batch(7, 4, 32, seed=3)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, data.train_batch(8, 4, 32, seed=3)[0])
    assert not torch.equal(x1, data.train_batch(7, 4, 32, seed=4)[0])
    assert torch.equal(x1[:, 1:], y1[:, :-1])  # targets are inputs shifted by one


def test_data_parallel_rows_partition_the_global_batch():
    data = TokenData(DataConfig())
    full, _ = data.train_batch(2, 6, 16, seed=0)
    parts = [data.train_batch(2, 6, 16, seed=0, rows=slice(r, None, 2))[0] for r in range(2)]
    assert torch.equal(torch.cat([full[0::2], full[1::2]]), torch.cat(parts))


def test_validation_set_is_the_same_for_every_run_and_disjoint_from_training():
    data = TokenData(DataConfig(val_fraction=0.05))
    a = torch.cat([x for x, _ in data.val_batches(16, 32, 5)])
    b = torch.cat([x for x, _ in TokenData(DataConfig()).val_batches(16, 32, 8)])
    assert a.shape == (16, 32) and torch.equal(a, b)
    assert len(data.train) + len(data.val) == len(data.tokens)
    assert np.shares_memory(data.train, data.tokens)  # memory-mapped, not copied


def test_a_users_token_file_is_memory_mapped(tmp_path):
    ids = (np.arange(10_000) % 1000).astype(np.uint16)
    ids.tofile(tmp_path / "tokens.bin")
    data = TokenData(DataConfig(corpus=str(tmp_path / "tokens.bin"), dtype="uint16"))
    assert data.vocab_size == 1000
    assert isinstance(data.tokens, np.memmap)
    x, y = data.train_batch(0, 2, 16, seed=0)
    assert torch.all((y - x) % 1000 == 1)  # consecutive ids stay consecutive
    np.save(tmp_path / "tokens.npy", ids.astype(np.uint32))
    assert TokenData(DataConfig(corpus=str(tmp_path / "tokens.npy"))).vocab_size == 1000


def test_a_users_text_file_is_tokenised_byte_level(tmp_path):
    (tmp_path / "mine.txt").write_text("hello world. " * 200)
    data = TokenData(DataConfig(corpus=str(tmp_path / "mine.txt")))
    assert data.vocab_size == 256
    assert bytes(data.tokens[:11]) == b"hello world"


def test_missing_corpus_names_the_alternatives():
    with pytest.raises(FileNotFoundError, match="shakespeare"):
        TokenData(DataConfig(corpus="no/such/file.bin"))
