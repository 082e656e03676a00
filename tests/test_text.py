"""Text: byte tokenizer, text sources, web-like corruptions, transformers (masking, meta-gradients)."""
import gzip
import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from drray.config import CorruptionSpec, load_config
from drray.data.corruption import CORRUPTIONS, apply_corruptions
from drray.data.examples import ExampleSet, text_examples, to_tensors
from drray.data.modality import TextModality
from drray.data.parquet import read_parquet, write_parquet
from drray.data.sources.text import document_sequences, wikitext_to_text
from drray.data.splits import build_splits
from drray.data.tokenizer import PAD, decode, encode, encode_batch, lengths
from drray.errors import ConfigError, DataError
from drray.meta.inner_optim import SGD, Adam
from drray.meta.metagrad import MIXFLOW_MODES, MetaProblem, meta_step
from drray.models import build_inner, build_rater
from drray.models.text import TransformerLM, TransformerRater
from tests.test_metagrad import outer_loss, params_of, relative_error

ROOT = Path(__file__).resolve().parents[1]
TEXT_KINDS = ["random_bytes", "mojibake", "shuffled_words", "markup_lines", "repeated_lines", "whitespace_runs"]
SAMPLE = ("It is a truth universally acknowledged, that a single man in possession\nof a good fortune, must be in "
          "want of a wife. However little known the feelings or views of such a man may be on his first entering "
          "a neighbourhood, this truth is so well fixed in the minds of the surrounding families.")


# ---- tokenizer ---------------------------------------------------------------------------------

def test_tokenizer_hand_worked_and_cut_at_a_character_boundary():
    assert encode("hé", 5).tolist() == [104, 195, 169, PAD, PAD]
    assert encode("héé", 4).tolist() == [104, 195, 169, PAD]  # the second é (2 bytes) does not fit
    assert encode("", 3).tolist() == [PAD] * 3 and decode(encode("", 3)) == ""


@pytest.mark.parametrize("text", ["plain ASCII", "Café ½ naïve — 日本語 🙂", "\x00\x07 control\tand\nlines", "ÿ" * 40])
def test_tokenizer_round_trips_and_cuts_to_a_valid_prefix(text):
    for length in (1, 7, 16, 200):
        tokens = encode(text, length)
        assert tokens.shape == (length,) and tokens.dtype == np.int16
        back = decode(tokens)
        assert text.startswith(back)  # a prefix of whole characters, never a broken one
        assert len(back.encode("utf-8")) <= length < len(back.encode("utf-8")) + 4 or back == text
        assert lengths(tokens[None])[0] == len(back.encode("utf-8"))
    assert decode(encode(text, 200)) == text


# ---- sources -----------------------------------------------------------------------------------

def test_wikitext_to_text_hand_worked():
    wikitext = ("{{Infobox|name={{nested}}}}\n'''Anarchism''' is a [[political philosophy]] that "
                "[[self-governance|self-governed]] societies&lt;ref&gt;Woodcock&lt;/ref&gt; adopt.\n"
                "[[File:A.jpg|thumb|A [[caption]]]]\n== History ==\nMore [http://x.org text].\n"
                "== References ==\n* a reference")
    assert wikitext_to_text(wikitext) == ("\nAnarchism is a political philosophy that self-governed societies adopt."
                                          "\n\n\nMore text.")


def test_documents_become_whole_word_sequences():
    document = "First paragraph has\nseveral words in it.\n\nTiny\n\n" + "word " * 30
    sequences = list(document_sequences(document, 24))
    assert sequences[:2] == ["First paragraph has", "several words in it."]  # \n is a word gap like a blank
    assert "Tiny" not in sequences  # shorter than a quarter of seq_len
    assert all(len(s.encode()) <= 24 for s in sequences) and sequences[2] == "word word word word word"


def test_text_source_reads_text_files_and_json_lines(tmp_path):
    (tmp_path / "book.txt").write_text("Words of a book, here.\n\nAnother paragraph of the same book.")
    records = [{"title": "A", "body": "A record's text is here."}, {"title": "B", "body": "A second record."}]
    with gzip.open(tmp_path / "wiki.jsonl.gz", "wt") as f:
        f.write("\n".join(json.dumps(r) for r in records) + "\n")
    cfg = load_config(None, ["data.source=text", f"data.dir={tmp_path}", "data.text_field=body", "data.seq_len=32",
                             "data.heldout_fraction=0.2", "data.test_fraction=0.2"])
    from drray.data.splits import DATA_SOURCES

    pool, test = DATA_SOURCES.get("text")(cfg.data)
    assert test is None and pool.rows.shape == (4, 32) and pool.rows.dtype == np.int16
    assert sorted(decode(row) for row in pool.rows) == sorted(
        ["Words of a book, here.", "Another paragraph of the same", "A record's text is here.", "A second record."])
    assert pool.num_classes == 1 and not pool.labels.any()
    with pytest.raises(DataError, match=r"wiki.jsonl.gz:1: no string field 'text'; set data.text_field") as info:
        DATA_SOURCES.get("text")(load_config(None, ["data.source=text", f"data.dir={tmp_path}"]).data)
    assert "\n" not in str(info.value)
    with pytest.raises(DataError, match="no files match; set data.pattern"):
        DATA_SOURCES.get("text")(load_config(None, ["data.source=text", f"data.dir={tmp_path}", "data.pattern='*.csv'"]).data)
    with pytest.raises(DataError, match="does not exist"):
        DATA_SOURCES.get("text")(load_config(None, ["data.source=text", f"data.dir={tmp_path / 'nope'}"]).data)
    # Half a surrogate pair, as scraped JSON often escapes it: one line naming the record, not a traceback.
    (tmp_path / "wiki.jsonl.gz").unlink()
    (tmp_path / "scraped.jsonl").write_text('{"body": "fine"}\n{"body": "emoji cut \\ud83d here"}\n')
    with pytest.raises(DataError, match=r"scraped.jsonl:2: field 'body' holds an unpaired surrogate") as info:
        DATA_SOURCES.get("text")(cfg.data)
    assert "\n" not in str(info.value)


def sample_examples(n=60, seq_len=64, seed=0) -> ExampleSet:
    words = SAMPLE.split()
    rng = np.random.default_rng(seed)
    texts = [" ".join(words[i:i + 12]) for i in rng.integers(0, len(words) - 12, n)]
    texts = [t.replace(" ", "\n", 1) if i % 2 else t for i, t in enumerate(texts)]  # some with two lines
    return text_examples(texts, seq_len, first_id=1000)


def test_text_parquet_round_trip_keeps_tokens_and_ground_truth(tmp_path):
    examples = apply_corruptions(sample_examples(), [CorruptionSpec(kind=k, fraction=0.1) for k in TEXT_KINDS], 0)
    write_parquet(examples, tmp_path / "t.parquet")
    back = read_parquet(tmp_path / "t.parquet", seq_len=64)
    assert np.array_equal(back.rows, examples.rows) and np.array_equal(back.ids, examples.ids)
    assert np.array_equal(back.corruption, examples.corruption) and np.array_equal(back.is_corrupted, examples.is_corrupted)
    x, y = to_tensors(back)
    assert x.dtype == torch.int64 and x.shape == (60, 64) and not y.any()
    # A row of under 2 bytes has no next byte to predict (its loss would be 0, the best there is).
    pq.write_table(pa.table({"id": pa.array([1, 2, 3], pa.int64()), "text": ["long enough", "a", ""]}),
                   tmp_path / "short.parquet")
    with pytest.raises(DataError) as info:
        read_parquet(tmp_path / "short.parquet", seq_len=64)
    assert "2 rows (the first: id 2) hold under 2 bytes of text cut to data.seq_len=64" in str(info.value)
    assert "\n" not in str(info.value)


# ---- corruptions -------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", TEXT_KINDS)
def test_each_text_corruption_changes_every_chosen_row_validly_and_reproducibly(kind):
    examples = sample_examples()
    spec = [CorruptionSpec(kind=kind, fraction=0.5)]
    out, again = apply_corruptions(examples, spec, 3), apply_corruptions(examples, spec, 3)
    rows = out.is_corrupted
    assert rows.sum() == 30 and set(out.corruption[rows]) == {kind}
    assert np.array_equal(out.rows, again.rows) and np.array_equal(out.corruption_level, again.corruption_level)
    assert np.array_equal(out.rows[~rows], examples.rows[~rows])
    for before, after in zip(examples.rows[rows], out.rows[rows]):
        assert not np.array_equal(before, after)
        after_bytes = after[after != PAD].astype(np.uint8).tobytes()
        after_bytes.decode("utf-8")  # strict: valid UTF-8, so it writes to Parquet as a string
        assert np.all(after[len(after_bytes):] == PAD)  # padding only at the end
    assert np.all((out.corruption_level[rows] > 0) & (out.corruption_level[rows] <= 1))


def corrupt_text(kind, text, seed=0, seq_len=4096):
    return CORRUPTIONS.get(kind).corrupt_text(text, np.random.default_rng(seed), seq_len)


def test_mojibake_is_utf8_read_as_latin1_and_undoable():
    garbled, _ = corrupt_text("mojibake", "don't -- café")
    assert garbled == "don\u00e2\u0080\u0099t \u00e2\u0080\u0094 caf\u00c3\u00a9"
    assert garbled.encode("latin-1").decode("utf-8") == "don\u2019t \u2014 café"  # the inverse repairs it


def test_shuffled_words_keeps_the_words_and_the_spacing():
    shuffled, level = corrupt_text("shuffled_words", SAMPLE)
    assert sorted(shuffled.split()) == sorted(SAMPLE.split()) and shuffled != SAMPLE and level > 0.5
    assert re.sub(r"\S+", "w", shuffled) == re.sub(r"\S+", "w", SAMPLE)


def test_markup_lines_insert_boilerplate_lines_and_keep_the_text():
    from drray.data.corruption.text import BOILERPLATE

    templates = [re.compile(re.sub(r"\\\{\w+\\\}", ".+", re.escape(t)) + "$") for t in BOILERPLATE]
    counts = []
    for seed in range(10):
        corrupted, level = corrupt_text("markup_lines", SAMPLE, seed)
        lines = corrupted.split("\n")
        added = [line for line in lines if line not in SAMPLE]
        counts.append(len(added))
        assert all(any(t.match(line) for t in templates) for line in added), added  # boilerplate, nothing else
        share = sum(len(line.encode("utf-8")) + 1 for line in added) / len(corrupted.encode("utf-8"))
        assert level == pytest.approx(share)  # the level is the inserted share of the bytes
        assert " ".join(line for line in lines if line in SAMPLE).split() == SAMPLE.split()
        cut, _ = corrupt_text("markup_lines", SAMPLE, seed, seq_len=128)
        added = [line for line in cut.split("\n") if line not in SAMPLE]
        assert any(line[:20] in decode(encode(cut, 128)) for line in added)  # early enough to survive the cut
    assert set(counts) <= {1, 2, 3} and len(set(counts)) > 1  # one to three lines, drawn per example


def test_repeated_lines_repeat_one_line_to_fill_the_sequence():
    for seed in range(5):
        repeated, level = corrupt_text("repeated_lines", SAMPLE, seed, seq_len=60)
        lines = repeated.split("\n")
        assert len(lines) >= 3 and len(set(lines)) == 1 and lines[0] in SAMPLE and level == 1.0
        assert len(lines[0].encode()) <= 20 and len(repeated.encode()) >= 60  # three copies fit in 60 bytes


def test_whitespace_runs_only_add_blanks_or_control_characters():
    noisy, level = corrupt_text("whitespace_runs", SAMPLE)
    assert re.sub(r"[\s\x00-\x1f\x7f]+", " ", noisy) == re.sub(r"\s+", " ", SAMPLE)
    assert re.search(r"[ \t\n]{5,}|[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]{2,}", noisy) and 0 < level < 1


def test_random_bytes_replace_a_run_with_garbage():
    garbled, level = corrupt_text("random_bytes", SAMPLE)
    assert 0.3 <= level <= 1.0 and garbled != SAMPLE
    kept = len(SAMPLE) - round(level * len(SAMPLE))
    assert sum(a == b for a, b in zip(garbled, SAMPLE)) + sum(a == b for a, b in zip(garbled[::-1], SAMPLE[::-1])) >= kept


def test_corruption_for_the_other_modality_is_a_one_line_error():
    with pytest.raises(DataError, match=r"'pixel_noise' corrupts image data but this data set is text; use one of: "
                                        r"markup_lines, mojibake"):
        apply_corruptions(sample_examples(), [CorruptionSpec(kind="pixel_noise", fraction=0.1)], 0)
    images = ExampleSet.clean(np.arange(10), np.zeros((10, 4, 4), np.uint8), np.arange(10) % 2, 2)
    with pytest.raises(DataError, match="'mojibake' corrupts text data but this data set is image; use one of: label_flip"):
        apply_corruptions(images, [CorruptionSpec(kind="mojibake", fraction=0.1)], 0)
    with pytest.raises(ConfigError, match="rater.arch=cnn is a model for image data but the data is text"):
        build_rater("cnn", (32,), 1)
    with pytest.raises(ConfigError, match="inner.arch=transformer is a model for text data but the data is image"):
        build_inner("transformer", (8, 8), 10)


# ---- models ------------------------------------------------------------------------------------

def test_padding_never_changes_a_score_or_a_loss():
    torch.manual_seed(0)
    rater, lm = TransformerRater(48, 16, 2, 2), TransformerLM(48, 16, 2, 2)
    texts = ["short", "a somewhat longer text", "x" * 30, "é and more"]
    long, short = torch.from_numpy(encode_batch(texts, 48)).long(), torch.from_numpy(encode_batch(texts, 31)).long()
    with torch.no_grad():
        assert torch.allclose(rater(long), rater(short), atol=1e-6)
        assert torch.allclose(rater(long[1:2]), rater(long)[1:2], atol=1e-6)  # nor does the rest of the batch
        lm_long, lm_short = (TextModality.losses(lm(x), x, None) for x in (long, short))
        assert torch.allclose(lm_long, lm_short, atol=1e-6)
        changed = long.clone()
        changed[0, 2] = ord("X")  # a real token does change the score: the equality above is not vacuous
        assert (rater(changed)[0] - rater(long)[0]).abs() > 1e-4


def test_lm_loss_is_the_mean_next_byte_cross_entropy_of_real_tokens():
    tokens = torch.from_numpy(encode_batch(["abcd", "ab"], 6)).long()
    logits = torch.randn(2, 6, 256, dtype=torch.float64)
    expected = [np.mean([-torch.log_softmax(logits[0, t], -1)[tokens[0, t + 1]].item() for t in range(3)]),
                -torch.log_softmax(logits[1, 0], -1)[tokens[1, 1]].item()]
    assert TextModality.losses(logits, tokens, None).tolist() == pytest.approx(expected, rel=1e-12)


def text_problem(optimizer, dtype=torch.float64, seq_len=8):
    torch.manual_seed(0)
    inner, rater = TransformerLM(seq_len, 8, 1, 2).to(dtype), TransformerRater(seq_len, 8, 1, 2).to(dtype)
    return MetaProblem(inner, rater, optimizer, temperature=0.5, modality=TextModality), inner, rater


def text_batches(n, size, seq_len, seed):
    rng = np.random.default_rng(seed)
    texts = lambda: ["".join(chr(c) for c in rng.integers(97, 123, rng.integers(3, seq_len + 1)))  # noqa: E731
                     for _ in range(size)]  # varied lengths, so padding and masks are exercised
    return [(torch.from_numpy(encode_batch(texts(), seq_len)).long(), torch.zeros(size, dtype=torch.long))
            for _ in range(n)]


@pytest.mark.parametrize("method", ["backprop", "mixflow", "mixflow-rr"])
def test_meta_gradient_through_attention_matches_finite_differences_float64(method):
    optimizer = Adam(lr=0.05)
    problem, inner, rater = text_problem(optimizer)
    if method == "mixflow-rr":  # the double-backward backward instead of the JVP
        method, problem.mixflow_mode = "mixflow", "reverse_over_reverse"
    theta, eta = params_of(inner), params_of(rater)
    state = {"count": 3, "m": tuple(0.01 * torch.randn_like(t) for t in theta),
             "v": tuple(1e-3 * torch.rand_like(t) for t in theta)}
    inner_b, outer_b = text_batches(2, 5, 8, seed=1), text_batches(1, 6, 8, seed=2)[0]
    result = meta_step(problem, method, theta, state, eta, inner_b, outer_b)
    gen, eps = torch.Generator().manual_seed(3), 1e-6
    for _ in range(2):
        v = tuple(torch.randn(e.shape, generator=gen, dtype=e.dtype) for e in eta)
        shifted = lambda sign: tuple(e + sign * eps * d for e, d in zip(eta, v))  # noqa: E731
        fd = (outer_loss(problem, theta, state, shifted(1), inner_b, outer_b)
              - outer_loss(problem, theta, state, shifted(-1), inner_b, outer_b)) / (2 * eps)
        analytic = sum((g * d).sum() for g, d in zip(result.grad, v)).item()
        assert analytic == pytest.approx(fd, rel=1e-6, abs=1e-10)


@pytest.mark.parametrize("opt", [SGD(lr=0.1, momentum=0.9), Adam(lr=1e-3)], ids=["sgd", "adam"])
def test_methods_agree_float32_on_the_registered_transformers(opt):
    torch.manual_seed(0)
    inner, rater = build_inner("transformer_tiny", (32,), 1), build_rater("transformer_tiny", (32,), 1)
    problem = MetaProblem(inner, rater, opt, temperature=0.3, modality=TextModality)
    theta, eta = params_of(inner), params_of(rater)
    inner_b, outer_b = text_batches(2, 8, 32, seed=1), text_batches(1, 8, 32, seed=2)[0]
    ref = meta_step(problem, "backprop", theta, opt.init(theta), eta, inner_b, outer_b)
    for mode in MIXFLOW_MODES:
        problem.mixflow_mode = mode
        mix = meta_step(problem, "mixflow", theta, opt.init(theta), eta, inner_b, outer_b)
        assert relative_error(mix.grad, ref.grad) <= 1e-4, mode
        assert relative_error(mix.theta, ref.theta) <= 1e-6, mode
    assert sum(g.abs().sum() for g in ref.grad) > 0


# ---- the meta-training job on text -------------------------------------------------------------

def test_meta_train_runs_on_text_with_the_tiny_config(tmp_path):
    from drray.train import checkpoint
    from drray.train.loop import format_report, meta_train

    cfg = load_config(ROOT / "configs" / "text-tiny.yaml", [f"run.out={tmp_path / 'run'}", "run.backend=local",
                                                            f"data.dir={ROOT.parent / 'shared' / 'data' / 'text'}"])
    splits = build_splits(cfg.data, cfg.run.seed)
    assert splits.row_shape == (32,) and splits.train.rows.dtype == np.int16
    assert not splits.heldout.is_corrupted.any() and splits.probe.is_corrupted.any()
    summary = meta_train(cfg, splits=splits)
    assert set(summary.auroc_by_kind) == {"random_bytes", "shuffled_words"}
    assert set(summary.mean_score_by_kind) == {"clean", "random_bytes", "shuffled_words"}
    assert "random_bytes" in format_report(summary) and "mean score" in format_report(summary)
    with pytest.raises(ConfigError, match="rater.arch=mlp is a model for image data but the data is text"):
        meta_train(cfg.model_copy(update={"rater": cfg.rater.model_copy(update={"arch": "mlp"})}),
                   splits=splits, overwrite=True)
    rater, info = checkpoint.load_rater(tmp_path / "run")
    assert info["arch"] == "transformer_tiny" and info["row_shape"] == [32]
    x, y = to_tensors(splits.probe)
    with torch.no_grad():
        assert np.allclose(rater(x, y).numpy(), summary_scores(cfg, splits, tmp_path / "run"), atol=1e-6)


def summary_scores(cfg, splits, out):
    from drray.train import checkpoint
    from drray.train.loop import Prober

    return Prober(cfg, splits).scores(checkpoint.load_state(out)["population"]["meta"]["params"])


def test_prepared_text_parquet_is_the_same_data_as_the_files(tmp_path):
    """jobs.prepare writes a text source as Parquet (`text` column); reading it back as
    data.source=parquet gives the same token rows, corruption and ground truth."""
    from jobs.prepare import main as prepare

    text_dir = ROOT.parent / "shared" / "data" / "text"
    args = ["--source", "text", "--dir", str(text_dir), "--pattern", "austen-persuasion.txt.gz", "--seq-len", "32",
            "--max-train", "300", "--corrupt", "mojibake:0.1,markup_lines:0.1", "--shards", "2"]
    assert prepare(args + ["--output", str(tmp_path / "prepared")]) == 0
    files = load_config(None, ["data.source=text", f"data.dir={text_dir}", "data.pattern=austen-persuasion.txt.gz",
                               "data.seq_len=32", "data.max_train=300",
                               "data.corruption=[{kind: mojibake, fraction: 0.1}, {kind: markup_lines, fraction: 0.1}]"])
    parquet = load_config(None, ["data.source=parquet", f"data.dir={tmp_path / 'prepared'}", "data.seq_len=32"])
    want, got = build_splits(files.data, 0), build_splits(parquet.data, 0)
    for name in ("train", "heldout", "test"):
        a, b = getattr(want, name), getattr(got, name)
        assert np.array_equal(a.rows, b.rows) and np.array_equal(a.ids, b.ids)
        assert np.array_equal(a.corruption, b.corruption) and np.array_equal(a.is_corrupted, b.is_corrupted)
    assert got.row_shape == (32,) and got.train.is_corrupted.sum() == 60
