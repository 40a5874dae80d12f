"""Tokenizers: exact round trips, the shared end-of-text token, BPE training and reloading."""

from __future__ import annotations

import pytest

from mosaics_lab.data import DataError
from mosaics_lab.data.stories import generate_stories
from mosaics_lab.data.tokenizers import EOT_TOKEN, BPETokenizer, ByteTokenizer

UNICODE_TEXT = "Zoë met Björn at the café ☃ 😀 日本語\ttabs\nnew lines and a literal <|eot|> marker."


def test_byte_tokenizer_round_trips_unicode_text():
    tok = ByteTokenizer()
    ids = tok.encode(UNICODE_TEXT)
    assert ids == list(UNICODE_TEXT.encode("utf-8"))
    assert tok.decode(ids) == UNICODE_TEXT
    assert (tok.vocab_size, tok.eot_id) == (257, 256)
    # Literal "<|eot|>" in a document is text, never the end-of-text id.
    assert tok.eot_id not in ids


def test_byte_tokenizer_decodes_end_of_text_between_documents():
    tok = ByteTokenizer()
    ids = [*tok.encode("première"), tok.eot_id, *tok.encode("second")]
    assert tok.decode(ids) == f"première{EOT_TOKEN}second"


def test_byte_tokenizer_decodes_a_cut_multibyte_character_without_raising():
    tok = ByteTokenizer()
    assert tok.decode(tok.encode("a😀")[:3]) == "a\ufffd"


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return list(generate_stories(num_chars=40_000, seed=0))


def test_bpe_trains_round_trips_and_compresses(corpus):
    tok = BPETokenizer.train(corpus, vocab_size=400)
    assert tok.vocab_size == 400
    assert tok.decode([tok.eot_id]) == EOT_TOKEN
    for text in (corpus[0], UNICODE_TEXT):  # unseen characters fall back to byte symbols
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert tok.eot_id not in ids
    # Trained merges pay off on in-domain text: fewer tokens than bytes.
    assert len(tok.encode(corpus[0])) < 0.6 * len(corpus[0].encode("utf-8"))


def test_bpe_saves_and_reloads_identically(corpus, tmp_path):
    tok = BPETokenizer.train(corpus, vocab_size=350)
    path = tok.save(tmp_path)
    assert path.name == "tokenizer.json"
    again = BPETokenizer.from_file(path)
    assert again.to_str() == tok.to_str()
    assert again.eot_id == tok.eot_id and again.vocab_size == tok.vocab_size
    assert again.encode(UNICODE_TEXT) == tok.encode(UNICODE_TEXT)
    assert again.encode_batch(corpus[:3]) == [tok.encode(t) for t in corpus[:3]]


def test_bpe_training_is_deterministic(corpus):
    assert BPETokenizer.train(corpus, 300).to_str() == BPETokenizer.train(corpus, 300).to_str()


def test_bpe_rejects_a_vocab_without_room_for_merges(corpus):
    with pytest.raises(DataError, match="vocab size must be >= 258"):
        BPETokenizer.train(corpus, vocab_size=200)
