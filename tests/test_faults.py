"""Nothing lost, nothing silently wrong (issue 29): a failed --overwrite keeps the old log, one run
at a time per folder, failed writes are one line and keep the old checkpoint, a damaged log is read
as far as it can be, odd images, labels and captions are read right or refused with their row."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import common


def small(vq, out, **kw):
    base = dict(steps=4, batch_size=8, log_every=1, eval_images=8, out=str(out))
    return vq.Config(**{**base, **kw})


def test_a_failed_overwrite_keeps_the_old_checkpoint_and_log_and_resume_continues_it(vq, tmp_path):
    vq.train(small(vq, tmp_path))
    before = {name: (tmp_path / name).read_bytes() for name in ("ckpt.pt", "metrics.jsonl")}
    with pytest.raises(common.UserError, match="the loss became"):  # fails at step 2, before any save
        vq.train(small(vq, tmp_path, steps=50, lr=1e30, overwrite=True))
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    vq.train(small(vq, tmp_path, steps=6, resume=True))
    steps = [r["step"] for r in common.read_log(tmp_path) if not r.get("final")]
    assert steps == [1, 2, 3, 4, 5, 6]  # the old run's steps, then the resumed ones; none of the failed run


def test_an_overwrite_replaces_the_log_with_its_first_checkpoint(vq, tmp_path):
    vq.train(small(vq, tmp_path, steps=6))
    vq.train(small(vq, tmp_path, steps=3, overwrite=True))
    records = common.read_log(tmp_path)
    assert [r["step"] for r in records] == [1, 2, 3, 3] and records[-1]["final"]
    assert not (tmp_path / "metrics.jsonl.new").exists()


def test_a_folder_in_use_by_a_live_run_is_refused_and_a_dead_runs_lock_is_taken_over(tmp_path):
    import socket

    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / ".lock").write_text(f"{other.pid} {socket.gethostname()}")
        with pytest.raises(common.UserError, match=rf"in use by another run \(pid {other.pid}\)"):
            common.Run(common.TrainConfig(out=str(tmp_path)))
    finally:
        other.kill()
        other.wait()
    run = common.Run(common.TrainConfig(out=str(tmp_path)))  # its process is gone: taken over
    assert (run.dir / ".lock").read_text().split()[0] == str(os.getpid())
    (tmp_path / ".lock").write_text("12345 another-host")  # a pid on another machine: not checked
    with pytest.raises(common.UserError, match="pid 12345 on another-host"):
        common.Run(common.TrainConfig(out=str(tmp_path)))


@pytest.mark.slow
def test_two_processes_in_one_folder_the_second_exits_2_and_the_first_is_untouched(tmp_path):
    script = [sys.executable, str(common.__file__).replace("common/__init__.py", "01_vq.py")]
    flags = ["--batch-size", "8", "--log-every", "5", "--eval-images", "8", "--out", "run"]
    first = subprocess.Popen([*script, *flags, "--steps", "100000"], cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "run" / ".lock").exists():  # the first run holds the folder
            assert first.poll() is None, first.stderr.read()
            assert time.monotonic() < deadline, "the first run took no lock in 120 s"
            time.sleep(0.05)
        r = subprocess.run([*script, *flags, "--steps", "10", "--overwrite"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)  # fmt: skip
        assert r.returncode == 2 and "in use by another run" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    finally:
        first.terminate()
        first.communicate(timeout=120)
    assert first.returncode == 143 and not (tmp_path / "run" / ".lock").exists()  # released at exit
    steps = [rec["step"] for rec in common.read_log(tmp_path / "run")]
    assert steps == sorted(set(steps))  # one writer: each step once


def test_a_checkpoint_that_cannot_be_written_is_one_line_and_the_old_one_stays(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    common.save_atomic({"step": 1}, path)
    old = path.read_bytes()

    def full_disk(obj, f, *a, **kw):
        open(f, "wb").write(b"half a checkpoint")
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(
        common.UserError, match=r"cannot write .*ckpt.pt .*unexpected pos.*previous file is as it was"
    ):
        common.save_atomic({"step": 2}, path)
    assert path.read_bytes() == old and not list(tmp_path.glob("*.tmp"))


def test_a_log_that_cannot_be_written_is_one_line(tmp_path):
    run = common.Run(common.TrainConfig(out=str(tmp_path)))
    (tmp_path / "metrics.jsonl").mkdir()  # not a writable file (as a read-only folder would be)
    with pytest.raises(common.UserError, match=r"cannot write .*metrics.jsonl"):
        run.log({"step": 1})


def test_resume_keeps_the_readable_records_of_a_damaged_log_and_says_what_it_dropped(vq, tmp_path, capsys):
    vq.train(small(vq, tmp_path))
    log = tmp_path / "metrics.jsonl"
    good = log.read_text()
    log.write_bytes(good.encode() + b'[1, 2]\n\x00\xff garbage\n{"step": 5, "rec"')  # a kill mid-write
    records, dropped = common.read_log(tmp_path, dropped=True)
    assert dropped == 3 and records == [json.loads(line) for line in good.splitlines()]
    vq.train(small(vq, tmp_path, steps=5, resume=True))
    assert "dropped 3 unreadable line(s)" in capsys.readouterr().out
    assert [r["step"] for r in common.read_log(tmp_path)] == [1, 2, 3, 4, 5, 5]


# --- images in other modes ---


def picture(seed=0, size=24):
    import numpy as np

    return np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint16)


def test_a_16_bit_png_is_the_same_picture_as_its_8_bit_copy(tmp_path):
    from PIL import Image

    a8 = picture()
    Image.fromarray(a8.astype("uint8")).save(tmp_path / "p8.png")
    Image.fromarray(a8 * 257).save(tmp_path / "p16.png")  # 16-bit grayscale: x * 257 spans 0..65535
    img16 = Image.open(tmp_path / "p16.png")
    assert img16.mode.startswith("I")  # what PIL gives for it (I;16 or I)
    x8, x16 = (common.image_to_tensor(Image.open(tmp_path / f), 24) for f in ("p8.png", "p16.png"))
    assert torch.equal(x16, x8) and x16.mean() < 0.5  # not the white image convert("RGB") made
    float_img = Image.fromarray(a8.astype("float32") / 255, mode="F")  # floats in [0, 1]
    assert torch.equal(common.image_to_tensor(float_img, 24), x8)


def test_fid_reads_16_bit_images_as_8_bit_and_names_an_unreadable_file(tmp_path):
    from PIL import Image

    import fid

    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    Image.fromarray(picture().astype("uint8")).convert("RGB").save(tmp_path / "a" / "x.png")
    Image.fromarray(picture() * 257).save(tmp_path / "b" / "x.png")
    a, b = (next(fid.folder_batches(tmp_path / f, 4)) for f in ("a", "b"))
    assert torch.equal(a, b)
    (tmp_path / "b" / "y.png").write_bytes(b"")  # an empty file
    with pytest.raises(common.UserError, match=r"y.png: not a readable image"):
        list(fid.folder_batches(tmp_path / "b", 4))


# --- the wrong run folder for the lesson ---


def test_sample_only_on_a_tokenizer_or_another_lessons_run_names_its_lesson(vq, script, tmp_path):
    vq.train(small(vq, tmp_path / "r01", steps=2))
    for lesson in ("04_rq_transformer", "05_vq_diffusion"):
        code, _, err = script(f"{lesson}.py", "--sample-only", "--out", "r01", cwd=tmp_path)
        assert code == 2 and len(err.strip().splitlines()) == 1
        assert f"--sample-only: r01/ckpt.pt was written by 01_vq, not by the prior of {lesson}" in err


@pytest.mark.slow
def test_a_run_that_fails_before_writing_leaves_no_empty_folder(tmp_path):
    """The folder goes with the run's lock when its process exits: a process of its own."""
    script = str(common.__file__).replace("common/__init__.py", "05_vq_diffusion.py")
    run = lambda out: subprocess.run([sys.executable, script, "--tokenizer", "missing.pt", "--out", out],
                                     cwd=tmp_path, capture_output=True, text=True, timeout=300)  # fmt: skip
    r = run("fresh")
    assert r.returncode == 2 and "missing.pt does not exist" in r.stderr
    assert not (tmp_path / "fresh").exists()
    (tmp_path / "kept").mkdir()  # a folder the user made is left as it was
    run("kept")
    assert (tmp_path / "kept").is_dir() and not any((tmp_path / "kept").iterdir())


# --- data: unreadable images, labels and captions that are not what the flags say ---


def png_bytes(seed):
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
        buf, "PNG"
    )
    return buf.getvalue()


def write_table(path, labels=None, captions=None, bad_rows=()):
    """A parquet file of 20 16-px images (rows in bad_rows: bytes that are no image), with a plain
    label column (no ClassLabel) and a caption column when given."""
    import datasets

    images = [{"bytes": b"not an image" if i in bad_rows else png_bytes(i), "path": None} for i in range(20)]
    columns = {"image": images}
    if labels is not None:
        columns["label"] = labels
    if captions is not None:
        columns["text"] = captions
    ds = datasets.Dataset.from_dict(columns)
    ds = ds.cast_column("image", datasets.Image())
    ds.to_parquet(str(path))
    return path


def data(path, **kw):
    return common.TrainConfig(dataset=str(path), image_size=16, batch_size=5, **kw)


def test_an_unreadable_image_is_skipped_and_named_not_a_crash_when_the_loop_reaches_it(tmp_path, capsys):
    path = write_table(tmp_path / "d.parquet", bad_rows=(3, 11))
    train, val, _ = common.load_data(data(path))
    seen = sum(len(next(b)[0]) for b in [common.batches(train, data(path))] for _ in range(8))
    shown = capsys.readouterr().out
    assert "skipping an unreadable image" in shown and "an image of 12 bytes" in shown
    assert seen < 8 * 5  # the batches that held one are one image smaller
    folder = tmp_path / "imgs" / "a"
    folder.mkdir(parents=True)
    for i in range(12):
        (folder / f"{i}.png").write_bytes(png_bytes(i) if i != 4 else b"")  # a 0-byte PNG
    train, val, _ = common.load_data(data(tmp_path / "imgs"))
    images = [x for b in [common.batches(train, data(tmp_path / "imgs"))] for x in next(b)[0]]
    assert "4.png" in capsys.readouterr().out and images


def test_a_folder_of_unreadable_images_says_so_first(tmp_path):
    (tmp_path / "imgs").mkdir()
    for i in range(3):
        (tmp_path / "imgs" / f"{i}.png").write_bytes(b"")
    with pytest.raises(common.UserError, match="none of its first 3 images can be read"):
        common.load_data(common.TrainConfig(dataset=str(tmp_path / "imgs")))


def test_integer_and_string_labels_without_a_classlabel_are_counted_and_a_null_names_its_row(
    tmp_path, capsys
):
    ints = write_table(tmp_path / "i.parquet", labels=[i % 3 * 10 for i in range(20)])  # 0, 10, 20
    _, val, classes = common.load_data(data(ints, label_column="label"))
    assert classes == ("0", "10", "20") and "3 classes counted" in capsys.readouterr().out
    train, val, _ = common.load_data(data(ints, label_column="label"))
    assert {train[i]["label"] for i in range(18)} == {0, 1, 2}  # 0, 10, 20 -> 0, 1, 2
    names = write_table(tmp_path / "s.parquet", labels=["dog" if i % 2 else "cat" for i in range(20)])
    train, val, classes = common.load_data(data(names, label_column="label"))
    assert classes == ("cat", "dog") and {train[i]["label"] for i in range(18)} == {0, 1}
    nulls = write_table(tmp_path / "n.parquet", labels=[None if i == 7 else "cat" for i in range(20)])
    with pytest.raises(common.UserError, match="label column 'label' row 7: None is not a class"):
        common.load_data(data(nulls, label_column="label"))


def test_captions_that_are_not_text_are_refused_with_their_row_and_nulls_are_no_caption(tmp_path):
    numbers = write_table(tmp_path / "c.parquet", captions=list(range(20)))  # a column of numbers
    with pytest.raises(common.UserError, match=r"caption column 'text' row 0: a int \(0\), not text"):
        common.load_data(data(numbers, caption_column="text"))
    some = write_table(tmp_path / "d.parquet", captions=[None if i % 2 else "a cat" for i in range(20)])
    _, val, _ = common.load_data(data(some, caption_column="text"))
    assert set(common.first_images(val, 6, captions=True)[2]) <= {"", "a cat"}


def test_a_folder_without_class_folders_says_how_labels_come_from_folders(tmp_path):
    (tmp_path / "imgs" / "only").mkdir(parents=True)
    for i in range(12):
        (tmp_path / "imgs" / "only" / f"{i}.png").write_bytes(png_bytes(i))
    with pytest.raises(common.UserError, match="class folders, at least two, all at the same depth"):
        common.load_data(data(tmp_path / "imgs", label_column="label"))


# --- stage 2: the tokenizer of a prior ---


def test_a_prior_cannot_take_the_folder_of_its_own_tokenizer_as_out(tokenizer, tmp_path):
    before = tokenizer.read_bytes()
    vqd = common.lesson("05_vq_diffusion")
    cfg = vqd.Config(tokenizer=str(tokenizer), out=str(tokenizer.parent), overwrite=True, steps=1)
    with pytest.raises(common.UserError, match=r"holds the tokenizer .* the prior would replace it"):
        vqd.train(cfg)
    assert tokenizer.read_bytes() == before


def test_an_interrupted_tokenizer_is_resumed_to_the_uninterrupted_weights_then_reused(tmp_path, monkeypatch):
    """<out>/tokenizer stopped after step 2 (no final record): stage 1 resumes it with lesson 02's
    own loop (to 4 steps here) and ends at the weights of an uninterrupted 4-step run, bit for bit;
    once finished it is reused, not trained again."""
    import dataclasses

    import stage1

    vqd, rq = common.lesson("05_vq_diffusion"), common.lesson("02_rq")
    monkeypatch.chdir(tmp_path)
    shape = dict(dataset="shapes", depth=1, codebook_size=128, eval_images=8)  # lesson 05's TOKENIZER
    whole = rq.train(rq.Config(**shape, steps=4, out="whole")).state_dict()
    rq.train(rq.Config(**shape, steps=2, out="r05/tokenizer"))
    log = tmp_path / "r05" / "tokenizer" / "metrics.jsonl"
    log.write_text("".join(line for line in log.read_text().splitlines(True) if '"final"' not in line))
    asked, train = [], rq.train
    monkeypatch.setattr(rq, "train", lambda c: asked.append(c) or train(dataclasses.replace(c, steps=4)))
    path = stage1.tokenizer_path(vqd.Config(dataset="shapes", out="r05"))
    assert path == Path("r05/tokenizer/ckpt.pt") and asked[0].resume and not asked[0].overwrite
    resumed = common.load_checkpoint(path)
    assert resumed["step"] == 4 and all(torch.equal(whole[k], resumed["model"][k]) for k in whole)
    assert stage1.tokenizer_path(vqd.Config(dataset="shapes", out="r05")) == path and len(asked) == 1


def test_the_priors_resume_advice_works_while_its_tokenizer_trained(tokenizer, tmp_path):
    """ "continue with: ... --resume" printed while the tokenizer trained: the prior has no ckpt.pt
    yet, so that --resume starts a fresh prior (not "--resume: no checkpoint")."""
    import stage1
    from common import stage2

    vqd, inside = common.lesson("05_vq_diffusion"), tmp_path / "r05" / "tokenizer"
    inside.mkdir(parents=True)
    (inside / "ckpt.pt").write_bytes(tokenizer.read_bytes())  # the prior's folder holds only this
    cfg = vqd.Config(
        dataset="shapes", out=str(tmp_path / "r05"), resume=True, tokenizer=str(inside / "ckpt.pt"), steps=1
    )
    s = stage2.setup(cfg, stage1.tokenizer)
    assert not cfg.resume and not s.run.ckpt_path.exists()


def test_a_moved_prior_samples_with_the_tokenizer_it_is_given_or_says_to_give_it(tokenizer, tmp_path):
    import shutil

    vqd = common.lesson("05_vq_diffusion")
    tok = tmp_path / "tok.pt"
    shutil.copyfile(tokenizer, tok)
    flags = dict(steps=1, batch_size=8, eval_images=8, width=16, heads=2, layers=1, steps_T=4, stride=2,
                 samples_per_class=1)  # fmt: skip
    vqd.train(vqd.Config(tokenizer=str(tok), out=str(tmp_path / "a"), **flags))
    (tmp_path / "a").rename(tmp_path / "b")
    tok.rename(tmp_path / "moved.pt")  # the run folder and its tokenizer both moved
    again = dict(out=str(tmp_path / "b"), sample_only=True, samples_per_class=1)
    with pytest.raises(
        common.UserError, match=r"tokenizer .*tok.pt is not there .* pass it as --tokenizer FILE"
    ):
        vqd.train(vqd.Config(**again))
    (tmp_path / "b" / "samples.png").unlink()
    vqd.train(vqd.Config(**again, tokenizer=str(tmp_path / "moved.pt")))
    assert (tmp_path / "b" / "samples.png").exists()


def test_a_tokenizer_saved_with_flags_that_have_since_gone_still_loads(tokenizer, tmp_path):
    """A checkpoint from before --hf-id joined --dataset (and --num-workers, --ckpt-every left):
    the gone flags are dropped, a hub id in hf_id becomes the dataset."""
    import stage1

    ckpt = torch.load(tokenizer, weights_only=False)
    ckpt["config"].update(hf_id="owner/faces", num_workers=0, ckpt_every=500)
    torch.save(ckpt, tmp_path / "old.pt")
    model, cfg = stage1.load_tokenizer(tmp_path / "old.pt")
    fresh, fresh_cfg = stage1.load_tokenizer(tokenizer)
    assert cfg.dataset == "owner/faces" and cfg.depth == fresh_cfg.depth == 2
    assert not hasattr(cfg, "hf_id") and not hasattr(cfg, "num_workers")
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(model.encoder(x), fresh.encoder(x))
