"""The helper module: datasets (built-in and Hugging Face), the CLI builder, checkpoints."""

import contextlib
import dataclasses
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import common

ROOT = Path(__file__).resolve().parent.parent


def data_cfg(**kw):
    return common.TrainConfig(**{"batch_size": 4, **kw})


# --- the built-in shapes dataset ---


def test_shapes_are_identical_for_an_identical_seed():
    for i in (0, 7, 123):
        assert np.array_equal(common.render_shape(i, 32)[0], common.render_shape(i, 32)[0])
    assert not np.array_equal(common.render_shape(1, 32)[0], common.render_shape(2, 32)[0])


def test_shapes_dataset_values_shapes_and_labels():
    train = common.Shapes("train", 32, seed=0)
    x = torch.stack([train[i]["image"] for i in range(200)])
    labels = {train[i]["label"] for i in range(200)}
    assert x.shape == (200, 3, 32, 32) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1 and x.std() > 0.2
    assert labels == set(range(len(common.SHAPE_CLASSES))) and len(common.SHAPE_CLASSES) >= 6


def test_plain_shapes_use_one_palette_background_and_one_palette_colour():
    """Every pixel is the image's palette background, its palette shape colour, or a blend of the
    two at the shape's edge; all four backgrounds and most classes occur."""
    backgrounds = [np.array(c, np.float32) for c in common.PLAIN_BACKGROUNDS]
    colours = [np.array(c, np.float32) for c in common.PLAIN_COLOURS]
    seen = set()
    for seed in range(40):
        img, label = common.render_shape(seed, 32, plain=True)
        px = img.reshape(-1, 3).astype(np.float32)
        bg = min(backgrounds, key=lambda c: np.abs(px - c).sum(1).min())  # the exact one present
        fg = min(colours, key=lambda c: np.abs(px - c).sum(1).min())
        # distance of each pixel to the segment between bg and fg (blends at the shape's edge)
        t = np.clip(((px - bg) @ (fg - bg)) / ((fg - bg) @ (fg - bg)), 0, 1)
        assert np.abs(px - (bg + t[:, None] * (fg - bg))).max() <= 1.0
        assert (np.abs(px - bg).sum(1) == 0).mean() > 0.3 and (np.abs(px - fg).sum(1) == 0).any()
        seen.add((tuple(bg), tuple(fg), label))
    assert len({s[2] for s in seen}) >= 6 and len({s[0] for s in seen}) == 4


def test_plain_shapes_are_a_dataset_name():
    cfg = data_cfg(dataset="shapes-plain")
    train, val, classes = common.load_data(cfg)
    assert train.plain and val.plain and classes == common.SHAPE_CLASSES
    assert "shapes-plain" in common.dataset_choices()
    assert not torch.equal(train[0]["image"], common.Shapes("train", 32, 0)[0]["image"])


def test_shapes_split_is_fixed_and_disjoint():
    train, val = common.Shapes("train", 32, 0), common.Shapes("val", 32, 0)
    assert (len(train), len(val)) == (common.SHAPES_TRAIN, common.SHAPES_VAL)
    assert not torch.equal(train[0]["image"], val[0]["image"])
    assert torch.equal(val[5]["image"], common.Shapes("val", 32, 0)[5]["image"])
    assert not torch.equal(val[5]["image"], common.Shapes("val", 32, 1)[5]["image"])


@pytest.mark.parametrize("size", [8, 64, 256])
def test_shapes_render_at_any_multiple_of_eight(size):
    item = common.Shapes("val", size, 0)[3]
    assert item["image"].shape == (3, size, size)


@pytest.mark.parametrize("size", [12, 0, 264])
def test_shapes_reject_sizes_that_are_not_multiples_of_eight_up_to_256(size):
    with pytest.raises(ValueError, match="multiple of 8"):
        data_cfg(image_size=size)


def test_batches_are_reproducible_and_skip_exactly_on_resume():
    ds, cfg = common.Shapes("val", 32, 0), data_cfg(batch_size=8)
    first = [next(common.batches(ds, cfg))[1] for _ in range(2)]
    stream = common.batches(ds, cfg)
    seq = [next(stream)[1] for _ in range(130)]  # crosses an epoch (125 batches)
    assert torch.equal(first[0], first[1])
    resumed = common.batches(ds, cfg, start_step=124)
    assert torch.equal(next(resumed)[1], seq[124]) and torch.equal(next(resumed)[1], seq[125])


def test_ranks_get_disjoint_batches():
    ds, cfg = common.Shapes("val", 32, 0), data_cfg(batch_size=8)
    r0 = next(common.batches(ds, cfg, rank=0, world=2))[0]
    r1 = next(common.batches(ds, cfg, rank=1, world=2))[0]
    assert not any(torch.equal(a, b) for a in r0 for b in r1)


# --- image conversion ---


def test_image_to_tensor_makes_rgb_resizes_and_centre_crops():
    gray = Image.fromarray(np.tile(np.arange(40, dtype=np.uint8) * 6, (20, 1)), mode="L")  # 40 x 20
    x = common.image_to_tensor(gray, 16)
    assert x.shape == (3, 16, 16) and x.min() >= -1 and x.max() <= 1
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])  # gray -> equal channels
    assert x[0, :, 0].mean() < x[0, :, -1].mean()  # the horizontal ramp survives


# --- Hugging Face datasets, offline, on files written here ---


def write_image_folder(root: Path, n_per_class=12, classes=("cats", "dogs")) -> Path:
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(n_per_class):
            size = (40 + i, 30 + 2 * i)  # odd, non-square sizes
            arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            mode_img = Image.fromarray(arr).convert("L") if i % 3 == 0 else Image.fromarray(arr)
            mode_img.save(root / name / f"{i}.png")
    return root


def write_parquet(path: Path, n=20) -> Path:
    import datasets

    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (24, 36, 3), dtype=np.uint8)) for _ in range(n)]
    features = datasets.Features(
        {"picture": datasets.Image(), "kind": datasets.ClassLabel(names=["a", "b", "c"])}
    )
    ds = datasets.Dataset.from_dict({"picture": images, "kind": [i % 3 for i in range(n)]}, features=features)
    ds.to_parquet(str(path))
    return path


def test_image_folder_loads_through_the_hub_code_path(tmp_path):
    folder = write_image_folder(tmp_path / "imgs")
    train, val, classes = common.load_data(data_cfg(dataset=str(folder), image_size=16, label_column="label"))
    assert classes == ("cats", "dogs") and len(train) + len(val) == 24 and len(val) == 2
    x, y, _ = next(common.batches(train, data_cfg(batch_size=4)))
    assert x.shape == (4, 3, 16, 16) and x.min() >= -1 and x.max() <= 1
    assert set(y.tolist()) <= {0, 1}


def test_parquet_file_loads_with_custom_columns(tmp_path):
    path = write_parquet(tmp_path / "data.parquet")
    cfg = data_cfg(dataset=str(path), image_size=8, image_column="picture", label_column="kind")
    train, val, classes = common.load_data(cfg)
    assert classes == ("a", "b", "c") and len(train) == 18
    x, y = common.first_images(val, 2)
    assert x.shape == (2, 3, 8, 8) and set(y.tolist()) <= {0, 1, 2}


def test_a_class_sorted_folder_holds_out_every_class_at_random_and_the_same_each_time(tmp_path):
    """An image folder is sorted by class: the held-out images must come from every class in
    proportion, never be trained on, and be the same on every load (and rank)."""
    folder = write_image_folder(tmp_path / "imgs", n_per_class=30, classes=("a", "b", "c", "d"))
    cfg = data_cfg(dataset=str(folder), image_size=8, label_column="label")
    train, val, _ = common.load_data(cfg)
    assert len(val) == 12 and sorted(val["label"]) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    flat = lambda ds: {tuple(ds[i]["image"].flatten().tolist()) for i in range(len(ds))}
    assert not flat(train) & flat(val) and len(train) == 108
    again = common.load_data(cfg)[1]
    assert torch.equal(common.first_images(val, 12)[0], common.first_images(again, 12)[0])


def test_held_out_indices_are_a_stratified_random_subset():
    labels = [i // 100 for i in range(1000)]  # sorted by class, 10 classes
    train, val = common.held_out_indices(1000, 100, labels)
    assert sorted(train + val) == list(range(1000)) and len(val) == 100
    assert torch.bincount(torch.tensor(labels)[val]).tolist() == [10] * 10
    assert val != list(range(0, 1000, 10)) and val == common.held_out_indices(1000, 100, labels)[1]


@pytest.mark.slow  # the datasets library sleeps 5 s as each parquet stream closes
def test_a_stream_holds_out_a_shuffled_sample_that_training_never_sees(tmp_path):
    path = write_parquet(tmp_path / "data.parquet", n=common.HELD_OUT + 40)
    cfg = data_cfg(
        dataset=str(path), image_size=8, image_column="picture", label_column="kind", streaming=True
    )
    train, val, _ = common.load_data(cfg)
    assert isinstance(train, torch.utils.data.IterableDataset) and len(val) == common.HELD_OUT
    x_val = common.first_images(val, common.HELD_OUT)[0].flatten(1)
    x_train = torch.stack([item["image"] for item in train]).flatten(1)
    assert len(x_train) == 40 and torch.cdist(x_train, x_val).min() > 1e-3  # disjoint
    assert common.first_images(val, 3)[1].tolist() != [0, 1, 2]  # not simply the first rows
    x, y, _ = next(common.batches(train, cfg))
    assert x.shape == (4, 3, 8, 8) and set(y.tolist()) <= {0, 1, 2}


def test_a_stream_too_short_for_one_batch_is_an_error(tmp_path):
    """(A streamed folder: the datasets library sleeps 5 s as each parquet stream closes.)"""
    cfg = data_cfg(dataset=str(write_image_folder(tmp_path / "imgs")), image_size=8, streaming=True)
    train, _, _ = common.load_data(cfg)
    with pytest.raises(common.UserError, match="fewer than 4 training images"):
        next(common.batches(train, cfg))


def test_missing_column_error_lists_the_columns(tmp_path):
    path = write_parquet(tmp_path / "data.parquet")
    with pytest.raises(common.UserError, match="no image column 'image'; its columns are: picture, kind"):
        common.load_data(data_cfg(dataset=str(path), image_size=8))


def test_unreadable_paths_give_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(common.UserError, match="holds no files"):
        common.load_data(data_cfg(dataset=str(tmp_path / "empty")))
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(common.UserError, match="cannot load dataset"):
        common.load_data(data_cfg(dataset=str(tmp_path / "bad.parquet")))
    with pytest.raises(common.UserError, match="no such file"):
        common.load_data(data_cfg(dataset=str(tmp_path / "missing")))


def test_hub_dataset_offline_fails_with_one_line():
    with pytest.raises(
        common.UserError,
        match=r"cannot load dataset 'cifar10'.*Couldn't reach 'uoft-cs/cifar10'.*hf auth login",
    ) as err:
        common.load_data(data_cfg(dataset="cifar10"))
    assert "\n" not in str(err.value)


def test_dataset_table_names_the_known_column_traps():
    assert common.DATASETS["cifar10"].image_column == "img"
    assert (
        common.DATASETS["imagenet"].hub_id == "ILSVRC/imagenet-1k" and common.DATASETS["imagenet"].streaming
    )
    assert {
        "mnist",
        "cifar10",
        "ffhq",
        "celebahq",
        "imagenet",
        "lsun-church",
        "flowers",
    } <= common.DATASETS.keys()
    assert common.DATASETS["ffhq"].size == 256


# --- CLI builder ---


@dataclasses.dataclass
class Toy(common.TrainConfig):
    width: int = 3  # how wide
    mode: typing.Literal["a", "b"] = "a"  # which mode
    sizes: tuple[int, ...] = (1, 2)  # some sizes


def test_parse_builds_flags_of_every_kind():
    cfg = common.parse(
        Toy, ["--width=5", "--mode", "b", "--sizes", "4", "5", "6", "--no-resume", "--steps", "7"]
    )
    assert (cfg.width, cfg.mode, cfg.sizes, cfg.resume, cfg.steps) == (5, "b", (4, 5, 6), False, 7)


def test_every_flag_has_a_help_line(vq):
    helps = common._field_help(vq.Config)
    assert {f.name for f in dataclasses.fields(vq.Config)} <= {k for k, v in helps.items() if v}


def test_unknown_flags_are_rejected():
    with pytest.raises(SystemExit) as e:
        common.parse(Toy, ["--widht", "3"])
    assert e.value.code == 2


# --- checkpoints ---


def test_checkpoint_save_is_atomic_and_round_trips(tmp_path):
    cfg = data_cfg(out=str(tmp_path / "run"))
    run = common.Run(cfg)
    run.save(3, model={"w": torch.ones(2)})
    assert not list((tmp_path / "run").glob("*.tmp"))
    ckpt = common.load_checkpoint(run.ckpt_path)
    assert ckpt["step"] == 3 and torch.equal(ckpt["model"]["w"], torch.ones(2))
    assert ckpt["config"]["batch_size"] == 4


def test_corrupt_checkpoint_error_names_the_file(tmp_path):
    path = tmp_path / "ckpt.pt"
    path.write_bytes(b"\x00garbage")
    with pytest.raises(common.UserError, match=f"{path} is corrupt"):
        common.load_checkpoint(path)


def test_fresh_run_refuses_to_overwrite_a_checkpoint(tmp_path):
    cfg = data_cfg(out=str(tmp_path))
    common.Run(cfg).save(1, model={})
    with pytest.raises(common.UserError, match="--resume"):
        common.Run(cfg)
    common.Run(dataclasses.replace(cfg, overwrite=True))  # allowed when asked


def test_resume_with_different_model_flags_is_refused(tmp_path):
    common.Run(data_cfg(out=str(tmp_path))).save(1, model={})
    run = common.Run(data_cfg(out=str(tmp_path), batch_size=8, resume=True))
    with pytest.raises(common.UserError, match="--batch-size 4 \\(now 8\\)"):
        run.load()


def test_a_flag_newer_than_the_checkpoint_counts_as_its_default_on_resume(tmp_path):
    common.Run(data_cfg(out=str(tmp_path))).save(1, model={})
    ckpt = common.load_checkpoint(tmp_path / "ckpt.pt")
    del ckpt["config"]["seed"]  # as if written before --seed existed
    torch.save(ckpt, tmp_path / "ckpt.pt")
    assert common.Run(data_cfg(out=str(tmp_path), resume=True)).load()["step"] == 1  # the default: fine
    run = common.Run(data_cfg(out=str(tmp_path), seed=3, resume=True))
    with pytest.raises(common.UserError, match="--seed 0 \\(now 3\\)"):
        run.load()


def test_psnr_of_known_error():
    x = torch.zeros(2, 3, 4, 4)
    torch.testing.assert_close(
        common.psnr(x, x + 0.2), torch.full((2,), 10 * np.log10(4 / 0.04), dtype=torch.float32)
    )


def test_codebook_stats_usage_and_perplexity():
    stats = common.codebook_stats(torch.tensor([5.0, 5.0, 0.0, 0.0]))
    assert stats["usage"] == 0.5 and stats["unused"] == 2
    assert abs(stats["perplexity"] - 2.0) < 1e-9


def test_image_grid_is_written_enlarged(tmp_path):
    common.save_grid([torch.zeros(3, 3, 8, 8), torch.ones(2, 3, 8, 8)], tmp_path / "g.png", min_size=32)
    im = Image.open(tmp_path / "g.png")
    assert im.size == ((3 * 10 + 2) * 4, (2 * 10 + 2) * 4)


def test_a_local_dataset_defaults_to_its_own_image_size_and_small_images_to_the_cpu_preset(
    tmp_path,
):
    rq = common.lesson("02_rq")
    folder = tmp_path / "small"
    for name in ("a", "b"):
        (folder / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(folder / name / f"{i}.png")
    cfg = rq.Config(dataset=str(folder))
    assert common.default_image_size(cfg) == 32 and common.preset_name(cfg) == "small"
    assert (cfg.downsample, cfg.codebook_size, cfg.steps) == (4, 16, 1500)  # as on shapes
    mixed = write_image_folder(tmp_path / "mixed")  # odd, different sizes: the old default
    assert common.default_image_size(data_cfg(dataset=str(mixed))) == 256
    assert common.preset_name(rq.Config(dataset=str(mixed))) == "large"
    parquet = write_parquet(tmp_path / "d.parquet")  # 36 x 24 images: their short side
    assert common.default_image_size(data_cfg(dataset=str(parquet), image_column="picture")) == 24


# --- the row argmin ---


def test_a_hub_id_as_dataset_loads_from_the_hub_and_a_path_of_that_name_wins(tmp_path, monkeypatch):
    import datasets

    local = datasets.load_dataset(
        "parquet", data_files=str(write_parquet(tmp_path / "d.parquet")), split="train"
    )
    asked = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **kw: asked.append((a, kw)) or local)
    monkeypatch.chdir(tmp_path)
    cfg = data_cfg(dataset="owner/name", image_size=8, image_column="picture", label_column="kind")
    train, val, classes = common.load_data(cfg)
    assert asked[0][0] == ("owner/name",) and asked[0][1]["split"] == "train" and classes == ("a", "b", "c")
    assert len(train) + len(val) == 20 and common.first_images(val, 2)[0].shape == (2, 3, 8, 8)
    assert common.is_hub_id("owner/name") and not common.is_hub_id("no/such/folder")
    (tmp_path / "owner" / "name").mkdir(parents=True)  # a local folder of that name is read instead
    assert not common.is_hub_id("owner/name")
    with pytest.raises(common.UserError, match="no/such/folder: no such file or folder"):
        common.load_data(data_cfg(dataset="no/such/folder"))


@pytest.mark.slow
def test_compile_turns_off_buffer_donation_in_a_fresh_process():
    """--compile: lesson 03's adaptive weight differentiates one graph twice, which a compiled
    backward with donated buffers refuses (seen on CUDA). In a fresh interpreter, where torch has
    not loaded torch.compile's settings yet, common.compiled must still reach and set them (a
    compiled network's real forward and backward: tests/test_01_vq.py)."""
    import subprocess
    import sys

    code = (
        "import types, torch, common\n"
        "m = common.compiled(torch.nn.Linear(2, 2), types.SimpleNamespace(compile=True))\n"
        "import torch._functorch.config as f\n"
        "print(type(m).__name__, getattr(f, 'donated_buffer', False))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["OptimizedModule", "False"]


@pytest.mark.parametrize("ending, code", [("done", 0), ("mistake", 2), ("sigterm", 143)])
def test_the_command_line_leaves_the_process_group_however_training_ends(ending, code, capsys):
    """common.main tears a torchrun job's process group down after a normal end, a user's mistake
    and an interrupt alike (a process that exits with a live gloo group can abort)."""
    torch.distributed.init_process_group("gloo", store=torch.distributed.HashStore(), rank=0, world_size=1)

    def train(cfg):
        if ending != "done":
            raise common.UserError("bad") if ending == "mistake" else common.Interrupted("stopped", 143)

    try:
        with pytest.raises(SystemExit) if code else contextlib.nullcontext() as stop:
            common.main(train, common.TrainConfig, [])
        assert not torch.distributed.is_initialized() and (stop.value.code if code else 0) == code
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
