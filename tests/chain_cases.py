"""Random chain problems and the brute-force oracle shared by the chain tests."""
import itertools
import math
import pathlib

import torch
from hypothesis import strategies as st

DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


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


def tweet_categories():
    """Tag names and category ids of the 25-tag tweet tagset (shared/data/twpos/tagset.tsv)."""
    rows = (DATA / "twpos" / "tagset.tsv").read_text(encoding="utf-8").splitlines()[1:]
    tags, cats = [], []
    names = {}
    for row in rows:
        tag, category = row.split("\t")[:2]
        tags.append(tag)
        cats.append(names.setdefault(category, len(names)))
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
