"""The tagger modules: the feature network computes only real tokens (each sentence alone gives
the same energies as in a padded batch), the character convolution is nn.Conv1d's, dropout,
standardised unary energies, and the ensemble's decoding is the exact argmin of its members'
mean energy (brute force)."""
import itertools
import math

import pytest
import torch

from ebm_ext.tagging import data as D
from ebm_ext import chain_energy, packed_order
from ebm_ext.nn import CharBiLSTM, CharCNN, Dropout
from ebm_ext.tagging import EnergyTagger, FeatureNetwork, TaggerEnsemble

# The tweet tagset's 25 tags, in tagset.tsv's order: these unit tests need no data files.
TAGS = ['N', 'O', '^', 'S', 'Z', 'L', 'M', 'V', 'A', 'R', '!', 'D', 'P', '&', 'T', 'X', 'Y', '#', '@', '~', 'U', 'E', '$', ',', 'G']

SENTENCES = [(["lol", "@bob", "this", "is", "gr8", "!"], ["!", "@", "O", "V", "A", ","]),
             (["Hello"], ["!"]),
             (["http://t.co/x", "#win", "so", "good"], ["U", "#", "R", "A"])]


def small_network(unary_scale=0.0, seed=0):
    tags = TAGS
    vocabs = D.Vocabularies.build(SENTENCES, tags)
    torch.manual_seed(seed)
    net = FeatureNetwork(len(vocabs.words), len(vocabs.chars), len(tags),
                         num_suffixes=len(vocabs.suffixes), num_prefixes=len(vocabs.prefixes),
                         word_dim=8, char_filters=6, affix_dim=4, shape_dim=3, hidden=5,
                         unary_scale=unary_scale).double().eval()
    return net, vocabs


def test_each_sentence_alone_gets_its_energies_in_the_batch():
    net, vocabs = small_network()
    batch = D.encode(SENTENCES, vocabs)
    unary = net(batch)
    for b, sentence in enumerate(SENTENCES):
        alone = net(D.encode([sentence], vocabs))[0]
        L = len(sentence[0])
        torch.testing.assert_close(unary[b, :L], alone)
        assert torch.equal(unary[b, L:], torch.zeros_like(unary[b, L:]))


def test_gradients_reach_every_parameter_but_padding():
    net, vocabs = small_network()
    net.train()
    net(D.encode(SENTENCES, vocabs)).sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert torch.equal(net.words.weight.grad[0], torch.zeros_like(net.words.weight.grad[0]))


def test_char_cnn_is_conv1d_and_max_pooling():
    torch.manual_seed(0)
    m = CharCNN(50, 7, 11, width=3).double()
    chars = torch.randint(1, 50, (9, 6))
    chars[:, 4:] = 0
    chars[2, 1:] = 0
    x = m.embed(chars).transpose(1, 2)
    want = m.conv(x).masked_fill((chars == 0)[:, None, :], float("-inf")).amax(2)
    torch.testing.assert_close(m(chars), want)
    assert m(chars.view(3, 3, 6)).shape == (3, 3, 11)


def test_dropout_keeps_the_expectation():
    d = Dropout(0.25)
    x = torch.ones(200_000, dtype=torch.float64)
    y = d(x)
    assert set(torch.unique(y).tolist()) == {0.0, 1 / 0.75}
    assert abs(y.mean().item() - 1) < 0.01
    assert torch.equal(d.eval()(x), x)
    assert torch.equal(Dropout(1.0)(x), torch.zeros_like(x))


def test_unary_scale_standardises_the_energies_over_the_tags():
    net, vocabs = small_network(unary_scale=2.0)
    batch = D.encode(SENTENCES, vocabs)
    unary = net(batch)
    valid = torch.arange(unary.shape[1])[None, :] < batch.lengths[:, None]
    u = unary[valid]
    torch.testing.assert_close(u.mean(-1), torch.zeros(len(u), dtype=u.dtype))
    torch.testing.assert_close(u.var(-1, unbiased=False), torch.full((len(u),), 4.0, dtype=u.dtype),
                               atol=1e-3, rtol=1e-3)


def tagger(criterion, seed):
    net, vocabs = small_network(seed=seed)
    model = EnergyTagger(net, net.out.out_features, criterion).double().eval()
    with torch.no_grad():
        for p in model.chain.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(seed + 10)))
    return model, vocabs


def test_ensemble_decodes_the_argmin_of_the_mean_energy():
    members = [tagger("crf_nll", seed)[0] for seed in range(3)]
    _, vocabs = tagger("crf_nll", 0)
    ensemble = TaggerEnsemble(members)
    sentence = SENTENCES[2]
    batch = D.encode([sentence], vocabs)
    K, L = members[0].chain.trans.shape[0], len(sentence[0])
    paths = torch.tensor(list(itertools.product(range(K), repeat=L)))   # all K^L tag sequences
    with torch.no_grad():
        mean = sum(chain_energy(m.features(batch).expand(len(paths), -1, -1), m.chain.trans, paths,
                                None, m.chain.start, m.chain.end) for m in members) / len(members)
    assert torch.equal(ensemble.predict(batch)[0], paths[mean.argmin()])


def test_ensemble_of_one_is_the_tagger_and_local_members_decode_locally():
    model, vocabs = tagger("perceptron", 0)
    batch = D.encode(SENTENCES, vocabs)
    assert torch.equal(TaggerEnsemble([model]).predict(batch), model.predict(batch))
    local = [tagger("token_nll", seed)[0] for seed in range(2)]
    unary = (local[0].features(batch) + local[1].features(batch)) / 2
    want = torch.where(torch.arange(unary.shape[1])[None] < batch.lengths[:, None],
                       unary.argmin(-1), -1)
    assert torch.equal(TaggerEnsemble(local).predict(batch), want)
    with pytest.raises(ValueError, match="all chain energies or all feed-forward"):
        TaggerEnsemble([model, local[0]])
    with pytest.raises(ValueError, match="at least one member"):
        TaggerEnsemble([])


def test_distillation_adds_the_exact_kl_from_the_teacher():
    student, vocabs = tagger("crf_nll", 0)
    teacher = TaggerEnsemble([tagger("crf_nll", seed)[0] for seed in (1, 2)])
    batch = D.encode([SENTENCES[2]], vocabs)
    K, L = student.chain.trans.shape[0], len(SENTENCES[2][0])
    paths = torch.tensor(list(itertools.product(range(K), repeat=L)))   # all K^L tag sequences

    def log_p(unary, trans, start, end):   # log p(y) of every path, by brute force
        return (-chain_energy(unary.expand(len(paths), -1, -1), trans, paths, None, start,
                              end)).log_softmax(0)

    with torch.no_grad():
        t = teacher.energies(batch)
        log_q, log_s = log_p(*t), log_p(*student.energies(batch))
        kl = (log_q.exp() * (log_q - log_s)).sum()
        criterion = student.loss(batch)
        assert kl > 0.1
        for w in (0.0, 0.3, 1.0):
            torch.testing.assert_close(student.loss(batch, t, w), (1 - w) * criterion + w * kl)
    # Its own energies as the teacher: KL 0, and no gradient from the KL term.
    own = tuple(x.detach() for x in student.energies(batch))
    loss = student.loss(batch, own, 1.0)
    loss.backward()
    assert abs(loss.item()) < 1e-9
    assert max(float(p.grad.abs().max()) for p in student.parameters() if p.grad is not None) < 1e-9
    local, _ = tagger("token_nll", 0)
    with pytest.raises(ValueError, match="distillation needs a chain criterion"):
        local.loss(batch, t, 0.5)


def test_adversarial_training_adds_the_loss_at_inputs_moved_up_the_gradient():
    vocabs = D.Vocabularies.build(SENTENCES, TAGS)
    torch.manual_seed(0)
    net = FeatureNetwork(len(vocabs.words), len(vocabs.chars), len(TAGS),
                         num_suffixes=len(vocabs.suffixes), num_prefixes=len(vocabs.prefixes),
                         word_dim=8, char_filters=6, affix_dim=4, shape_dim=3, hidden=5,
                         dropout=0.0, word_dropout=0.0).double()
    eps = 0.3
    model = EnergyTagger(net, len(TAGS), "crf_nll", adversarial=eps).double().train()
    batch = D.encode(SENTENCES, vocabs)
    c = model.chain

    def criterion(unary):
        return model.spec.loss(unary, (c.trans, c.start, c.end), batch.tags, batch.lengths,
                               model.margin, model.cost)

    # The perturbation by hand, one sentence at a time: eps * |x_s| * g_s / |g_s|.
    x, packing = net.inputs(batch)
    clean = criterion(net.energies_of(x, packing))
    (g,) = torch.autograd.grad(clean, x, retain_graph=True)
    r = torch.zeros_like(x)
    for b in range(len(SENTENCES)):
        mine = packing.rows == b
        r[mine] = eps * x[mine].detach().norm() * g[mine] / g[mine].norm()
    moved = criterion(net.energies_of(x + r, packing))
    loss = model.loss(batch)
    torch.testing.assert_close(loss, clean + moved)
    assert moved > clean  # the move goes up the loss
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters()
               if n != "features.shapes.weight")
    with torch.no_grad():
        torch.testing.assert_close(model.eval().loss(batch), clean)  # training only
    for bad in (-0.1, math.inf, math.nan):
        with pytest.raises(ValueError, match="adversarial must be a finite number >= 0"):
            EnergyTagger(net, len(TAGS), "crf_nll", adversarial=bad)


def test_masked_words_hide_the_word_and_name_it_from_context():
    from ebm_ext.tagging.pretrain import MaskedWords, mask_words
    net, vocabs = small_network()
    batch = D.encode(SENTENCES, vocabs)
    hidden, chosen = mask_words(batch, rate=0.5, generator=torch.Generator().manual_seed(3))
    real = torch.arange(batch.words.shape[1]) < batch.lengths[:, None]
    assert chosen.any() and not (chosen & ~real).any()
    assert torch.equal(hidden.words, batch.words.masked_fill(chosen, 1))
    for name in ("suffixes", "prefixes"):
        assert torch.equal(getattr(hidden, name), getattr(batch, name).masked_fill(chosen, 1))
    assert torch.equal(hidden.shapes, batch.shapes)
    assert (hidden.chars[chosen][:, 0] == 1).all() and (hidden.chars[chosen][:, 1:] == 0).all()
    assert torch.equal(hidden.chars[~chosen], batch.chars[~chosen])
    # Nothing of a hidden token's own word reaches the network: another word there, same input.
    b, t = (int(i) for i in chosen.nonzero()[0])
    other = D.Batch(batch.words.clone(), batch.chars.clone(), batch.suffixes.clone(),
                    batch.prefixes.clone(), batch.shapes, batch.lengths, batch.tags)
    for x in (other.words, other.suffixes, other.prefixes):
        x[b, t] = 2 if int(x[b, t]) != 2 else 3
    other.chars[b, t] = 4
    again, _ = mask_words(other, rate=0.5, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(getattr(hidden, n), getattr(again, n))
               for n in ("words", "chars", "suffixes", "prefixes"))
    # The loss: cross-entropy of each hidden word from the state at its position.
    task = MaskedWords(net, len(vocabs.words)).double()
    loss = task(batch, torch.Generator().manual_seed(3))
    hidden, chosen = mask_words(batch, generator=torch.Generator().manual_seed(3))
    h, (rows, steps) = net.encode(hidden)
    pick = chosen[rows, steps]
    want = torch.nn.functional.cross_entropy(task.head(h[pick]),
                                             batch.words[rows[pick], steps[pick]])
    torch.testing.assert_close(loss, want)
    loss.backward()
    assert net.words.weight.grad.abs().sum() > 0 and task.head.weight.grad.abs().sum() > 0


def test_char_bilstm_is_the_final_states_of_an_lstm_over_each_word():
    torch.manual_seed(0)
    m = CharBiLSTM(20, 5, 7).double()
    chars = torch.tensor([[3, 4, 5, 0], [6, 0, 0, 0], [0, 0, 0, 0], [7, 8, 9, 10]])
    out = m(chars)
    lstm = torch.nn.LSTM(5, 7, bidirectional=True, batch_first=True).double()
    with torch.no_grad():
        for suffix, d in (("", 0), ("_reverse", 1)):
            getattr(lstm, f"weight_ih_l0{suffix}").copy_(m.lstm.weight_ih[d])
            getattr(lstm, f"weight_hh_l0{suffix}").copy_(m.lstm.weight_hh[d])
            getattr(lstm, f"bias_ih_l0{suffix}").copy_(m.lstm.bias[d])
            getattr(lstm, f"bias_hh_l0{suffix}").zero_()
    for w, L in enumerate((chars != 0).sum(1).tolist()):
        if L == 0:
            assert torch.equal(out[w], torch.zeros_like(out[w]))
            continue
        _, (h, _) = lstm(m.embed(chars[w:w + 1, :L]))
        torch.testing.assert_close(out[w], torch.cat([h[0, 0], h[1, 0]]))


def test_rare_words_are_read_as_unknown_by_their_count():
    net, vocabs = small_network()
    counts = torch.tensor(vocabs.word_counts)
    assert counts[2:].min() >= 1 and counts[:2].sum() == 0  # <pad>, <unk>
    rare = FeatureNetwork(len(vocabs.words), len(vocabs.chars), 25, word_counts=vocabs.word_counts,
                          unk_alpha=0.5, word_dropout=0.0)
    torch.testing.assert_close(rare.rare_word_dropout[2:], 0.5 / (0.5 + counts[2:].float()))
    with pytest.raises(ValueError, match="needs the training count"):
        FeatureNetwork(len(vocabs.words), len(vocabs.chars), 25, unk_alpha=0.5)


@pytest.mark.parametrize("options", [{"layers": 2}, {"char_model": "lstm"}, {"char_model": "both"}])
def test_feature_network_variants_keep_sentences_apart(options):
    tags = TAGS
    vocabs = D.Vocabularies.build(SENTENCES, tags)
    torch.manual_seed(0)
    net = FeatureNetwork(len(vocabs.words), len(vocabs.chars), len(tags),
                         num_suffixes=len(vocabs.suffixes), num_prefixes=len(vocabs.prefixes),
                         word_dim=8, char_filters=6, hidden=5, **options).double().eval()
    unary = net(D.encode(SENTENCES, vocabs))
    for b, sentence in enumerate(SENTENCES):
        torch.testing.assert_close(unary[b, :len(sentence[0])], net(D.encode([sentence], vocabs))[0])
    with pytest.raises(ValueError, match="char_model must be 'cnn', 'lstm' or 'both'"):
        FeatureNetwork(10, 10, 3, char_model="gru")


def test_tag_dictionary_counts_and_leaves_a_training_token_out():
    """The tag-dictionary feature is log(1 + count) of each tag seen with the word in training;
    in training mode a token's own tag is not counted, so a word seen once looks unseen."""
    tags = TAGS
    vocabs = D.Vocabularies.build(SENTENCES, tags)
    K = len(tags)
    counts = torch.tensor(vocabs.tag_counts, dtype=torch.float32)
    assert counts.shape == (len(vocabs.words), K)
    for tokens, labels in SENTENCES:
        for token, label in zip(tokens, labels):
            assert counts[vocabs.words[D.word_key(token)], tags.index(label)] >= 1
    assert counts.sum() == sum(len(t) for t, _ in SENTENCES)  # every token counted once
    torch.manual_seed(0)
    net = FeatureNetwork(len(vocabs.words), len(vocabs.chars), K, num_suffixes=len(vocabs.suffixes),
                         num_prefixes=len(vocabs.prefixes), word_dim=8, char_filters=6, hidden=5,
                         word_dropout=0.0, dropout=0.0, tag_dict=1, tag_counts=vocabs.tag_counts)
    seen = {}
    net.lstm.register_forward_pre_hook(lambda _, args: seen.update(x=args[0][:, -K:].clone()))
    batch = D.encode(SENTENCES, vocabs)
    index, _ = packed_order(batch.lengths, batch.words.shape[1])
    words = batch.words.reshape(-1)[index]
    gold = batch.tags.reshape(-1)[index]
    net.eval()
    net(batch)
    torch.testing.assert_close(seen["x"], torch.log1p(counts[words]))
    net.train()
    net(batch)
    left_out = counts[words] - torch.nn.functional.one_hot(gold, K)
    torch.testing.assert_close(seen["x"], torch.log1p(left_out))
    with pytest.raises(ValueError, match="tag_dict needs the training count"):
        FeatureNetwork(len(vocabs.words), len(vocabs.chars), K, tag_dict=1)
