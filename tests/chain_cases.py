"""Random chain problems and the brute-force oracle shared by the chain tests."""
import itertools
import math

import torch
from hypothesis import strategies as st

from ebm_ext.tagging.data import data_dir

DATA = data_dir()  # the one rule: $EBM_DATA, else ../shared/data beside the checkout


def make_chain(B, T, K, *, dtype=torch.float64, device="cpu", lengths=True, start_end=True,
               integer=False, seed=0, scale=1.0):
    """unary, trans, lengths, start, end; integer=True draws small integers to force ties."""
    g = torch.Generator().manual_seed(seed)

    def draw(*shape):
        if integer:
            return torch.randint(-2, 3, shape, generator=g).to(dtype)
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    unary, trans = draw(B, T, K), draw(K, K)
    start = draw(K) if start_end else None
    end = draw(K) if start_end else None
    L = torch.randint(0, T + 1, (B,), generator=g) if lengths else None
    move = lambda x: None if x is None else x.to(device)  # noqa: E731
    return move(unary), move(trans), move(L), move(start), move(end)


def path_energy(unary, trans, start, end, b, path):
    """E of one path (a tuple of tags) of sequence b, in float64, by the formula."""
    u = unary[b].double()
    e = 0.0
    for t, y in enumerate(path):
        e += float(u[t, y])
        if t > 0:
            e += float(trans[path[t - 1], y])
    if path:
        e += float(start[path[0]]) if start is not None else 0.0
        e += float(end[path[-1]]) if end is not None else 0.0
    return e


def all_paths(unary, trans, lengths, start, end, b, key=None):
    """Every path of sequence b with its energy (or key(path, energy)), sorted ascending, ties in
    lexicographic order of the path."""
    T, K = unary.shape[1], unary.shape[2]
    L = T if lengths is None else int(lengths[b])
    out = []
    for path in itertools.product(range(K), repeat=L):
        e = path_energy(unary, trans, start, end, b, path)
        out.append((key(path, e) if key else e, path))
    return sorted(out)


def padded(path, T):
    return list(path) + [-1] * (T - len(path))


# The tweet tagset's 25 tags by category (Gimpel et al. 2011): a constant, so that the op
# tests never read the data; tests/test_data.py checks it against twpos/tagset.tsv.
TWEET_TAGSET = {
    "Nominal, Nominal + Verbal": "NO^SZLM",
    "Other open-class words": "VAR!",
    "Other closed-class words": "DP&TXY",
    "Twitter/online-specific": "#@~UE",
    "Miscellaneous": "$,G",
}


def tweet_categories():
    """Tag names and category ids of the 25-tag tweet tagset, in tagset.tsv's order."""
    tags = [tag for group in TWEET_TAGSET.values() for tag in group]
    cats = [k for k, group in enumerate(TWEET_TAGSET.values()) for _ in group]
    return tags, cats


def category_cost(cats, dtype=torch.float64):
    """0 for the same tag, 0.5 for the same category, 1 otherwise."""
    c = torch.tensor(cats)
    same = (c[:, None] == c[None, :]).to(dtype)
    cost = 1.0 - 0.5 * same
    cost.fill_diagonal_(0.0)
    return cost


# Energies drawn to break a rescaled exp-domain recursion: transitions whose finite values span
# up to the switch limit (60 in float32, 600 in float64), unary energies spread far wider, and
# +inf (forbidden) tags and transitions that leave a state as the only way on.
@st.composite
def hard_chains(draw):
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    limit = 60.0 if dtype == torch.float32 else 600.0
    B, T, K = draw(st.integers(1, 2)), draw(st.integers(1, 4)), draw(st.integers(1, 3))
    span = draw(st.floats(0.0, 1.0)) * limit
    unary_span = draw(st.sampled_from([1.0, 3.0, 20.0])) * limit
    inf = math.inf

    def values(n, scale, p_inf):
        vals = draw(st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1), st.sampled_from([0.0, 1.0])),
                             min_size=n, max_size=n))
        return [inf if r < p_inf else z * scale * v for r, v, z in vals]

    p_inf = draw(st.sampled_from([0.0, 0.0, 0.2, 0.4]))
    unary = torch.tensor(values(B * T * K, unary_span, p_inf / 2), dtype=torch.float64).view(B, T, K)
    trans = torch.tensor(values(K * K, span, p_inf), dtype=torch.float64).view(K, K)
    with_ends = draw(st.booleans())
    start = torch.tensor(values(K, unary_span, p_inf / 2), dtype=torch.float64) if with_ends else None
    end = torch.tensor(values(K, unary_span, p_inf / 2), dtype=torch.float64) if with_ends else None
    L = torch.tensor(draw(st.lists(st.integers(0, T), min_size=B, max_size=B)))
    cast = lambda x: None if x is None else x.to(dtype)  # noqa: E731
    return dtype, cast(unary), cast(trans), L, cast(start), cast(end)


# Energies aimed at the edge of the floating-point range, where a rescaled exp-domain recursion
# is most fragile: a tag's energy (unary, start, end or transition) near or past -log of the
# smallest normal number (87.3 in float32, 708.4 in float64), so that one step's mass or the
# product of two lands among the subnormals or below them; dead ends (a tag no transition
# leaves), unreachable tags, forbidden transitions, and tags cheap early but useless later.
@st.composite
def edge_of_range_chains(draw):
    dtype = draw(st.sampled_from([torch.float32, torch.float32, torch.float32, torch.float64]))
    normal_edge = 87.3 if dtype == torch.float32 else 708.4
    B, T, K = draw(st.integers(1, 4)), draw(st.integers(2, 5)), draw(st.integers(2, 3))
    inf = math.inf

    # The values come from a seeded generator rather than from Hypothesis' own draws, which
    # favour 0 and the bounds: the regime is a band (a sum of two or three energies between 1
    # and 1.18 edges, among the subnormals) that uniform draws hit and boundary draws miss.
    g = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 32 - 1)))

    def energies(n, p_inf):
        """+inf with probability p_inf, else 0 a fifth of the time, else half an edge or less
        (what a step can fall before the check notices) or 0.4 to 1.2 edges (what completes a
        sum in the band), one or the other at random."""
        r = torch.rand(n, generator=g, dtype=torch.float64)
        low = torch.rand(n, generator=g, dtype=torch.float64) * 0.5
        high = 0.4 + torch.rand(n, generator=g, dtype=torch.float64) * 0.8
        value = torch.where(torch.rand(n, generator=g) < 0.5, low, high) * normal_edge
        out = torch.where(r < p_inf + (1 - p_inf) / 5, 0.0, value)
        return torch.where(r < p_inf, inf, out).tolist()

    p_inf = draw(st.sampled_from([0.0, 0.15, 0.3, 0.5]))
    unary = torch.tensor(energies(B * T * K, p_inf / 4), dtype=torch.float64).view(B, T, K)
    trans = torch.tensor(energies(K * K, p_inf), dtype=torch.float64).view(K, K)
    # Traps: a tag that no transition leaves (a dead end) and one that none enters (unreachable),
    # often the same tag (usable only alone) and often the cheapest tag everywhere, so that the
    # recursion's largest entries belong to no complete path and the paths that remain lie far
    # below them.
    traps = draw(st.sampled_from(["none", "dead end", "unreachable", "two", "alone", "alone"]))
    dead_end = draw(st.integers(0, K - 1)) if traps in ("dead end", "two", "alone") else None
    unreachable = (dead_end if traps == "alone" else draw(st.integers(0, K - 1))
                   if traps in ("unreachable", "two") else None)
    for tag, forbid in ((dead_end, lambda j: trans.__setitem__(j, inf)),
                        (unreachable, lambda j: trans[:, j].fill_(inf))):
        if tag is not None:
            forbid(tag)
            if draw(st.integers(0, 3)):
                unary[:, :, tag] = 0.0
    with_ends = draw(st.booleans())
    start = torch.tensor(energies(K, p_inf / 3), dtype=torch.float64) if with_ends else None
    end = torch.tensor(energies(K, p_inf / 3), dtype=torch.float64) if with_ends else None
    full = draw(st.booleans())  # most of the regime needs a few steps: often every one
    L = None if full else torch.tensor(draw(st.lists(st.integers(0, T), min_size=B, max_size=B)))
    cast = lambda x: None if x is None else x.to(dtype)  # noqa: E731
    return dtype, cast(unary), cast(trans), L, cast(start), cast(end)
