"""iDreamRec: DiT denoiser, two-condition guidance, learning, intentions, cold start, artifacts, CLI; and the
idreamrec-residual variant (a learned residual per item on the text table)."""
import dataclasses
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dreamrec.config import TrainConfig
from dreamrec.data.batching import Batch
from dreamrec.data.synthetic import SyntheticConfig, generate
from dreamrec.diffusion.multi_guidance import TwoConditionGuidance, combine_two_conditions, guidance_branches
from dreamrec.eval.coldstart import cold_start_split, evaluate_cold_start, evaluate_target_groups
from dreamrec.eval.evaluate import evaluate
from dreamrec.eval.intents import evaluate_with_intents
from dreamrec.models.idreamrec import IDreamRec, IDreamRecConfig
from dreamrec.models.idreamrec_variants import IDreamRecResidual, IDreamRecResidualConfig
from dreamrec.models.popularity import Popularity
from dreamrec.nn.dit import DiTContext, InContextDiT
from dreamrec.data.synthetic import topic_text
from dreamrec.train.trainer import train

FAST = dict(text_encoder="hashing:32", hidden=32, n_layers=1, n_heads=2, timesteps=100, beta_end=0.2,
            intent_source="topic", guidance_w=1.0, intent_rho=1.0, sampler="onestep")
TRAIN = dict(epochs=15, batch_size=128, lr=3e-3, optimizer="adamw", val_metric="HR@20", patience=100,
             eval_every=100, seed=0, max_len=10)


@pytest.fixture(scope="module")
def data():
    return generate(SyntheticConfig(n_users=400, n_items=80, n_topics=4, seed=3))


def _fit(dataset, tmp, **over):
    torch.manual_seed(0)
    model = IDreamRec(dataset.n_items, 10, IDreamRecConfig(**{**FAST, "text_cache_dir": str(tmp / "cache"), **over}))
    train(model, dataset, TrainConfig(**TRAIN), tmp / "run", progress=False)
    return model


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    return _fit(data.dataset, tmp_path_factory.mktemp("idreamrec"))


def test_dit_shapes_with_empty_history_and_null_intent():
    dit = InContextDiT(16, max_len=6, hidden=32, n_layers=2, n_heads=4).eval()
    B = 3
    h = torch.randn(B, 6, 16)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1], [0] * 6, [1] * 6], dtype=torch.bool)  # row 1: empty history
    ctx = dit.context(h, mask, torch.randn(B, 16), torch.tensor([True, False, True]))
    assert ctx.tokens.shape == (B, 8, 32) and ctx.key_mask.shape == (B, 8)
    assert ctx.key_mask[1, 6] and not ctx.key_mask[0, 6]  # ∅_h visible only for the empty history
    out = dit(torch.randn(B, 16), torch.tensor([5]), ctx)  # shared step
    assert out.shape == (B, 16) and torch.isfinite(out).all()
    ctx0 = dit.context(h, torch.zeros(B, 6, dtype=torch.bool))  # no intention at all: ∅_iota
    assert dit(torch.randn(B, 16), torch.tensor([1, 2, 3]), ctx0).shape == (B, 16)
    both = DiTContext.cat([ctx, ctx0])
    assert both.batch_size == 2 * B
    # the parts in order along the batch, tokens and key masks alike
    assert torch.equal(both.tokens[:B], ctx.tokens) and torch.equal(both.tokens[B:], ctx0.tokens)
    assert torch.equal(both.key_mask[:B], ctx.key_mask) and torch.equal(both.key_mask[B:], ctx0.key_mask)
    # and one call on the stacked context equals the two calls (the guidance branches' batching)
    x, t = torch.randn(B, 16), torch.tensor([4])
    torch.testing.assert_close(dit(x.repeat(2, 1), t, both), torch.cat([dit(x, t, ctx), dit(x, t, ctx0)]))
    # a history longer than max_len keeps its last max_len items
    assert dit.context(torch.randn(B, 9, 16), torch.ones(B, 9, dtype=torch.bool)).tokens.shape == (B, 8, 32)


@pytest.mark.parametrize("n_layers", [1, 2])
def test_dit_last_block_reads_out_only_the_x_token_exactly(n_layers):
    """The last block's shortcut (the x_t token's query, projection and MLP only) equals running the
    full block on every token and reading the last one, for values and gradients."""
    torch.manual_seed(0)
    dit = InContextDiT(16, max_len=6, hidden=32, n_layers=n_layers, n_heads=4).eval()
    h, intent, x = torch.randn(3, 6, 16), torch.randn(3, 16), torch.randn(3, 16)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1], [0] * 6, [1] * 6], dtype=torch.bool)
    t = torch.tensor([7])

    def run(fast: bool) -> tuple[torch.Tensor, list]:
        ctx = dit.context(h, mask, intent, torch.tensor([True, False, True]))
        if fast:
            out = dit(x, t, ctx)
        else:  # the plain computation, token layout as the module docstring: [context, tau(t), x_t]
            types = dit.token_type.weight
            tau = (dit.time(t) + types[3]).expand(3, -1)[:, None]
            seq = torch.cat([ctx.tokens, tau, (dit.x_in(x) + types[4])[:, None]], 1)
            m = torch.cat([ctx.key_mask, torch.ones(3, 2, dtype=torch.bool)], 1)[:, None, None, :]
            for block in dit.blocks:
                seq = block(seq, m)
            out = dit.out(dit.norm_out(seq[:, -1]))
        return out, torch.autograd.grad(out.square().sum(), list(dit.parameters()), allow_unused=True)

    (fast, g_fast), (ref, g_ref) = run(True), run(False)
    torch.testing.assert_close(fast, ref)
    for a, b in zip(g_fast, g_ref):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b)


def test_two_condition_guidance_formula_and_reduction():
    f_c, f_h, f_i = torch.tensor([1.0, 2.0]), torch.tensor([0.5, -1.0]), torch.tensor([3.0, 0.0])
    w, rho = 2.0, 0.5
    # (1 + w + rho) f(h, iota) - w f(∅, iota) - rho f(h, ∅), by hand
    expected = torch.tensor([3.5 * 1 - 2 * 0.5 - 0.5 * 3, 3.5 * 2 - 2 * -1.0 - 0.5 * 0])
    torch.testing.assert_close(combine_two_conditions(f_c, f_h, f_i, w, rho), expected)
    torch.testing.assert_close(combine_two_conditions(f_c, None, None, 0.0, 0.0), f_c)
    assert guidance_branches(0, 0) == ["cond"] and guidance_branches(1, 1) == ["cond", "no_history", "no_intent"]

    seen = []

    def net(x, t, c):  # a toy network: output depends on the condition rows
        seen.append(x.shape[0])
        return x * 0 + c

    B = 2
    cond = torch.tensor([[1.0], [2.0]])
    g0 = TwoConditionGuidance(net, cond, B, 0.0, 0.0)
    torch.testing.assert_close(g0(torch.zeros(B, 1), torch.tensor([3])), cond)  # w = rho = 0: the conditional model
    stacked = torch.tensor([[1.0], [2.0], [0.5], [-1.0], [3.0], [0.0]])
    g = TwoConditionGuidance(net, stacked, B, w, rho)
    torch.testing.assert_close(g(torch.zeros(B, 1), torch.tensor([3]))[:, 0], expected)
    assert seen == [B, 3 * B] and g.calls == 1


def test_one_batched_network_call_per_step(data, tmp_path):
    model = IDreamRec(data.dataset.n_items, 10, IDreamRecConfig(**{**FAST, "text_cache_dir": str(tmp_path)}))
    model.fit_statistics(data.dataset)
    model.set_sampler("ddim", 5)
    calls = []
    model.denoiser.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape[0]))
    h = torch.from_numpy(data.dataset.test.history[:4, -10:])
    h[0] = 0  # an empty history works too
    q = model.query(h, ["jazz saxophone", None, None, "rocket"])
    assert q.shape == (4, 32) and torch.isfinite(q).all()
    assert calls == [3 * 4] * 5  # one call per step, on [cond; no history; no intention]
    calls.clear()
    model.query(h)  # no intention anywhere: the rho branch is skipped
    assert calls == [2 * 4] * 5
    model.set_sampler("onestep", guidance_w=0.0)
    calls.clear()
    model.query(h)
    assert calls == [4]


def test_loss_and_table_shapes(data, tmp_path):
    model = IDreamRec(data.dataset.n_items, 10, IDreamRecConfig(**{**FAST, "text_cache_dir": str(tmp_path)}))
    model.fit_statistics(data.dataset)
    E = model.item_embeddings()
    assert E.shape == (81, 32) and not E[0].any()
    Z = E[1:].double()  # whitened catalog: zero mean, identity covariance
    torch.testing.assert_close(Z.mean(0), torch.zeros(32, dtype=torch.float64), atol=1e-4, rtol=0)
    torch.testing.assert_close(Z.T @ Z / len(Z), torch.eye(32, dtype=torch.float64), atol=2e-3, rtol=0)
    hist = torch.from_numpy(data.dataset.val.history[:8, -10:])
    loss = model.loss(Batch(hist, torch.from_numpy(data.dataset.val.target[:8])))
    loss.backward()
    assert torch.isfinite(loss) and model.denoiser.out.weight.grad is not None


def test_bf16_training_then_float32_evaluation(data, tmp_path):
    """``precision: bf16`` (autocast in the training step only): the cached item table stays float32, so
    validation and queries outside autocast work (a bf16 table broke them on the GPU)."""
    cfg = {**TRAIN, "epochs": 1, "eval_every": 1, "precision": "bf16"}
    model = IDreamRec(data.dataset.n_items, 10, IDreamRecConfig(**{**FAST, "text_cache_dir": str(tmp_path / "c")}))
    result = train(model, data.dataset, TrainConfig(**cfg), tmp_path / "run", progress=False)
    assert result.history and np.isfinite(result.history[0]["loss"])
    assert model.item_embeddings().dtype == torch.float32
    q = model.query(torch.from_numpy(data.dataset.test.history[:4, -10:]), ["jazz", None, None, None])
    assert q.dtype == torch.float32 and torch.isfinite(q).all()


def test_learns_planted_pattern(data, trained):
    ds = data.dataset
    pop = Popularity(ds.n_items, 10)
    pop.fit_statistics(ds)
    m = evaluate(trained, ds.test, ks=(10, 20))
    p = evaluate(pop, ds.test, ks=(10, 20))
    assert m["HR@20"] > p["HR@20"] + 0.1, (m, p)


def test_intention_raises_hr10(data, trained):
    rows = data.dataset.test
    intents = [topic_text(int(data.item_topic[j - 1])) for j in rows.target]
    without = evaluate_with_intents(trained, rows, None, ks=(10,))
    with_intent = evaluate_with_intents(trained, rows, intents, ks=(10,), return_topk=10)
    assert with_intent["HR@10"] > without["HR@10"] + 0.05, (with_intent["HR@10"], without["HR@10"])
    # the top 10 concentrates on the asked-for topic
    topics = data.item_topic[with_intent["topk"] - 1]
    wanted = data.item_topic[rows.target - 1][:, None]
    assert (topics == wanted).mean() > 0.5


def test_cold_items_are_recommendable_and_beat_random(data, tmp_path):
    ds, cold = cold_start_split(data.dataset, frac=0.1, seed=0)
    assert len(cold) == 8
    train_items = ds.train.items
    assert not np.isin(train_items, cold).any() and not np.isin(ds.val.target, cold).any()
    model = _fit(ds, tmp_path, transform="scaling")  # scaling keeps the shared-topic geometry of the texts
    res = evaluate_cold_start(model, ds, cold, ks=(20,))
    assert res["n"] > 20
    assert res["model"]["HR@20"] > res["random"]["HR@20"] + 0.1, res
    assert res["model"]["HR@20"] > res["popularity"]["HR@20"], res
    # cold and warm side by side: every test row in exactly one group, the cold group as above
    groups = evaluate_target_groups(model, ds, cold, ks=(20,))
    assert groups["cold"]["n"] + groups["warm"]["n"] == len(ds.test)
    assert groups["cold"]["model"] == res["model"] and groups["cold"]["popularity"] == res["popularity"]
    assert groups["warm"]["popularity"]["HR@20"] > res["popularity"]["HR@20"]  # popularity only ranks seen items
    with pytest.raises(ValueError, match="unknown group"):
        evaluate_target_groups(model, ds, cold, groups=("hot",))


def test_artifact_reload_and_cli_intent(data, tmp_path, monkeypatch):
    from dreamrec.cli import app
    from dreamrec.config import build_run_config
    from dreamrec.models import registry
    from dreamrec.serve import Recommender
    from dreamrec.train.run import load_run, train_run

    monkeypatch.setitem(registry.MODELS, "idreamrec", IDreamRec)
    data_dir = tmp_path / "data"
    data.dataset.save(data_dir)
    params = {**FAST, "text_cache_dir": str(tmp_path / "cache")}
    cfg = build_run_config({"model": "idreamrec", "params": params,
                            "train": {**TRAIN, "epochs": 2}}, "test")
    run = tmp_path / "run"
    train_run(cfg, data_dir, run, progress=False, log=None)
    (tmp_path / "cache").rename(tmp_path / "cache_gone")  # the run dir alone must suffice
    loaded = load_run(run)
    assert loaded.config.params["text_dim"] == 32
    h = torch.from_numpy(data.dataset.test.history[:16, -10:])
    fresh = load_run(run).model
    for m in (loaded.model, fresh):
        torch.manual_seed(0)
        m.scores = m.score(h)
    torch.testing.assert_close(loaded.model.scores, fresh.scores, rtol=0, atol=0)
    torch.testing.assert_close(loaded.model.item_embeddings(), fresh.item_embeddings(), rtol=0, atol=0)

    rec = Recommender.load(run)
    assert rec.supports_intent
    hist = [int(1000 + j - 1) for j in data.dataset.test.history[0] if j]
    a = rec.recommend(hist, k=5, intent="jazz saxophone evening club")
    b = rec.recommend(hist, k=5, intent="jazz saxophone evening club")
    assert a.items == b.items and len(a.items) == 5

    runner = CliRunner()
    res = runner.invoke(app, ["recommend", str(run), "--history", ",".join(map(str, hist)), "--k", "5",
                              "--intent", "jazz saxophone evening club"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output.strip().splitlines()[-1])["items"] == a.items
    lines = tmp_path / "in.jsonl"
    lines.write_text(json.dumps({"history": hist, "intent": "jazz saxophone evening club"}) + "\n"
                     + json.dumps({"history": []}) + "\n")
    res = runner.invoke(app, ["recommend", str(run), "--input", str(lines), "--k", "5", "--intent", "rocket orbit"])
    assert res.exit_code == 0, res.output
    out = [json.loads(x) for x in res.output.strip().splitlines() if x.startswith("{")]
    assert len(out) == 2 and out[0]["items"] == a.items
    same = rec.recommend_batch([hist, []], k=5, intents=["jazz saxophone evening club", "rocket orbit"])
    assert out[1]["items"] == same[1].items  # the line without an intent got --intent


# -- idreamrec-residual ----------------------------------------------------------------------------
def _model(cls, cfg_cls, ds, tmp, **over):
    model = cls(ds.n_items, 10, cfg_cls(**{**FAST, "text_cache_dir": str(tmp / "cache"), **over}))
    model.fit_statistics(ds)
    return model


def test_residual_starts_as_idreamrec(data, tmp_path):
    """idreamrec-residual (not the paper's method): at initialisation (r = 0) it has iDreamRec's table, loss and
    scores."""
    data = data.dataset
    torch.manual_seed(0)
    base = _model(IDreamRec, IDreamRecConfig, data, tmp_path)
    torch.manual_seed(0)
    resid = _model(IDreamRecResidual, IDreamRecResidualConfig, data, tmp_path)
    resid.load_state_dict({**base.state_dict(), "item_residual.weight": resid.item_residual.weight}, strict=True)
    assert torch.equal(resid.item_embeddings(), base.item_embeddings())
    batch = Batch(torch.from_numpy(data.val.history[:64, -10:].copy()), torch.from_numpy(data.val.target[:64].copy()))
    losses = []
    for m in (base, resid):
        torch.manual_seed(1)
        losses.append(m.loss(batch))
    torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=0)
    base.eval(), resid.eval()
    torch.manual_seed(2)
    a = base.score(batch.history)
    torch.manual_seed(2)
    torch.testing.assert_close(resid.score(batch.history), a, rtol=0, atol=0)


@pytest.mark.parametrize("target,target_gets_grad", [("stopgrad", False), ("joint", True)])
def test_residual_gradient_paths(data, tmp_path, target, target_gets_grad):
    """Empty histories: the residual learns only through the x0 target, which ``stopgrad`` cuts."""
    data = data.dataset
    model = _model(IDreamRecResidual, IDreamRecResidualConfig, data, tmp_path, residual_target=target)
    model.train()
    batch = Batch(torch.zeros(8, 10, dtype=torch.long), torch.arange(1, 9))
    model.loss(batch).backward()
    grad = model.item_residual.weight.grad
    assert (grad[1:9].abs().sum() > 0) == target_gets_grad
    assert grad[9:].abs().sum() == 0


def test_residual_cold_items_keep_their_text(data, tmp_path):
    """Items never trained on keep r = 0 after training (ranked by their text alone); trained ones move."""
    ds, cold = cold_start_split(data.dataset, frac=0.1, seed=0)
    torch.manual_seed(0)
    model = _model(IDreamRecResidual, IDreamRecResidualConfig, ds, tmp_path)
    train(model, ds, TrainConfig(**{**TRAIN, "epochs": 2}), tmp_path / "run", progress=False)
    r = model.item_residual.weight.detach()
    assert r[torch.from_numpy(cold)].abs().sum() == 0
    warm = np.setdiff1d(np.arange(1, ds.n_items + 1), cold)
    assert (r[torch.from_numpy(warm)].abs().sum(1) > 0).all()
    torch.testing.assert_close(model.item_embeddings()[torch.from_numpy(cold)],
                               model.text_table()[torch.from_numpy(cold)], rtol=0, atol=0)


def test_residual_lets_collaborative_signal_in(data, tmp_path):
    """With the item texts shuffled across items (the text says nothing about an item's topic), the fixed
    text table cannot find the planted next-topic pattern; the learned residual does better."""
    data = data.dataset
    meta = data.item_meta.copy()
    meta["text"] = meta["text"].values[np.random.default_rng(0).permutation(len(meta))]
    shuffled = dataclasses.replace(data, item_meta=meta)
    hr = {}
    for cls, cfg_cls in ((IDreamRec, IDreamRecConfig), (IDreamRecResidual, IDreamRecResidualConfig)):
        torch.manual_seed(0)
        model = cls(data.n_items, 10, cfg_cls(**FAST, text_cache_dir=str(tmp_path / "cache")))
        train(model, shuffled, TrainConfig(**TRAIN), tmp_path / cls.name, progress=False)
        hr[cls.name] = evaluate(model, shuffled.test, ks=(20,))["HR@20"]
    assert hr["idreamrec-residual"] > hr["idreamrec"] + 0.05, hr
