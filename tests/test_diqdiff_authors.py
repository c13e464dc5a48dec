"""diqdiff-authors: DiQDiff as its authors' (DiffuRec-based) code runs it: batch quantization, the contrastive
discrepancy term, a constant lambda, and learning on the planted pattern."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import SASREC_CE_PLANTED_HR20, planted_hr20
from dreamrec.data.batching import Batch
from dreamrec.models import build_model
from dreamrec.models.diqdiff_authors import DiQDiffAuthorsConfig, discrepancy_loss, quantize
from dreamrec.nn.approximators import sample_lambda

SMALL = {"hidden": 32, "n_blocks": 1, "n_heads": 2, "timesteps": 8, "n_codes": 4}


def test_quantize_codes_are_the_means_of_their_rows() -> None:
    X = torch.tensor([[1.0, 0.0], [3.0, 2.0], [0.0, 4.0], [2.0, 6.0], [5.0, 5.0]], requires_grad=True)
    logits = torch.tensor([[50.0, -50, -50], [50, -50, -50], [-50, 50, -50], [-50, 50, -50], [-50, 50, -50]])
    torch.manual_seed(0)
    codes, picks = quantize(X, lambda flat: logits, temperature=0.1)
    assert picks.tolist() == [0, 0, 1, 1, 1]
    torch.testing.assert_close(codes[0], torch.tensor([2.0, 1.0]))
    torch.testing.assert_close(codes[1], torch.tensor([7.0 / 3, 5.0]))
    assert any(torch.equal(codes[2], row) for row in X.detach())  # no row picked code 2: a row of the batch
    codes[0].sum().backward()
    torch.testing.assert_close(X.grad[:2], torch.full((2, 2), 0.5))
    assert X.grad[2:].abs().sum() == 0


def test_quantize_with_fewer_rows_than_codes() -> None:
    codes, picks = quantize(torch.randn(2, 3, 4), torch.nn.Linear(12, 5), temperature=0.1)
    assert codes.shape == (5, 3, 4) and picks.shape == (2,)


def test_discrepancy_loss_is_the_authors_infonce() -> None:
    """Their contra_loss: logits [positive, negatives...] / 0.07 against class 0, each row its own positive."""
    x = torch.randn(6, 5)
    sim = F.cosine_similarity(x[:, None], x[None], dim=-1) / 0.07
    rows = [torch.cat([sim[i, i : i + 1], torch.cat([sim[i, :i], sim[i, i + 1 :]])]) for i in range(6)]
    expected = F.cross_entropy(torch.stack(rows), torch.zeros(6, dtype=torch.long))
    torch.testing.assert_close(discrepancy_loss(x, 0.07), expected)


def test_lambda_is_constant_and_defaults_are_the_authors() -> None:
    assert torch.equal(sample_lambda((3, 4), 0.001, std=0.0), torch.full((3, 4), 0.001))
    cfg = DiQDiffAuthorsConfig()
    assert (cfg.hidden, cfg.n_blocks, cfg.timesteps, cfg.beta_schedule) == (128, 4, 32, "trunc_lin")
    assert (cfg.official_padding, cfg.block_dropout, cfg.gelu, cfg.init, cfg.delta_std) == (True, True, "tanh", "xavier", 0.0)
    assert (cfg.n_codes, cfg.lambda_q, cfg.lambda_h, cfg.lambda_c, cfg.code_temperature) == (32, 0.4, 0.6, 1.0, 0.1)


def test_code_selector_gets_no_gradient_and_loss_adds_the_term() -> None:
    torch.manual_seed(0)
    model = build_model("diqdiff-authors", 30, 6, SMALL)
    model.train()
    history = torch.randint(0, 31, (16, 6))
    batch = Batch(history, torch.randint(1, 31, (16,)))
    loss = model.loss(batch)
    loss.backward()
    assert model.code_selector.weight.grad is None  # picked through argmax only, as in their code
    assert model.item_embedding.weight.grad is not None
    off = build_model("diqdiff-authors", 30, 6, {**SMALL, "lambda_c": 0.0})
    off.load_state_dict(model.state_dict())
    off.train()
    for m in (model, off):
        torch.manual_seed(1)
        m.value = float(m.loss(batch))
    assert model.value > off.value  # the same cross-entropy (same weights and draws) plus L_c > 0


def test_short_histories_are_padded_to_the_window() -> None:
    model = build_model("diqdiff-authors", 30, 6, SMALL).eval()
    assert model.score(torch.tensor([[3, 4]])).shape == (1, 30)


def test_planted_pattern(tmp_path: Path) -> None:
    hr, hr_pop = planted_hr20("diqdiff-authors", SMALL, tmp_path)
    assert hr >= 1.5 * hr_pop and hr >= 0.8 * SASREC_CE_PLANTED_HR20, (hr, hr_pop)
