"""`cpt data prepare`: text and JSONL into token files a spec reads with data: {tokens: DIR}."""

import json

import numpy as np
import pytest

from cp.data import DataConfig, TokenData, TokenDir
from tests.study_helpers import cpt, smoke_spec

pytest.importorskip("tokenizers", reason="tokenizers is an optional extra")

from cp.prepare import PrepareError, in_validation, prepare  # (needs tokenizers)

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven",
         "wizards", "quietly", "hex"]


def make_inputs(tmp_path, n=60):
    """n documents: half as paragraphs of a text file, half as JSONL records."""
    rng = np.random.default_rng(0)
    docs = [" ".join(rng.choice(WORDS, size=12)) + f" ({i})" for i in range(n)]
    text = tmp_path / "book.txt"
    text.write_text("\n\n".join(docs[: n // 2]) + "\n")
    jsonl = tmp_path / "web.jsonl"
    jsonl.write_text("".join(json.dumps({"text": d, "id": i}) + "\n"
                             for i, d in enumerate(docs[n // 2:])))
    return [str(text), str(jsonl)], docs


def split_docs(folder, tok, split):
    ids = np.fromfile(getattr(folder, split), dtype=np.uint16).tolist()
    eos = tok.token_to_id("<|endoftext|>")
    out, cur = [], []
    for i in ids:
        if i == eos:
            out.append(tok.decode(cur))
            cur = []
        else:
            cur.append(i)
    assert cur == []  # every document ends with the end-of-document token
    return out


def test_documents_are_tokenised_into_a_deterministic_split_with_a_meta(tmp_path):
    from tokenizers import Tokenizer

    inputs, docs = make_inputs(tmp_path)
    meta = prepare(inputs, tmp_path / "tok", vocab_size=300, val_fraction=0.2)
    folder = TokenDir(tmp_path / "tok")
    assert folder.problem() is None
    assert meta == json.loads(folder.meta.read_text())
    assert meta["vocab_size"] == 300 and meta["dtype"] == "uint16"
    tok = Tokenizer.from_file(str(folder.tokenizer))
    train, val = split_docs(folder, tok, "train"), split_docs(folder, tok, "val")
    assert train == [d for d in docs if not in_validation(d, 0.2)]   # input order kept,
    assert val == [d for d in docs if in_validation(d, 0.2)]         # text round-trips
    assert 0 < len(val) < len(train)
    assert meta["train_tokens"] == folder.train.stat().st_size // 2
    assert meta["val_documents"] == len(val)
    assert [s["input"] for s in meta["sources"]] == inputs
    assert all(len(s["sha256"]) == 64 for s in meta["sources"])

    again = prepare(inputs[::-1], tmp_path / "again", vocab_size=300, val_fraction=0.2)
    assert again["tokenizer_sha256"] == meta["tokenizer_sha256"]  # training is deterministic
    tok2 = Tokenizer.from_file(str(TokenDir(tmp_path / "again").tokenizer))
    assert sorted(split_docs(TokenDir(tmp_path / "again"), tok2, "val")) == sorted(val)


def test_a_users_tokenizer_gives_the_same_tokens_as_the_one_it_was_saved_from(tmp_path):
    inputs, _ = make_inputs(tmp_path)
    prepare(inputs, tmp_path / "a", vocab_size=300, val_fraction=0.2)
    meta = prepare(inputs, tmp_path / "b", tokenizer=tmp_path / "a" / "tokenizer.json",
                   val_fraction=0.2)
    assert meta["eos"] == "<|endoftext|>"
    for name in ("train.bin", "val.bin"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_a_vocabulary_beyond_uint16_is_written_as_uint32(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    inputs, _ = make_inputs(tmp_path)
    vocab = {w: 70_000 + i for i, w in enumerate(WORDS)}
    vocab.update({f"filler{i}": i for i in range(70_000)})
    vocab["[UNK]"] = 70_000 + len(WORDS)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "big.json"))
    meta = prepare(inputs, tmp_path / "tok", tokenizer=tmp_path / "big.json", val_fraction=0.2)
    assert meta["dtype"] == "uint32" and meta["eos"] is None
    data = TokenData(DataConfig(tokens=str(tmp_path / "tok")))
    assert data.vocab_size == len(vocab) and data.train.dtype == np.uint32
    assert int(data.train.max()) >= 70_000


def test_a_spec_reads_the_directory_and_its_vocabulary_from_meta(tmp_path):
    inputs, _ = make_inputs(tmp_path, n=200)
    prepare(inputs, tmp_path / "tok", vocab_size=320, val_fraction=0.2)
    spec = smoke_spec(data={"tokens": str(tmp_path / "tok")})
    run = spec.run_config("proxy")
    data = TokenData(run.data)
    assert data.vocab_size == 320
    x, _ = data.train_batch(0, 4, 8, seed=0)
    assert x.shape == (4, 8) and int(x.max()) < 320
    assert np.array_equal(np.asarray(data.val), np.fromfile(tmp_path / "tok" / "val.bin",
                                                             dtype=np.uint16))
    first = run.run_id()
    prepare(inputs, tmp_path / "tok", vocab_size=300, val_fraction=0.2)  # prepared anew
    assert run.run_id() != first  # the run id follows meta.json


def test_a_missing_directory_is_a_spec_problem_naming_the_key(tmp_path):
    from cp.schema import SpecError

    with pytest.raises(SpecError, match=r"data\.tokens: .*is not a directory"):
        smoke_spec(data={"tokens": str(tmp_path / "nowhere")})


def test_bad_inputs_are_user_errors_without_a_traceback(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"body": "no text"}\n')
    out = cpt("data", "prepare", str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "o"),
              "--vocab-size", "300")
    assert out.returncode == 2 and "bad.jsonl:2: no string field 'text'" in out.stderr
    assert "Traceback" not in out.stderr
    out = cpt("data", "prepare", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o"),
              "--vocab-size", "300")
    assert out.returncode == 2 and "neither a file nor a bundled corpus" in out.stderr
    (tmp_path / "one.txt").write_text("a single paragraph is a single document\n")
    with pytest.raises(PrepareError, match="split is empty"):
        prepare([str(tmp_path / "one.txt")], tmp_path / "o", vocab_size=300)
    assert TokenDir(tmp_path / "o").problem() is not None  # no meta: not a usable directory


def test_cpt_data_prepare_shows_progress_and_says_how_a_spec_reads_it(tmp_path):
    inputs, _ = make_inputs(tmp_path)
    out = cpt("data", "prepare", *inputs, "--out", str(tmp_path / "tok"), "--vocab-size",
              "300", "--val-fraction", "0.2")
    assert out.returncode == 0, out.stderr
    assert "tokenising" in out.stdout and "data: {tokens:" in out.stdout
    assert TokenDir(tmp_path / "tok").problem() is None
