"""Model contract tests: shapes, empty histories, losses against hand computations, padding."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from dreamrec.data.batching import Batch
from dreamrec.data.dataset import PreparedDataset, SampleRows, Sequences
from dreamrec.models import build_model
from dreamrec.nn.losses import sample_negatives
from dreamrec.nn.encoders import GRUEncoder, TransformerEncoder, attention_mask

N_ITEMS = 12
MAX_LEN = 6
SMALL = {
    "sasrec": {"hidden": 8, "n_layers": 2, "n_heads": 2, "dropout": 0.0},
    "gru4rec": {"embedding": 8, "hidden": 10, "n_layers": 2, "dropout": 0.0},
}


def histories() -> torch.Tensor:
    return torch.tensor(
        [
            [0, 0, 0, 0, 0, 0],  # empty history
            [0, 0, 0, 0, 0, 7],
            [0, 0, 3, 4, 5, 6],
            [1, 2, 3, 4, 5, 12],
        ]
    )


def tiny_dataset() -> PreparedDataset:
    train = Sequences.from_lists([[1, 2, 3, 2], [2, 5], [5, 5, 5, 2]])
    rows = SampleRows(np.array([[0, 1], [2, 3]]), np.array([2, 4]))
    return PreparedDataset(
        item_ids=pd.Series(np.arange(100, 106)), train=train, val=rows, test=rows, max_len=2, protocol="loo"
    )


@pytest.mark.parametrize("name", ["sasrec", "gru4rec", "popularity"])
def test_shapes_and_empty_history(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, N_ITEMS, MAX_LEN, SMALL.get(name))
    if name == "popularity":
        model.counts.copy_(torch.arange(N_ITEMS + 1, dtype=torch.float32))
    model.eval()
    h = histories()
    with torch.no_grad():
        s = model.score(h)
        q = model.query(h)
        table = model.item_embeddings()
    assert s.shape == (4, N_ITEMS)  # one column per real item, none for padding
    assert torch.isfinite(s).all()
    assert q.shape == (4, table.shape[1])
    assert table.shape[0] == N_ITEMS + 1
    assert torch.allclose(s, q @ table[1:].T, atol=1e-6)


@pytest.mark.parametrize("name", ["sasrec", "gru4rec"])
def test_empty_history_gradients_finite(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, N_ITEMS, MAX_LEN, {**SMALL[name], "dropout": 0.1})
    h = histories()
    labels = torch.zeros_like(h)
    labels[1:, -1] = torch.tensor([3, 7, 1])
    labels[2, 2:5] = torch.tensor([4, 5, 6])
    loss = model.loss(Batch(h, labels[:, -1], labels))
    loss.backward()
    assert torch.isfinite(loss)
    for p in model.parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all()


def test_attention_mask_always_allows_diagonal() -> None:
    m = attention_mask(torch.tensor([[0, 0, 3], [0, 0, 0]]))[:, 0]
    assert m.shape == (2, 3, 3)
    assert m.diagonal(dim1=1, dim2=2).all()
    # a real query never sees padding or the future
    assert m[0, 2].tolist() == [False, False, True]
    assert not m[0, 0, 1] and not m[0, 0, 2]


@pytest.mark.parametrize("name", ["sasrec", "gru4rec"])
def test_right_alignment_and_padding_row_invariance(name: str) -> None:
    """Extra left padding and the content of the padding row change nothing."""
    torch.manual_seed(1)
    model = build_model(name, N_ITEMS, 9, SMALL[name]).eval()
    short = torch.tensor([[0, 0, 1, 2, 3], [0, 0, 0, 0, 5], [0, 0, 0, 0, 0]])
    wide = torch.cat([torch.zeros(3, 4, dtype=torch.long), short], 1)
    with torch.no_grad():
        a = model.score(short)
        b = model.score(wide)
        model.item_embedding.weight[0].fill_(3.0)  # padding row must never matter
        c = model.score(wide)
    # a and b differ only in the amount of padding
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(b, c, atol=1e-5)
    assert torch.all(a[2] == 0)  # empty history -> zero query -> all-tie scores


def _hand_ce(hidden: torch.Tensor, table: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over labelled positions of -log softmax over real items, with explicit loops."""
    total, n = 0.0, 0
    B, L = labels.shape
    for b in range(B):
        for t in range(L):
            y = int(labels[b, t])
            if y == 0:
                continue
            logits = [float(hidden[b, t] @ table[i]) for i in range(1, table.shape[0])]
            mx = max(logits)
            lse = mx + math.log(sum(math.exp(v - mx) for v in logits))
            total += lse - logits[y - 1]
            n += 1
    return total / n


@pytest.mark.parametrize("name", ["sasrec", "gru4rec"])
def test_ce_loss_matches_hand_computation(name: str) -> None:
    torch.manual_seed(3)
    model = build_model(name, 5, 4, {**SMALL[name], **({"loss": "ce"} if name == "sasrec" else {})})
    with torch.no_grad():  # fixed, non-trivial weights
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    model.train()  # dropout is 0, so train mode is deterministic
    h = torch.tensor([[0, 1, 2, 3], [0, 0, 0, 4], [0, 0, 0, 0]])
    labels = torch.tensor([[0, 2, 3, 4], [0, 0, 0, 5], [0, 0, 0, 0]])
    loss = model.loss(Batch(h, labels[:, -1], labels))
    with torch.no_grad():
        hidden = model.encoder(h)
        expected = _hand_ce(hidden, model.item_embeddings(), labels)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # padding has no probability mass: changing its embedding leaves the loss unchanged
    with torch.no_grad():
        model.item_embedding.weight[0].fill_(10.0)
    assert model.loss(Batch(h, labels[:, -1], labels)).item() == pytest.approx(expected, rel=1e-5)


def test_untied_sasrec_scores_with_its_own_output_table() -> None:
    """tie_items=false: the CE and the scores use the output table N, the encoder reads M; the loss
    matches the hand computation against N, and changing M's rows moves the query, not the keys."""
    torch.manual_seed(3)
    model = build_model("sasrec", 5, 4, {**SMALL["sasrec"], "loss": "ce", "tie_items": False}).train()
    N, M = model.item_embeddings(), model.encoder.item_embedding.weight
    assert N.shape == M.shape and N.data_ptr() != M.data_ptr()
    h = torch.tensor([[0, 1, 2, 3], [0, 0, 0, 4]])
    labels = torch.tensor([[0, 2, 3, 4], [0, 0, 0, 5]])
    loss = model.loss(Batch(h, labels[:, -1], labels))
    with torch.no_grad():
        assert loss.item() == pytest.approx(_hand_ce(model.encoder(h), N, labels), rel=1e-5)
    loss.backward()
    assert M.grad is not None and N.grad is not None and N.grad[1:].abs().sum() > 0
    model.eval()
    torch.testing.assert_close(model.score(h), model.query(h) @ N[1:].T)
    with pytest.raises(Exception, match="tie_items=false is not supported by cl4srec"):
        build_model("cl4srec", 5, 4, {"hidden": 8, "tie_items": False})


def test_sasrec_defaults_to_the_papers_bce_and_cl4srec_to_softmax() -> None:
    """SASRec's paper trains with BCE and sampled negatives (Eq. 7); full-softmax CE is a variant.
    CL4SRec's L_main is the full softmax."""
    assert build_model("sasrec", 5, 4, SMALL["sasrec"]).config.loss == "bce"
    assert build_model("cl4srec", 5, 4, {"hidden": 8}).config.loss == "ce"


def test_bce_loss_uses_sampled_negatives() -> None:
    torch.manual_seed(0)
    model = build_model("sasrec", 7, 4, {**SMALL["sasrec"], "loss": "bce", "n_negatives": 3})
    h = torch.tensor([[0, 1, 2, 3], [0, 0, 4, 5]])
    labels = torch.tensor([[0, 2, 3, 4], [0, 0, 5, 6]])
    batch = Batch(h, labels[:, -1], labels)
    torch.manual_seed(11)
    loss = model.loss(batch)
    # replay the same negatives: the forward pass has no randomness (dropout 0)
    torch.manual_seed(11)
    pos = labels[labels > 0]
    neg = sample_negatives(pos, 7, 3)
    with torch.no_grad():
        hid = model.encoder(h)[labels > 0]
        table = model.item_embeddings()
        expected = 0.0
        for i in range(len(pos)):
            sp = float(hid[i] @ table[pos[i]])
            term = -math.log(1 / (1 + math.exp(-sp)))
            term += sum(-math.log(1 - 1 / (1 + math.exp(-float(hid[i] @ table[j])))) for j in neg[i]) / 3
            expected += term
        expected /= len(pos)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # different negatives -> a different loss
    torch.manual_seed(12)
    assert model.loss(batch).item() != pytest.approx(expected, rel=1e-6)


def test_negative_sampling_is_uniform_over_other_items() -> None:
    g = torch.Generator().manual_seed(0)
    pos = torch.full((20000,), 3)
    neg = sample_negatives(pos, 5, 1, generator=g)
    assert neg.min() >= 1 and neg.max() <= 5 and not (neg == 3).any()
    freq = torch.bincount(neg.flatten(), minlength=6)[1:].float() / neg.numel()
    assert torch.allclose(freq[[0, 1, 3, 4]], torch.full((4,), 0.25), atol=0.02)


@pytest.mark.parametrize("name", ["sasrec", "gru4rec"])
def test_deterministic_under_seed(name: str) -> None:
    params = {**SMALL[name], "dropout": 0.3}
    h = histories()
    labels = torch.zeros_like(h)
    labels[1:, -1] = torch.tensor([3, 7, 1])
    out = []
    for _ in range(2):
        torch.manual_seed(5)
        model = build_model(name, N_ITEMS, MAX_LEN, params)
        out.append((model.loss(Batch(h, labels[:, -1], labels)), model.eval().score(h)))
    assert torch.equal(out[0][0], out[1][0])
    assert torch.equal(out[0][1], out[1][1])


def test_popularity_scores_are_train_counts() -> None:
    ds = tiny_dataset()
    model = build_model("popularity", ds.n_items, 2)
    model.fit_statistics(ds)
    s = model.score(torch.tensor([[0, 0], [1, 2]]))
    expected = torch.tensor([1, 4, 1, 0, 4, 0], dtype=torch.float32)
    assert s.shape == (2, 6)
    assert torch.equal(s[0], expected) and torch.equal(s[1], expected)


def test_encoders_zero_padding_outputs() -> None:
    torch.manual_seed(0)
    h = torch.tensor([[0, 0, 4, 2], [0, 0, 0, 0]])
    t = TransformerEncoder(6, 4, hidden=8, n_layers=1, n_heads=2, dropout=0.0).eval()
    g = GRUEncoder(6, embedding=8, hidden=8).eval()
    for enc in (t, g):
        out = enc(h)
        assert out.shape == (2, 4, 8)
        assert torch.all(out[h == 0] == 0)
        assert torch.isfinite(out).all()
        assert torch.allclose(enc.last_hidden(h), out[:, -1], atol=1e-6)


def test_chunked_softmax_cross_entropy_matches_reference() -> None:
    from dreamrec.nn.losses import softmax_cross_entropy

    torch.manual_seed(0)
    n_items = 2000
    h = torch.randn(700, 16, requires_grad=True)  # 700 * 2000 > 2**20: the chunked path
    table = torch.randn(n_items + 1, 16, requires_grad=True)
    labels = torch.randint(1, n_items + 1, (700,))
    loss = softmax_cross_entropy(h, table, labels)
    loss.backward()
    h2 = h.detach().clone().requires_grad_()
    t2 = table.detach().clone().requires_grad_()
    ref = torch.nn.functional.cross_entropy(h2 @ t2[1:].T, labels - 1)
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert torch.allclose(h.grad, h2.grad, atol=1e-6, rtol=1e-4)
    assert torch.allclose(table.grad, t2.grad, atol=1e-6, rtol=1e-4)
    assert torch.all(table.grad[0] == 0)  # padding gets no gradient from the softmax


def test_empty_history_query_is_learned_not_zero():
    """An empty history must not rank items by id: the learned empty-history query picks up popularity."""
    import numpy as np

    from dreamrec.data.batching import Batch
    from dreamrec.models import build_model

    torch.manual_seed(0)
    n_items = 20
    model = build_model("sasrec", n_items, 5, {"hidden": 16, "n_layers": 1, "dropout": 0.0})
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    # empty-history rows whose next item is item 7 most of the time, else item 3
    target = torch.from_numpy(np.where(np.arange(64) % 4 == 0, 3, 7))
    history = torch.zeros(64, 5, dtype=torch.long)
    for _ in range(50):
        labels = torch.zeros_like(history)
        labels[:, -1] = target
        loss = model.loss(Batch(history, target, labels))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    scores = model.score(torch.zeros(1, 5, dtype=torch.long))[0]
    assert torch.isfinite(scores).all()
    assert scores.argsort(descending=True)[:2].tolist() == [6, 2]  # items 7 then 3 (column = id - 1)


@pytest.mark.parametrize("n_layers,n_heads", [(1, 1), (2, 2)])
def test_last_hidden_equals_the_last_column_of_forward(n_layers: int, n_heads: int) -> None:
    """``last_hidden`` computes only the last query of the last block: same values and gradients
    as ``forward(h)[:, -1]`` (eval mode, so no dropout), empty and wide histories included."""
    from dreamrec.nn.encoders import TransformerEncoder

    torch.manual_seed(0)
    enc = TransformerEncoder(40, 6, hidden=16, n_layers=n_layers, n_heads=n_heads, dropout=0.3)
    with torch.no_grad():
        enc.empty_state.normal_()
    enc.eval()
    h = torch.randint(1, 41, (5, 8))  # wider than max_len: cut to the last 6 columns
    h[0] = 0  # empty history
    h[1, :6] = 0  # two items
    h[2, :-1] = 0  # one item
    a = enc.last_hidden(h)
    b = enc(h)[:, -1]
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a[0], enc.empty_state.detach())
    ga = torch.autograd.grad(a.square().sum(), list(enc.parameters()), allow_unused=True)
    gb = torch.autograd.grad(enc(h)[:, -1].square().sum(), list(enc.parameters()), allow_unused=True)
    for x, y in zip(ga, gb):
        if x is None or y is None:
            assert (x is None or not x.any()) and (y is None or not y.any())
        else:
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("n_heads", [1, 2])
def test_attention_forward_last_with_dropout_matches_explicit_keys_and_values(n_heads: int) -> None:
    """Training mode: ``forward_last`` (keys and values never formed) equals softmax(q K^T / sqrt(d)),
    the dropout mask, then times V computed the explicit way; the dropout is replaced by one fixed
    mask so both sides drop the same weights (the undropped weights no longer sum to one, which
    the bias term of V must account for)."""
    from dreamrec.nn.encoders import MultiHeadSelfAttention, attention_mask

    torch.manual_seed(2)
    B, L, D = 5, 7, 16
    attn = MultiHeadSelfAttention(D, n_heads, attn_dropout=0.5).train()
    with torch.no_grad():
        attn.qkv.bias.normal_()
    keep = (torch.rand(B, n_heads, L) > 0.5).float() * 2.0
    class FixedMask(torch.nn.Module):
        def forward(self, a: torch.Tensor) -> torch.Tensor:
            return a * keep

    attn.attn_drop = FixedMask()
    x = torch.randn(B, L, D)
    h = torch.randint(1, 9, (B, L))
    h[0, :5] = 0
    mask = attention_mask(h)
    got = attn.forward_last(x, mask)[:, 0]
    hd = D // n_heads
    q, k, v = attn.qkv(x).view(B, L, 3, n_heads, hd).permute(2, 0, 3, 1, 4)  # [B, H, L, hd] each
    logits = (q[:, :, -1:] @ k.transpose(-2, -1))[:, :, 0] / hd**0.5  # [B, H, L]
    a = torch.softmax(logits.masked_fill(~mask[:, :, -1], float("-inf")), dim=-1) * keep
    want = attn.out((a[..., None] * v).sum(2).reshape(B, D))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n_layers", [1, 2])
def test_trimmed_transformer_encoder_is_exact(n_layers: int) -> None:
    """Length buckets without all-padding columns (``trim_padding``) give the states and gradients of the
    full-width encoder at every position: mixed lengths, an empty row, a row wider than ``max_len``,
    the item vectors looked up by the caller, ``forward`` and ``last_hidden``."""
    torch.manual_seed(0)
    enc = TransformerEncoder(40, 12, hidden=16, n_layers=n_layers, n_heads=2, dropout=0.3).double().eval()
    with torch.no_grad():
        enc.empty_state.normal_()
    h = torch.zeros(6, 14, dtype=torch.long)
    for row, n in enumerate([0, 1, 3, 5, 12, 14]):  # the last row is cut to its 12 most recent items
        if n:
            h[row, -n:] = torch.randint(1, 41, (n,))
    vectors = enc.item_embedding(h)
    outs: dict[bool, list[torch.Tensor]] = {}
    for trim in (True, False):
        enc.trim_padding = trim
        f, last, f_vec = enc(h), enc.last_hidden(h), enc(h, vectors)
        grads = torch.autograd.grad(f.square().sum() + last.sum(), list(enc.parameters()))
        outs[trim] = [f, last, f_vec, *grads]
    assert outs[True][0].shape == (6, 12, 16)
    for a, b in zip(outs[True], outs[False]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_trimmed_sasrec_training_loss_is_exact() -> None:
    """In training mode (dropout 0, so no random draws) a seq2seq batch gives the same loss and the same
    gradients trimmed and at full width."""
    torch.manual_seed(0)
    model = build_model("sasrec", 30, 10, {"hidden": 16, "dropout": 0.0, "loss": "ce"}).train()
    h = torch.zeros(4, 10, dtype=torch.long)
    labels = torch.zeros(4, 10, dtype=torch.long)
    for row, n in enumerate([1, 2, 6, 10]):
        seq = torch.randint(1, 31, (n + 1,))
        h[row, -n:], labels[row, -n:] = seq[:-1], seq[1:]
    batch = Batch(h, labels[:, -1], labels)
    got = {}
    for trim in (True, False):
        model.encoder.trim_padding = trim
        loss = model.loss(batch)
        got[trim] = [loss, *torch.autograd.grad(loss, list(model.parameters()))]
    for a, b in zip(got[True], got[False]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_trim_padding_auto_needs_the_cpu_and_a_large_batch() -> None:
    from dreamrec.nn.encoders import AUTO_TRIM_MIN_CELLS, trims_on

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert trims_on("auto", cpu, AUTO_TRIM_MIN_CELLS) and not trims_on("auto", cpu, AUTO_TRIM_MIN_CELLS - 1)
    assert not trims_on("auto", gpu, 10**6) and trims_on("auto", cpu)  # no size given: the device decides
    assert trims_on(True, gpu, 1) and not trims_on(False, cpu, 10**6)
    # the encoder asks with its batch's size: a small batch runs at full width, a large one in buckets
    enc = TransformerEncoder(20, 8, hidden=8, n_layers=1, n_heads=1).eval()
    calls: list[int] = []
    enc._forward = lambda h, v: calls.append(h.shape[1]) or torch.zeros(h.shape[0], h.shape[1], 8)  # type: ignore[method-assign]
    h = torch.zeros(AUTO_TRIM_MIN_CELLS // 8, 8, dtype=torch.long)
    h[:, -1] = 1
    enc(h[:4])
    assert calls == [8]
    enc(h)
    assert calls == [8, 1]


def test_dropout_is_one_multiply_equal_to_mask_scale_keep() -> None:
    """The one-multiply dropout gives bitwise the values and gradients of ``x * (u >= p) / (1 - p) * keep``
    for the same uniform draws; in eval mode it only applies ``keep``."""
    from dreamrec.nn.dropout import Dropout

    p = 0.3
    drop = Dropout(p).train()
    x = torch.randn(4, 5, 6, requires_grad=True)
    keep = (torch.rand(4, 5, 1) > 0.3).float()
    g = torch.randn(4, 5, 6)
    torch.manual_seed(7)
    y = drop(x, keep=keep)
    (gx,) = torch.autograd.grad(y, x, g)
    torch.manual_seed(7)
    u = torch.rand_like(x)
    ref = x * (u >= p).float() * (1.0 / (1.0 - p)) * keep
    (gref,) = torch.autograd.grad(ref, x, g)
    assert torch.equal(y, ref) and torch.equal(gx, gref)
    assert 0 < float((y == 0).float().mean()) < 1
    drop.eval()
    assert torch.equal(drop(x, keep=keep), x * keep) and drop(x) is x
