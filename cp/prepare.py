"""`cpt data prepare`: text files or JSONL into memory-mapped token files (`cp.data.TokenDir`).

Documents: in a JSONL file, each line's ``text`` field; in a text file, each paragraph (the
lines between blank lines); a bundled corpus's name (``shakespeare``) reads as its text.

The split is deterministic and independent of the order of documents and files: a document
goes to validation when the first 8 bytes of the SHA-256 of its UTF-8 text, read as a
big-endian integer, are below ``val_fraction`` x 2^64; identical documents land on the same
side. Train and validation keep their documents in input order, each followed by the
end-of-document token.

The tokenizer is either a byte-level BPE trained offline on the training documents with Hugging
Face ``tokenizers`` (``vocab_size`` entries, ``<|endoftext|>`` among them; training is
deterministic), or a user's ``tokenizer.json``. Either way it is saved as ``DIR/tokenizer.json``
and its SHA-256 goes into ``meta.json`` with the vocabulary size, the element type (uint16
when every id fits, else uint32), the token and document counts and each source file's
SHA-256. Files are written under temporary names and renamed; meta.json comes last, so a
directory with a meta.json is complete.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from .data import BUNDLED, TokenDir

if TYPE_CHECKING:
    from tokenizers import Tokenizer

FORMAT = "cp.tokens/1"
EOS = "<|endoftext|>"
#: End-of-document tokens looked for in a user's tokenizer, first found wins.
EOS_CANDIDATES = (EOS, "</s>", "<|end_of_text|>", "<eos>", "<|eos|>")
MIN_VOCAB = 257  # the 256 byte symbols and the end-of-document token
SPLIT_RULE = ("a document goes to validation when the first 8 bytes of the SHA-256 of its "
              "UTF-8 text, read as a big-endian integer, are below val_fraction * 2^64")
BATCH_DOCUMENTS = 2048  # documents per encode_batch call

Progress = Callable[[str, int, int], None]
"""progress(phase, bytes done, bytes in all inputs)."""


class PrepareError(ValueError):
    """Inputs or options that cannot make a token directory (a message for the user)."""


@dataclass(frozen=True)
class Source:
    """One input: a file, or a bundled corpus by name."""

    name: str
    path: Optional[Path]

    @classmethod
    def of(cls, name: str) -> Source:
        path = Path(name).expanduser()
        if path.is_file():
            return cls(name, path)
        if name in BUNDLED:
            return cls(name, None)
        raise PrepareError(f"input {name!r} is neither a file nor a bundled corpus "
                           f"({', '.join(BUNDLED)})")

    @property
    def jsonl(self) -> bool:
        return self.path is not None and self.path.suffix in (".jsonl", ".ndjson")

    def read_bytes(self) -> bytes:
        if self.path is not None:
            return self.path.read_bytes()
        res = resources.files("cp.corpora").joinpath(BUNDLED[self.name])
        return lzma.decompress(res.read_bytes())

    def size(self) -> int:
        return self.path.stat().st_size if self.path is not None else len(self.read_bytes())

    def documents(self) -> Iterator[tuple[str, int]]:
        """(document, input bytes it used) in file order."""
        if self.path is not None and self.jsonl:
            yield from self._jsonl()
            return
        lines: list[str] = []
        used = 0
        for line in self._lines():
            used += len(line.encode())
            if line.strip():
                lines.append(line)
            elif lines:
                yield "".join(lines).rstrip("\n"), used
                lines, used = [], 0
        if lines:
            yield "".join(lines).rstrip("\n"), used

    def _lines(self) -> Iterator[str]:
        if self.path is None:
            yield from self.read_bytes().decode("utf-8", errors="replace").splitlines(True)
            return
        with open(self.path, encoding="utf-8", errors="replace") as f:
            yield from f

    def _jsonl(self) -> Iterator[tuple[str, int]]:
        assert self.path is not None
        with open(self.path, "rb") as f:
            for i, raw in enumerate(f, 1):
                if not raw.strip():
                    yield "", len(raw)
                    continue
                try:
                    record = json.loads(raw)
                except ValueError as e:
                    raise PrepareError(f"{self.path}:{i}: not a JSON line ({e})") from None
                text = record.get("text") if isinstance(record, dict) else None
                if not isinstance(text, str):
                    raise PrepareError(f"{self.path}:{i}: no string field 'text'")
                yield text, len(raw)

    def sha256(self) -> str:
        h = hashlib.sha256()
        if self.path is None:
            h.update(self.read_bytes())
        else:
            with open(self.path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        return h.hexdigest()


def in_validation(document: str, val_fraction: float) -> bool:
    """Whether ``document`` belongs to the validation split (see the module's docstring)."""
    digest = hashlib.sha256(document.encode()).digest()
    return int.from_bytes(digest[:8], "big") < val_fraction * 2.0**64


def _documents(sources: Sequence[Source], progress: Optional[Progress], phase: str,
               total: int) -> Iterator[tuple[str, bool]]:
    done = 0
    for src in sources:
        for doc, used in src.documents():
            done += used
            if doc:
                yield doc, False
            if progress:
                progress(phase, done, total)
    if progress:
        progress(phase, total, total)


def train_tokenizer(sources: Sequence[Source], vocab_size: int, val_fraction: float,
                    progress: Optional[Progress] = None, total: int = 0) -> Tokenizer:
    """A byte-level BPE with ``vocab_size`` entries (``<|endoftext|>`` among them), trained on
    the training documents."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    docs = (d for d, _ in _documents(sources, progress, "training the tokenizer", total)
            if not in_validation(d, val_fraction))
    tok.train_from_iterator(docs, trainer=trainer)
    return tok


def _eos_id(tok: Tokenizer, eos: Optional[str]) -> tuple[Optional[str], Optional[int]]:
    if eos is not None:
        i = tok.token_to_id(eos)
        if i is None:
            raise PrepareError(f"--eos {eos!r} is not in the tokenizer's vocabulary")
        return eos, i
    for name in EOS_CANDIDATES:
        i = tok.token_to_id(name)
        if i is not None:
            return name, i
    return None, None


class _Writer:
    """Appends token ids to a temporary file, renamed into place by `close`."""

    def __init__(self, path: Path, dtype: type):
        self.path, self.dtype = path, dtype
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self.file = open(self.tmp, "wb")  # noqa: SIM115 (open across writes; close() closes)
        self.tokens = 0
        self.documents = 0

    def write(self, ids: list[int]) -> None:
        np.asarray(ids, dtype=self.dtype).tofile(self.file)
        self.tokens += len(ids)
        self.documents += 1

    def close(self) -> None:
        self.file.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


def prepare(inputs: Sequence[str], out: str | Path, *, vocab_size: Optional[int] = None,
            tokenizer: Optional[str | Path] = None, val_fraction: float = 0.05,
            eos: Optional[str] = None, progress: Optional[Progress] = None) -> dict[str, Any]:
    """Tokenise ``inputs`` into ``out`` (train.bin, val.bin, tokenizer.json, meta.json) with a
    BPE of ``vocab_size`` trained here, or with the ``tokenizer`` file; returns the meta."""
    if (vocab_size is None) == (tokenizer is None):
        raise PrepareError("give either a vocabulary size to train a BPE tokenizer "
                           "(--vocab-size N) or a tokenizer file (--tokenizer FILE)")
    if not 0 < val_fraction < 0.5:
        raise PrepareError(f"val fraction {val_fraction} is out of range (0 < f < 0.5)")
    if vocab_size is not None and not MIN_VOCAB <= vocab_size <= 2**32:
        raise PrepareError(f"vocabulary size {vocab_size} is out of range ({MIN_VOCAB} .. "
                           "2^32: the byte alphabet and the end-of-document token at least)")
    if not inputs:
        raise PrepareError("no input files")
    sources = [Source.of(name) for name in inputs]
    total = sum(s.size() for s in sources)
    folder = TokenDir(out)
    folder.root.mkdir(parents=True, exist_ok=True)
    folder.meta.unlink(missing_ok=True)  # the directory is incomplete until the new one

    if tokenizer is not None:
        from tokenizers import Tokenizer

        path = Path(tokenizer).expanduser()
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises its own exception types
            raise PrepareError(f"cannot read tokenizer {str(path)!r}: {e}") from None
        described = f"file {path}"
    else:
        assert vocab_size is not None
        tok = train_tokenizer(sources, vocab_size, val_fraction, progress, total)
        described = f"byte-level BPE trained on the training documents, vocab {vocab_size}"
    eos_name, eos_id = _eos_id(tok, eos)
    vocab = tok.get_vocab_size()
    dtype_name = "uint16" if vocab <= 2**16 else "uint32"
    dtype = np.uint16 if dtype_name == "uint16" else np.uint32

    tok_text = tok.to_str()
    tmp = folder.tokenizer.with_name(f".{folder.tokenizer.name}.tmp")
    tmp.write_text(tok_text)
    os.replace(tmp, folder.tokenizer)

    writers = {False: _Writer(folder.train, dtype), True: _Writer(folder.val, dtype)}
    try:
        batch: list[str] = []

        def flush() -> None:
            for doc, enc in zip(batch, tok.encode_batch(batch), strict=True):
                ids = enc.ids + ([eos_id] if eos_id is not None else [])
                writers[in_validation(doc, val_fraction)].write(ids)
            batch.clear()

        for doc, _ in _documents(sources, progress, "tokenising", total):
            batch.append(doc)
            if len(batch) >= BATCH_DOCUMENTS:
                flush()
        flush()
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    for w in writers.values():
        w.close()
    train, val = writers[False], writers[True]
    if not train.documents or not val.documents:
        empty = "validation" if not val.documents else "training"
        raise PrepareError(f"the {empty} split is empty ({train.documents + val.documents} "
                           "document(s)): give more documents (a text file's documents are its "
                           "paragraphs) or another val fraction")
    meta = {
        "format": FORMAT, "vocab_size": vocab, "dtype": dtype_name,
        "train_tokens": train.tokens, "val_tokens": val.tokens,
        "train_documents": train.documents, "val_documents": val.documents,
        "val_fraction": val_fraction, "split": SPLIT_RULE,
        "eos": eos_name, "eos_id": eos_id, "tokenizer": described,
        "tokenizer_sha256": hashlib.sha256(tok_text.encode()).hexdigest(),
        "sources": [{"input": s.name, "path": str(s.path.resolve()) if s.path else None,
                     "sha256": s.sha256()} for s in sources],
    }
    tmp = folder.meta.with_name(f".{folder.meta.name}.tmp")
    tmp.write_text(json.dumps(meta, indent=1) + "\n")
    os.replace(tmp, folder.meta)
    return meta
