"""The authors' code as options of ``diffurec`` and the ``diffurecsys`` model: hand-computed checks of
the query-only attention mask, the learned padding row, the block dropout, DiffuRecSys's linear
cross-attention and its last-block-only output, the beta_t reverse variance, the any-metric selection
rule of the trainer, the faithful configs, learning on a planted pattern and save/load."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_reload_identical, planted_hr20

from dreamrec.config import TrainConfig, build_run_config, load_yaml
from dreamrec.data.batching import Batch
from dreamrec.data.synthetic import SyntheticConfig, generate
from dreamrec.diffusion import DiffusionScheduler
from dreamrec.errors import ConfigError
from dreamrec.models import build_model
from dreamrec.nn.approximators import ApproximatorBlock
from dreamrec.nn.diffurecsys import DiffuRecSysApproximator, DiffuRecSysBlock, LinearCrossAttention
from dreamrec.nn.dropout import Dropout
from dreamrec.nn.official_layers import QueryMaskedSelfAttention, query_mask
from dreamrec.train.trainer import improves, train, validates

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL = {"official_padding": True, "block_dropout": True, "layer_norm_eps": 1e-12, "gelu": "tanh",
            "init": "xavier", "reverse_variance": "beta", "trim_padding": False}
SMALL = {"hidden": 16, "n_blocks": 2, "n_heads": 2, "timesteps": 6}


def test_query_masked_attention_by_hand() -> None:
    """A real query attends to every key, padding included; a padded query averages all values."""
    torch.manual_seed(0)
    att = QueryMaskedSelfAttention(4, 1, 0.0).eval()
    x = torch.randn(1, 3, 4)
    valid = torch.tensor([[False, True, True]])
    out = att(x, query_mask(valid))
    q, k, v = att.qkv(x).split(4, dim=-1)
    a = torch.softmax(q @ k.transpose(1, 2) / 2.0, dim=-1)  # every key, no mask
    a[0, 0] = 1 / 3  # the padded query: the row of -1e9 is uniform
    assert torch.allclose(out, att.out(a @ v), atol=1e-6)
    assert torch.allclose(att.forward_last(x, query_mask(valid))[:, 0], out[:, -1], atol=1e-6)


def test_learned_padding_row_and_softmax_over_it() -> None:
    model = build_model("diffurec", 30, 8, {**SMALL, **OFFICIAL})
    E = model.item_embedding.weight
    assert E[0].abs().sum() > 0 and model.item_embedding.padding_idx is None
    h = torch.tensor([[0, 0, 0, 0, 0, 3, 4, 5]])
    captured = {}
    hook = model.approximator.register_forward_hook(lambda m, a, out: captured.update(x0=out))
    torch.manual_seed(1)
    loss = model.loss(Batch(h, torch.tensor([7])))
    assert torch.allclose(loss, F.cross_entropy(captured["x0"] @ E.T, torch.tensor([7])))  # 31 classes
    loss.backward()
    assert E.grad[0].abs().sum() > 0  # the padding row learns
    hook.remove()
    # a real position attends to the padding positions: changing E[0] changes the result
    model.eval()
    torch.manual_seed(2)
    before = model.approximator(*model.history_representation(h), torch.zeros(1, 16), torch.tensor([1]))
    with torch.no_grad():
        E[0] += torch.randn(16)  # (a constant shift would vanish in the LayerNorm)
    torch.manual_seed(2)
    after = model.approximator(*model.history_representation(h), torch.zeros(1, 16), torch.tensor([1]))
    assert not torch.allclose(before, after)


def test_masked_padding_default_ignores_padding() -> None:
    model = build_model("diffurec", 30, 8, {**SMALL, "trim_padding": False}).eval()
    assert model.item_embedding.weight[0].abs().sum() == 0


def test_block_dropout_is_the_last_operation() -> None:
    torch.manual_seed(0)
    block = ApproximatorBlock(8, 2, 0.5, False, official_padding=True, block_dropout=True)
    for m in block.modules():  # silence every dropout inside the block
        if isinstance(m, Dropout) and m is not block.out_dropout:
            m.p = 0.0
    block.attn.attn_dropout = 0.0
    x, valid = torch.randn(3, 5, 8), torch.ones(3, 5, dtype=torch.bool)
    clean = block.eval()(x, query_mask(valid))
    out = block.train()(x, query_mask(valid))
    kept = out != 0
    assert 0.3 < kept.float().mean() < 0.7
    assert torch.allclose(out[kept], 2 * clean[kept], atol=1e-5)  # dropped or scaled by 1 / (1 - p)


@pytest.mark.parametrize("official", [False, True])
def test_official_block_last_position_is_exact(official: bool) -> None:
    torch.manual_seed(0)
    kw = {k: OFFICIAL[k] for k in ("official_padding", "block_dropout", "layer_norm_eps", "gelu", "init")}
    block = ApproximatorBlock(8, 2, 0.1, False, **(kw if official else {})).eval()
    x = torch.randn(3, 5, 8)
    valid = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]], dtype=torch.bool)
    mask = query_mask(valid) if official else valid[:, None, None, :] | torch.eye(5, dtype=torch.bool)
    assert torch.allclose(block.forward_last(x, mask), block(x, mask)[:, -1], atol=1e-5)


def test_linear_cross_attention_by_hand() -> None:
    torch.manual_seed(0)
    ca = LinearCrossAttention(4, 2, 0.0).eval()
    g, m = torch.randn(1, 3, 4), torch.randn(1, 3, 4)
    valid = torch.tensor([[False, True, True]])
    out = ca(g, m, valid)
    q, k, v = ca.q(g)[0], ca.k(m)[0], ca.v(m)[0]  # [L, d]
    rows = torch.zeros(3, 4)
    for h in range(2):
        sl = slice(2 * h, 2 * h + 2)
        qh = torch.softmax(q[:, sl], dim=-1)  # over the head's 2 features
        # softmax over the heads: at every position and feature, across the two heads
        kh = torch.exp(k[:, sl]) / (torch.exp(k[:, 0:2]) + torch.exp(k[:, 2:4]))
        rows[:, sl] = qh @ (kh.T @ v[:, sl])
    rows[0] = -1e9  # the padded position
    assert torch.allclose(out[0], ca.out(rows), rtol=1e-5, atol=1e-2)
    assert torch.allclose(out[0, 1:], ca.out(rows)[1:], atol=1e-5)


def test_diffurecsys_only_the_last_block_counts() -> None:
    torch.manual_seed(0)
    apx = DiffuRecSysApproximator(8, n_blocks=3, n_heads=2, dropout=0.1).eval()
    e, x_t, t = torch.randn(2, 5, 8), torch.randn(2, 8), torch.tensor([3, 1])
    valid = torch.tensor([[0, 1, 1, 1, 1], [0, 0, 0, 1, 1]], dtype=torch.bool)

    def run() -> torch.Tensor:
        torch.manual_seed(5)
        return apx(e, valid, x_t, t)

    ref = run()
    with torch.no_grad():
        for p in apx.blocks[0].parameters():
            p.add_(1.0)
    assert torch.equal(run(), ref)  # an earlier block: no effect (every block reads the original input)
    with torch.no_grad():
        apx.blocks[-1].ffn.fc2.bias.add_(torch.randn(8))
    assert not torch.allclose(run(), ref)
    # the last-position shortcut is the full block's last row
    block: DiffuRecSysBlock = apx.blocks[-1]
    g = torch.randn(2, 5, 8)
    assert torch.allclose(block.forward_last(e, g, valid), block(e, g, valid)[:, -1], atol=1e-4)


def test_beta_reverse_variance() -> None:
    post = DiffusionScheduler(num_train_timesteps=8, beta_schedule="trunc_lin")
    beta = DiffusionScheduler(num_train_timesteps=8, beta_schedule="trunc_lin", variance="beta")
    order = beta.timesteps.tolist()  # descending, ends at 0
    expected = [math.sqrt(float(beta.betas[t])) if t > 0 else 0.0 for t in order]
    assert torch.allclose(beta._sigma.float(), torch.tensor(expected), atol=1e-7)
    assert float(post._sigma[0]) < float(beta._sigma[0])  # beta~_t < beta_t
    with pytest.raises(ValueError):
        DiffusionScheduler(num_train_timesteps=8, variance="large")  # type: ignore[arg-type]


def test_selection_any_metric_improved() -> None:
    cfg = TrainConfig(select="any_improved", select_metrics=["HR@20", "NDCG@20"])
    state: dict = {"best_value": None}
    vals = [{"HR@20": 0.1, "NDCG@20": 0.05}, {"HR@20": 0.2, "NDCG@20": 0.04},  # HR improves
            {"HR@20": 0.15, "NDCG@20": 0.045}, {"HR@20": 0.19, "NDCG@20": 0.06},  # nothing, then NDCG beats 0.05
            {"HR@20": 0.2, "NDCG@20": 0.06}]  # ties do not count
    assert [improves(cfg, state, v) for v in vals] == [True, True, False, True, False]
    assert state["metric_bests"] == {"HR@20": 0.2, "NDCG@20": 0.06}
    best = TrainConfig(val_metric="HR@20")
    state = {"best_value": 0.2}
    assert not improves(best, state, vals[3])
    with pytest.raises(ConfigError):
        improves(TrainConfig(select="any_improved", select_metrics=["MRR@7"]), {"best_value": None}, vals[0])


def test_official_validation_epochs() -> None:
    cfg = TrainConfig(eval_every=20, eval_offset=1)  # the code's epoch_temp != 0 and epoch_temp % 20 == 0
    assert [e for e in range(1, 100) if validates(cfg, e)] == [21, 41, 61, 81]
    assert [e for e in range(1, 42) if validates(TrainConfig(eval_every=8, eval_offset=1), e)] == [9, 17, 25, 33, 41]


def test_trainer_keeps_the_last_validation_where_any_metric_improved(tmp_path: Path) -> None:
    ds = generate(SyntheticConfig(n_users=60, n_items=25, n_topics=3, min_len=4, max_len=8, seed=3)).dataset
    cfg = TrainConfig(epochs=6, batch_size=64, lr=3e-3, eval_every=2, eval_offset=1, patience=100, seed=0,
                      select="any_improved", grad_clip=None, val_metric="HR@20", threads=1)
    torch.manual_seed(0)
    model = build_model("diffurec", ds.n_items, ds.max_len, {**SMALL, **OFFICIAL})
    result = train(model, ds, cfg, tmp_path, progress=False, log=lambda s: None)
    validated = [e for e in result.history if "val" in e]
    assert [e["epoch"] for e in validated] == [3, 5, 6]  # 6: the last epoch is always validated
    bests: dict[str, float] = {}
    expected = 0
    for e in validated:
        better = [m for m in cfg.select_metrics if e["val"][m] > bests.get(m, -1.0)]
        bests.update({m: e["val"][m] for m in better})
        expected = e["epoch"] if better else expected
    assert result.best_epoch == expected


def test_bad_configs_are_refused() -> None:
    with pytest.raises(ConfigError, match="trim_padding"):
        build_model("diffurec", 30, 8, {**SMALL, "official_padding": True, "trim_padding": True})
    with pytest.raises(ConfigError, match="cross_attention"):
        build_model("diffurecsys", 30, 8, {**SMALL, "cross_attention": True})
    with pytest.raises(ConfigError):
        build_model("diffurecsys", 30, 8, {**SMALL, "official_padding": False})


def test_faithful_configs() -> None:
    for ds in ("beauty", "ml-1m"):
        cfg = build_run_config(load_yaml(ROOT / "configs" / "diffurec" / f"{ds}.yaml"))
        c = build_model(cfg.model, 20, 50, cfg.params).config
        assert (c.official_padding, c.block_dropout, c.layer_norm_eps, c.gelu, c.init, c.reverse_variance) == (
            True, True, 1e-12, "tanh", "xavier", "beta")
        t = cfg.train
        assert (t.epochs, t.lr_decay_step, t.eval_every, t.eval_offset, t.patience, t.select, t.grad_clip, t.max_len) \
            == (500, 100, 20, 1, 100, "any_improved", None, 50)
        sys_cfg = build_run_config(load_yaml(ROOT / "configs" / "diffurecsys" / f"{ds}.yaml"))
        assert sys_cfg.model == "diffurecsys" and sys_cfg.params["hidden"] == 256
        t = sys_cfg.train
        assert (t.epochs, t.lr_decay_step, t.eval_every, t.patience, t.weight_decay, t.max_len) == (
            41, 30, 8, 24, 1e-4, 100)
    off = build_run_config(load_yaml(ROOT / "configs" / "diffurecsys" / "beauty-offset.yaml"))
    c = build_model(off.model, 20, 100, off.params).config
    assert (c.offset_noise, c.offset_mode) == (0.1, "element")


@pytest.mark.parametrize(("name", "params"), [
    ("diffurec", OFFICIAL),
    ("diffurecsys", {"hidden": 32}),
])
def test_planted_pattern_faithful(name: str, params: dict, tmp_path: Path) -> None:
    hr, hr_pop = planted_hr20(name, {"hidden": 32, "n_blocks": 1, "n_heads": 2, "timesteps": 8, **params}, tmp_path)
    assert hr >= 1.5 * hr_pop, (hr, hr_pop)


@pytest.mark.parametrize("name", ["diffurec", "diffurecsys"])
def test_save_load_identical_scores(name: str, tmp_path: Path) -> None:
    ds = generate(SyntheticConfig(n_users=60, n_items=25, n_topics=3, min_len=4, max_len=8, seed=3)).dataset
    params = {**SMALL, **OFFICIAL} if name == "diffurec" else SMALL
    assert_reload_identical(name, params, ds, tmp_path)


def test_any_improved_selection_resumes_exactly(tmp_path: Path) -> None:
    """The per-metric bests live in the checkpoint: 2 epochs + --resume to 5 = 5 epochs in one go."""
    ds = generate(SyntheticConfig(n_users=60, n_items=25, n_topics=3, min_len=4, max_len=8, seed=3)).dataset

    def run(out: Path, epochs: int, resume: bool = False) -> Any:
        cfg = TrainConfig(epochs=epochs, batch_size=64, lr=3e-3, eval_every=1, patience=100, seed=0,
                          select="any_improved", grad_clip=None, threads=1)
        torch.manual_seed(0)
        model = build_model("diffurec", ds.n_items, ds.max_len, {**SMALL, **OFFICIAL})
        return train(model, ds, cfg, out, resume=resume, progress=False, log=lambda s: None)

    whole = run(tmp_path / "a", 5)
    run(tmp_path / "b", 2)
    resumed = run(tmp_path / "b", 5, resume=True)
    assert resumed.best_epoch == whole.best_epoch
    assert [e["val"] for e in resumed.history] == [e["val"] for e in whole.history]
