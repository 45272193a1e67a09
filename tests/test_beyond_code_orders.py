"""beyond/code_orders.py: taming's six orders of the code grid (App. F, Fig. 47) as permutations,
lesson 04's prior in any of them (causal in the order, cached sampling = forward), its checkpoint."""

import importlib
from pathlib import Path

import pytest
import torch

import common


@pytest.fixture(scope="module")
def orders():
    return importlib.import_module("beyond.code_orders")


def ordered_model(orders, order, K=7, d_code=5, T=9, D=3, classes=3, seed=0):
    torch.manual_seed(seed)
    cfg = orders.Config(width=16, heads=2, spatial_layers=2, depth_layers=1, order=order)
    return orders.OrderedRQTransformer(torch.randn(K, d_code), T, D, cfg, classes).eval()


@pytest.mark.parametrize("H", [1, 2, 3, 4, 5, 8])
def test_every_order_is_a_permutation_and_the_paths_move_one_step_at_a_time(orders, H):
    for name in orders.ORDERS:
        order = orders.code_order(name, H * H)
        assert torch.equal(order.sort().values, torch.arange(H * H)), name
    assert torch.equal(orders.code_order("row-major", H * H), torch.arange(H * H))
    for name in ("alternate", "spiral-in", "spiral-out"):  # a path of grid neighbours
        path = orders.code_order(name, H * H)
        i, j = path.div(H, rounding_mode="floor"), path % H
        assert ((i.diff().abs() + j.diff().abs()) == 1).all(), name
    spiral_in = orders.code_order("spiral-in", H * H)
    border = torch.tensor([r in (0, H - 1) or c in (0, H - 1) for r in range(H) for c in range(H)])
    assert border[spiral_in[: int(border.sum())]].all()  # the border before anything inside it


def test_the_z_curve_and_subsample_orders_of_a_4x4_grid_are_those_of_taming_fig_47(orders):
    step = lambda name: orders.code_order(name, 16).argsort().view(4, 4)  # the step of each position
    z = [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]
    sub = [[0, 4, 1, 5], [8, 12, 9, 13], [2, 6, 3, 7], [10, 14, 11, 15]]
    assert step("z-curve").tolist() == z and step("subsample").tolist() == sub
    first = orders.code_order("subsample", 64)  # 8 x 8: a 2x-subsampled grid first, then 4x inside it
    assert all(p // 8 % 2 == 0 and p % 8 % 2 == 0 for p in first[:16].tolist())
    assert all(p // 8 % 4 == 0 and p % 8 % 4 == 0 for p in first[:4].tolist())


def test_the_spirals_of_4x4_and_8x8_grids_are_those_of_tamings_permuters(orders):
    """taming's SpiralIn (its SpiralOut is the same path backwards): the raster index of each step."""
    spiral_in_4 = [15, 11, 7, 3, 2, 1, 0, 4, 8, 12, 13, 14, 10, 6, 5, 9]
    spiral_in_8 = [63, 55, 47, 39, 31, 23, 15, 7, 6, 5, 4, 3, 2, 1, 0, 8, 16, 24, 32, 40, 48, 56, 57,
                   58, 59, 60, 61, 62, 54, 46, 38, 30, 22, 14, 13, 12, 11, 10, 9, 17, 25, 33, 41, 49,
                   50, 51, 52, 53, 45, 37, 29, 21, 20, 19, 18, 26, 34, 42, 43, 44, 36, 28, 27, 35]  # fmt: skip
    for table in (spiral_in_4, spiral_in_8):
        assert orders.code_order("spiral-in", len(table)).tolist() == table
        assert orders.code_order("spiral-out", len(table)).tolist() == table[::-1]


@pytest.mark.parametrize(
    "order", ["row-major", "alternate", "spiral-in", "spiral-out", "z-curve", "subsample"]
)
def test_a_prior_in_any_order_is_causal_in_that_order_and_samples_in_it(orders, order):
    m, c = ordered_model(orders, order), torch.tensor([0, 2])
    steps = orders.code_order(order, 9)  # raster index of each step
    codes = torch.randint(7, (2, 9, 3))
    for k in (0, 4, 8):  # redraw the codes of every position after step k
        changed = codes.clone()
        changed[:, steps[k + 1 :]] = torch.randint(7, changed[:, steps[k + 1 :]].shape)
        with torch.no_grad():
            a, b = m(codes, c), m(changed, c)
        torch.testing.assert_close(a[:, steps[: k + 1]], b[:, steps[: k + 1]])  # steps 0..k unchanged
    torch.manual_seed(3)
    drawn, logits = m.sample(c)  # raster order out, drawn in the order; the cache agrees with forward
    torch.testing.assert_close(logits, m(drawn, c), atol=1e-5, rtol=1e-5)


def test_row_major_is_lesson_04s_prior_and_another_order_is_it_on_the_permuted_positions(orders):
    ar = common.lesson("04_rq_transformer")
    m, c, codes = ordered_model(orders, "z-curve"), torch.tensor([0, 1]), torch.randint(7, (2, 9, 3))
    plain = ar.RQTransformer(m.codebook, 9, 3, orders.Config(width=16, heads=2, spatial_layers=2), 3).eval()
    plain.load_state_dict({k: v for k, v in m.state_dict().items() if k != "order"})
    with torch.no_grad():
        steps = orders.code_order("z-curve", 9)
        torch.testing.assert_close(m(codes, c), plain(codes[:, steps], c)[:, steps.argsort()])
    assert torch.equal(m.state_dict()["order"], steps)  # the checkpoint holds the order
    with pytest.raises(AssertionError, match="--order z-curve needs a square code grid, not T = 6"):
        ordered_model(orders, "z-curve", T=6)


def test_the_command_trains_a_prior_in_its_order_and_the_benchmark_tables_the_orders(
    tokenizer, tmp_path, capsys
):
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "code_order.py"
    spec = importlib.util.spec_from_file_location("code_order", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    tiny = [
        "--width",
        "16",
        "--heads",
        "2",
        "--batch-size",
        "8",
        "--eval-images",
        "8",
        "--samples-per-class",
        "1",
    ]
    bench.main(
        [
            "--tokenizer",
            str(tokenizer),
            "--orders",
            "z-curve",
            "alternate",
            "--steps",
            "2",
            "--out",
            str(tmp_path),
            *tiny,
        ]
    )
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("| z", "| a"))]
    assert [r.split(" | ")[0] for r in rows] == ["| z-curve", "| alternate"]
    for order, row in zip(["z-curve", "alternate"], rows):
        ckpt = common.load_checkpoint(tmp_path / order / "ckpt.pt")
        assert ckpt["lesson"] == "code_orders" and ckpt["config"]["order"] == order
        assert torch.equal(
            ckpt["model"]["order"], importlib.import_module("beyond.code_orders").code_order(order, 64)
        )
        assert f"| {bench.final_record(tmp_path / order)['val_bits_per_code']:.4f} |" in row
