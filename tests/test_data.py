"""Readers on the real corpora and on malformed files; vocabularies and batches."""
import pytest
import torch

from ebm_ext.tagging import data as D
from chain_cases import DATA, TWEET_TAGSET, tweet_categories


def test_tweet_corpus_counts():
    train = D.read_tweets(DATA / "twpos" / "oct27.train")
    assert len(train) == 1000 and sum(len(t) for t, _ in train) == 14619
    tags, cats = D.read_tagset(DATA / "twpos" / "tagset.tsv")
    assert len(tags) == 25 and len(set(cats)) == 5
    assert {t for _, ts in train for t in ts} == set(tags)


def test_the_tests_constant_tagset_is_the_corpus_tagset():
    """The op tests use chain_cases.TWEET_TAGSET instead of reading the data: it must be the
    corpus's tag set, in its order, with its categories."""
    tags, cats = D.read_tagset(DATA / "twpos" / "tagset.tsv")
    assert tags == tweet_categories()[0]
    assert cats == [c for c, group in TWEET_TAGSET.items() for _ in group]


def test_conllu_counts_skip_multiword_and_empty_nodes():
    dev = D.read_conllu(DATA / "ud_ewt" / "en_ewt-ud-dev.conllu")
    assert len(dev) == 2001 and sum(len(t) for t, _ in dev) == 25147
    assert {t for _, ts in dev for t in ts} == set(D.UPOS)


@pytest.mark.parametrize("text,line,message", [
    ("a\tN\nb N\n\n", 2, "expected 'token<TAB>tag'"),
    ("a\tN\n\nb\t\n", 3, "expected 'token<TAB>tag'"),
    ("a\tN\tX\n", 1, "expected 'token<TAB>tag'"),
])
def test_malformed_tweets_name_the_line(tmp_path, text, line, message):
    path = tmp_path / "bad.tsv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=rf"bad.tsv:{line}: {message}"):
        D.read_tweets(path)


GOOD = "# text = a b\n1\ta\ta\tDET\tDT\t_\t2\tdet\t_\t_\n2\tb\tb\tNOUN\tNN\t_\t0\troot\t_\t_\n"


@pytest.mark.parametrize("text,line,message", [
    (GOOD + "\n" + "1\tc\tc\tNOUN\tNN\t_\t0\n", 5, "a CoNLL-U word line has 10 tab-separated columns, got 7"),
    (GOOD + "\n# c\n1\tc\tc\t_\tNN\t_\t0\troot\t_\t_\n", 6, "word 1 has no upos tag"),
    (GOOD + "\n" + "x\tc\tc\tNOUN\tNN\t_\t0\troot\t_\t_\n", 5, "not valid CoNLL-U"),
])
def test_malformed_conllu_name_the_line(tmp_path, text, line, message):
    path = tmp_path / "bad.conllu"
    path.write_text(text, encoding="utf-8")
    assert D.read_conllu(_good(tmp_path)) == [(["a", "b"], ["DET", "NOUN"])]
    with pytest.raises(ValueError, match=rf"bad.conllu:{line}: .*{message}"):
        D.read_conllu(path)


def _good(tmp_path):
    path = tmp_path / "good.conllu"
    path.write_text(GOOD + "\n", encoding="utf-8")
    return path


def test_multiword_tokens_are_skipped(tmp_path):
    text = ("1-2\tdon't\t_\t_\t_\t_\t_\t_\t_\t_\n1\tdo\tdo\tAUX\tVBP\t_\t0\troot\t_\t_\n"
            "2\tn't\tnot\tPART\tRB\t_\t1\tadvmod\t_\t_\n2.1\tx\tx\t_\t_\t_\t_\t_\t_\t_\n\n")
    path = tmp_path / "mw.conllu"
    path.write_text(text, encoding="utf-8")
    assert D.read_conllu(path) == [(["do", "n't"], ["AUX", "PART"])]


def test_vocab_unknown_words_and_batches():
    sentences = [(["Hello", "@bob", "2day"], ["!", "@", "R"]), (["hi"], ["!"])]
    vocabs = D.Vocabularies.build(sentences, ["!", "@", "R"])
    batch = D.encode(sentences + [(["unseen", "HELLO"], ["!", "!"])], vocabs)
    assert batch.words.shape == (3, 3) and batch.chars.shape[:2] == (3, 3)
    assert batch.lengths.tolist() == [3, 1, 2]
    assert batch.tags[1].tolist() == [0, -1, -1]
    assert batch.words[2, 0].item() == vocabs.words[D.UNK] == 1
    assert batch.words[2, 1] == batch.words[0, 0]  # words are looked up lowercased
    assert D.word_key("2day") == "0day"
    with pytest.raises(ValueError, match="unknown tag 'Q'"):
        D.encode([(["x"], ["Q"])], vocabs)
    restored = D.Vocabularies.from_state(vocabs.state())
    assert torch.equal(D.encode(sentences, restored).words, D.encode(sentences, vocabs).words)
