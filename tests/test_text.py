"""Text-to-image: captions of the built-in data, the text encoders (small and CLIP), the caption
prefix of lesson 04 and the cross-attention of lesson 05, guidance with the empty caption,
rejection sampling, captions of real data, --prompt and --sample-only."""

import json
import string
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import common
import sample_quality
import stage1
from common import stage2
from common.text import SmallTextEncoder, word_ids

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ar():
    return common.lesson("04_rq_transformer")


@pytest.fixture(scope="module")
def vqd():
    return common.lesson("05_vq_diffusion")


def randomized(module, seed=0):
    """Weights away from their zero initialisation (AdaLN, position tables), so everything matters."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return module.eval()


# --- captions ---


@pytest.mark.parametrize("plain", [True, False])
def test_captions_are_deterministic_and_name_the_class_and_the_colours(plain):
    seeds = range(300)
    captions = [common.shape_caption(i, plain) for i in seeds]
    assert captions == [common.shape_caption(i, plain) for i in seeds]
    templates = set()
    for seed, text in zip(seeds, captions):
        p = common.shape_params(seed, plain)
        assert common.SHAPE_CLASSES[p["label"]].replace("-", " ") in text
        assert common.colour_name(p["fg"], plain) in text
        if plain:  # the palette words are exact
            fg = common.PLAIN_COLOURS.index(tuple(int(v) for v in p["fg"]))
            assert common.PLAIN_COLOUR_NAMES[fg] in text
        templates.add(text.split()[0] + str(text.count(",")))
        assert ",," not in text and "  " not in text and " a a" not in f" {text}"
    assert len(templates) >= 4  # the wording and order vary
    assert len(set(captions)) > 200


@pytest.mark.slow
def test_captions_are_the_same_in_another_process():
    code = "import common; print(repr([common.shape_caption(i, True) for i in range(20)]))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert eval(out.stdout) == [common.shape_caption(i, True) for i in range(20)]


def test_the_dataset_returns_each_images_caption_and_batches_carry_them():
    ds = common.Shapes("val", 32, 0, plain=True)
    item = ds[5]
    assert item["caption"] == common.shape_caption(ds.base + 5, True)
    assert common.SHAPE_CLASSES[item["label"]].replace("-", " ") in item["caption"]
    x, y, text = next(common.batches(ds, common.TrainConfig(batch_size=4)))
    assert x.shape == (4, 3, 32, 32) and len(text) == 4
    for label, caption in zip(y.tolist(), text):
        assert common.SHAPE_CLASSES[label].replace("-", " ") in caption


def test_colour_judge_reads_the_shape_colour_of_real_images():
    import sample_quality

    ds = common.Shapes("val", 32, 0, plain=True)
    x, _ = common.first_images(ds, 200)
    want = torch.tensor([common.PLAIN_COLOURS.index(tuple(int(v) for v in common.shape_params(ds.base + i, True)["fg"])) for i in range(200)])  # fmt: skip
    assert (sample_quality.shape_colour(x) == want).all()
    recoloured = x.clone()  # paint every shape pixel in palette colour 2 (pink)
    far = (x - x[:, :, :1, :1]).abs().sum(1, keepdim=True) > 0.7
    pink = torch.tensor(common.PLAIN_COLOURS[2]).float().view(1, 3, 1, 1) / 127.5 - 1
    recoloured = torch.where(far, pink, recoloured)
    assert (sample_quality.shape_colour(recoloured) == 2).float().mean() > 0.95


def test_prompts_name_what_the_judges_read():
    prompts = common.class_prompts(common.SHAPE_CLASSES, plain=True)
    assert stage2.prompt_classes(prompts).tolist() == list(range(8))
    assert stage2.prompt_colours(prompts).tolist() == [0, 1, 2, 3] * 2
    assert stage2.prompt_classes(["a big thing"]) is None


# --- text encoders ---


def test_word_ids_are_hashed_words_after_a_start_token_then_padding():
    ids = word_ids(["A red, STAR!", "", "one two three four five six"], 5)
    assert ids.shape == (3, 5) and (ids[:, 0] == 1).all()
    assert ids[0, 1:4].tolist() == word_ids(["a red star"], 5)[0, 1:4].tolist() and ids[0, 4] == 0
    assert ids[1, 1:].tolist() == [0, 0, 0, 0]  # the empty caption: start, then padding
    assert (ids[2, 1:] >= 2).all()  # truncated to length - 1 words
    assert len(set(ids[0, 1:4].tolist())) == 3


def tiny_clip(folder):
    """A randomly initialised 2-layer CLIP text model and a character-level CLIP tokenizer, saved
    the way `transformers` saves a hub model (no download)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in string.ascii_lowercase + string.digits:
        vocab[ch], vocab[ch + "</w>"] = len(vocab), len(vocab) + 1
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt")).save_pretrained(folder)
    cfg = CLIPTextConfig(vocab_size=len(vocab), hidden_size=24, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=24, bos_token_id=0, eos_token_id=1, pad_token_id=1)  # fmt: skip
    torch.manual_seed(0)
    CLIPTextModel(cfg).save_pretrained(folder)
    return folder


def test_the_clip_text_encoder_is_frozen_and_stays_out_of_the_state_dict(tmp_path):
    from transformers import CLIPTextModel

    clip = common.text.CLIPText(str(tiny_clip(tmp_path / "clip")), length=77)
    assert clip.width == 24 and clip.length == 24  # capped at its position table
    tokens = clip.tokenize(["a red star", ""])
    assert tokens.shape == (2, 24)
    ref = CLIPTextModel.from_pretrained(tmp_path / "clip").eval()
    torch.testing.assert_close(clip(tokens), ref(input_ids=tokens).last_hidden_state)
    assert clip.state_dict() == {} and not any(p.requires_grad for p in clip.parameters())
    clip.train()
    assert not clip.model.training  # no dropout whatever the prior does
    clip.load_state_dict({})  # a prior's checkpoint holds none of it


def test_an_unreachable_clip_is_a_one_line_error_exit_2(script, tmp_path):
    with pytest.raises(common.UserError, match="no such folder"):
        common.text.CLIPText("./no-clip")
    code, _, err = script("05_vq_diffusion.py", "--condition", "text", "--text-encoder", "openai/clip-vit-base-patch32",
                          "--tokenizer", tmp_path / "none.pt", "--out", tmp_path / "r", cwd=tmp_path)  # fmt: skip
    assert (
        code == 2 and "hf download openai/clip-vit-base-patch32" in err and len(err.strip().splitlines()) == 1
    )


# --- lesson 04: the caption as a prefix ---


def text_prior(ar, T=6, D=3, K=7, length=5, seed=0):
    torch.manual_seed(seed)
    cfg = ar.Config(width=16, heads=2, spatial_layers=2, depth_layers=1, condition="text")
    text = SmallTextEncoder(16, length, layers=1, heads=2)
    return randomized(ar.RQTransformer(torch.randn(K, 5), T, D, cfg, 1, text), seed)


@pytest.mark.parametrize("t, d", [(0, 0), (2, 1), (5, 2)])
def test_the_caption_prefix_keeps_04_causal_and_is_read_from_the_first_code(ar, t, d):
    m = text_prior(ar)
    c = m.text.tokenize(["a pink star", "a white ring near the top"])
    codes = torch.randint(7, (2, 6, 3))
    changed = codes.clone().view(2, -1)
    changed[:, t * 3 + d :] = torch.randint(7, changed[:, t * 3 + d :].shape)
    with torch.no_grad():
        a, b = m(codes, c).view(2, 18, 7), m(changed.view(2, 6, 3), c).view(2, 18, 7)
        other = m(codes, m.text.tokenize(["a yellow cross", "a white ring near the top"])).view(2, 18, 7)
    torch.testing.assert_close(a[:, : t * 3 + d + 1], b[:, : t * 3 + d + 1])  # no code reads a later one
    assert not torch.allclose(a[0, 0], other[0, 0])  # the very first code reads the caption
    torch.testing.assert_close(a[1], other[1])  # and only its own image's caption


@pytest.mark.parametrize("guidance", [1.0, 2.5])
def test_cached_text_sampling_draws_from_the_full_forward_logits(ar, guidance):
    """The sampler fills its cache with the prompt, then draws; scale 1 is the conditional model,
    scale s the guided l_u + s (l_c - l_u) with l_u the prior given the empty caption."""
    m = text_prior(ar)
    c = m.text.tokenize(["a pink star", "green background, small cross", ""])
    torch.manual_seed(3)
    codes, logits = m.sample(c, guidance=guidance)
    with torch.no_grad():
        l_c, l_u = m(codes, c), m(codes, m.text.tokenize([""] * 3))
    torch.testing.assert_close(logits, l_u + guidance * (l_c - l_u), atol=1e-4, rtol=1e-4)


# --- lesson 05: cross-attention ---


def text_diffusion(vqd, K=5, H=3, D=2, length=5):
    torch.manual_seed(0)
    cfg = vqd.Config(width=16, heads=2, layers=2, steps_T=6, condition="text")
    return randomized(vqd.DiffusionTransformer(K, H, D, cfg, 1, SmallTextEncoder(16, length, 1, 2)))


def test_cross_attention_reads_each_images_own_caption_only(vqd):
    m = text_diffusion(vqd)
    x_t, t = torch.randint(6, (3, 9, 2)), torch.tensor([2, 4, 6])
    prompts = ["a pink star", "a white ring", "grey background, large square"]
    with torch.no_grad():
        a = m(x_t, t, m.text.tokenize(prompts))
        b = m(x_t, t, m.text.tokenize([prompts[0], "a yellow crescent near the left", prompts[2]]))
    assert not torch.allclose(a[1], b[1])  # image 1 reads its caption ...
    torch.testing.assert_close(a[[0, 2]], b[[0, 2]])  # ... and no other image does
    assert all(isinstance(block.cross, vqd.CrossAttention) for block in m.blocks)


def test_text_guidance_in_05_is_the_guided_mix_of_caption_and_empty_caption(vqd):
    m = text_diffusion(vqd)
    c = m.text.tokenize(["a pink star", "a white ring"])
    calls = []
    forward = m.forward
    m.forward = lambda x_t, t, cc: calls.append(cc.clone()) or forward(x_t, t, cc)
    vqd.sample(m, vqd.noise_schedule(6, 5, 1.0, 0.0), c, stride=3, guidance=2.0)
    empty = m.text.tokenize([""] * 2)
    assert len(calls) == 2 and all(torch.equal(cc, torch.cat([c, empty])) for cc in calls)
    calls.clear()
    vqd.sample(m, vqd.noise_schedule(6, 5, 1.0, 0.0), c, stride=3, guidance=1.0)
    assert all(torch.equal(cc, c) for cc in calls)  # scale 1: the conditional model alone


def test_the_small_text_encoder_starts_from_the_seed_not_from_what_ran_before(vqd, tokenizer, tmp_path):
    """stage2.setup builds it after seeding with --seed: the same weights whatever the RNG held."""
    weights = []
    for before in (1, 2):
        torch.manual_seed(before)  # what a notebook or an earlier run left behind
        cfg = vqd.Config(tokenizer=str(tokenizer), condition="text", out=str(tmp_path / str(before)))
        weights.append(stage2.setup(cfg, stage1.tokenizer).text.state_dict())
    for k in weights[0]:
        assert torch.equal(weights[0][k], weights[1][k]), k


def test_caption_dropout_uses_the_empty_caption_at_its_rate():
    s = stage2.Stage2(*[None] * 8, 1, 8, 32, "text", SmallTextEncoder(8, 4, 1, 2), None, True)
    s.device = torch.device("cpu")
    torch.manual_seed(0)
    c = s.condition_of(None, ["a pink star"] * 4000, drop=0.1)
    empty = (c == s.text.tokenize([""])).all(1).float().mean().item()
    assert abs(empty - 0.1) < 0.02
    assert torch.equal(s.condition_of(None, ["a pink star"] * 3), s.text.tokenize(["a pink star"] * 3))


# --- rejection sampling ---


def test_rejection_keeps_the_best_scored_fraction_of_each_row():
    torch.manual_seed(0)
    per_row, keep = 3, 0.25
    drawn = sample_quality.candidates(per_row, keep)
    assert drawn == 12 and sample_quality.candidates(4, 0.5) == 8 and sample_quality.candidates(16, 1.0) == 16
    scores = torch.rand(2 * drawn)
    idx = sample_quality.reject(scores, per_row, drawn)
    for row in range(2):
        block = scores[row * drawn : (row + 1) * drawn]
        want = (block.sort(descending=True).indices[:per_row] + row * drawn).tolist()
        assert idx[row * per_row : (row + 1) * per_row].tolist() == want


@pytest.mark.parametrize(
    "flags, message",
    [
        (dict(reject_keep=0.0), "--reject-keep"),
        (dict(reject_keep=1e-9), "draws 1.6e.10 images per row of samples.png; at most 1024"),
        (dict(reject_keep=0.5, dataset="some/folder"), "built-in data only"),
        (dict(condition="text", dataset="some/folder"), "--caption-column"),
        (dict(prompt=("a star",), condition="class"), "--prompt needs a text-conditional prior"),
        (dict(reject_keep=0.5, condition="none"), "not with --condition none"),
    ],
)
def test_text_flag_errors(vqd, flags, message):
    with pytest.raises(ValueError, match=message):
        vqd.Config(**flags)


# --- the lessons end to end ---


def test_text_conditional_training_writes_samples_prompts_and_metrics_and_samples_again(
    vqd, tokenizer, tmp_path
):
    out = tmp_path / "run"
    flags = dict(tokenizer=str(tokenizer), width=32, heads=2, layers=1, steps_T=4, stride=2, batch_size=8,
                 eval_images=8, samples_per_class=2, out=str(out), condition="text")  # fmt: skip
    vqd.train(
        vqd.Config(steps=6, log_every=3, prompt=("a pink star", "a white ring"), reject_keep=0.5, **flags)
    )
    log = common.read_log(out)
    final = log[-1]
    assert final["final"] and 0 <= final["sample_class_acc"] <= 1 and 0 <= final["sample_colour_acc"] <= 1
    assert (out / "prompts.png").exists() and (out / "samples.png").exists()
    from PIL import Image

    assert Image.open(out / "prompts.png").size[1] < Image.open(out / "samples.png").size[1]  # 2 rows, 8 rows
    before = (out / "ckpt.pt").read_bytes(), (out / "metrics.jsonl").read_text()
    (out / "prompts.png").unlink()
    again = common.parse(vqd.Config, ["--out", str(out), "--sample-only", "--samples-per-class", "2",
                                      "--prompt", "a yellow cross", "--prompt", "grey background", "--prompt", "a ring"])  # fmt: skip
    vqd.train(again)  # the model's flags come from the checkpoint, the sampling flags from the command
    assert again.condition == "text" and again.width == 32 and (out / "prompts.png").exists()
    flags.update(condition="class", out=str(tmp_path / "class"))
    vqd.train(vqd.Config(steps=2, **flags))  # a class-conditional prior cannot draw prompts
    with pytest.raises(common.UserError, match="not text-conditional; train one with --condition text"):
        vqd.train(
            common.parse(
                vqd.Config, ["--out", str(tmp_path / "class"), "--sample-only", "--prompt", "a star"]
            )
        )
    assert (
        Image.open(out / "prompts.png").size[1] > Image.open(out / "samples.png").size[1] * 3 / 8 - 1
    )  # 3 rows
    assert before == (
        (out / "ckpt.pt").read_bytes(),
        (out / "metrics.jsonl").read_text(),
    )  # nothing retrained


def test_text_training_with_a_tiny_clip_keeps_it_frozen_and_out_of_the_checkpoint(ar, tokenizer, tmp_path):
    clip = tiny_clip(tmp_path / "clip")
    out = tmp_path / "run"
    cfg = ar.Config(tokenizer=str(tokenizer), width=16, heads=2, spatial_layers=1, depth_layers=1, batch_size=8,
                    eval_images=8, samples_per_class=1, steps=3, out=str(out), condition="text",
                    text_encoder=str(clip))  # fmt: skip
    model = ar.train(cfg)
    ckpt = common.load_checkpoint(out / "ckpt.pt")
    assert not any(k.startswith("text.model.") for k in ckpt["model"]) and "text_in.weight" in ckpt["model"]
    from transformers import CLIPTextModel

    ref = CLIPTextModel.from_pretrained(clip).state_dict()
    for k, v in model.text.model.state_dict().items():
        torch.testing.assert_close(v, ref[k])  # never trained
    assert common.read_log(out)[-1]["final"]


def test_captions_of_a_parquet_file_and_of_a_folder_with_metadata_jsonl(tmp_path):
    import pandas as pd
    from PIL import Image

    images = [common.render_shape(i, 16, plain=True)[0] for i in range(12)]
    folder = tmp_path / "folder"
    folder.mkdir()
    rows = []
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"{i}.png")
        rows.append({"file_name": f"{i}.png", "text": f"caption number {i}"})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = common.TrainConfig(dataset=str(folder), caption_column="text", image_size=16)
    train, val, _ = common.load_data(cfg)
    seen = {train[i]["caption"] for i in range(len(train))} | {val[i]["caption"] for i in range(len(val))}
    assert seen == {f"caption number {i}" for i in range(12)}
    import io

    buf = [io.BytesIO() for _ in images]
    for b, img in zip(buf, images):
        Image.fromarray(img).save(b, format="PNG")
    frame = pd.DataFrame({"image": [{"bytes": b.getvalue(), "path": None} for b in buf], "caption": [f"c{i}" for i in range(12)]})  # fmt: skip
    frame.to_parquet(tmp_path / "d.parquet")
    train, _, _ = common.load_data(common.TrainConfig(dataset=str(tmp_path / "d.parquet"), caption_column="caption", image_size=16))  # fmt: skip
    assert {train[i]["caption"] for i in range(len(train))} <= {f"c{i}" for i in range(12)}
    with pytest.raises(common.UserError, match=r"no caption column 'words'; its columns are: image, caption"):
        common.load_data(common.TrainConfig(dataset=str(tmp_path / "d.parquet"), caption_column="words", image_size=16))  # fmt: skip


def test_prompt_is_repeatable_on_the_command_line():
    cfg = common.parse(
        common.lesson("05_vq_diffusion").Config, ["--prompt", "a pink star", "--prompt", "a ring"]
    )
    assert cfg.prompt == ("a pink star", "a ring") and cfg.condition == "text"
    assert common.parse(common.lesson("04_rq_transformer").Config, []).prompt == ()


def test_sample_only_without_a_trained_prior_is_a_one_line_error_exit_2(script, tmp_path):
    code, _, err = script("04_rq_transformer.py", "--sample-only", "--out", tmp_path / "none", cwd=tmp_path)
    assert code == 2 and "--sample-only: no checkpoint at" in err and len(err.strip().splitlines()) == 1
