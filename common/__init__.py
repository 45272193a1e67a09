"""Plumbing shared by the lessons, one file per concern. A student may skip this folder: nothing in it
is a concept the lessons teach.

Lessons use it as `import common` and call `common.load_data(...)`; each name below is defined in
the file it is imported from. Earlier lessons are imported with `common.lesson("01_vq")`.
Lesson 03 also imports two borrowed networks directly: `lpips.py` (its perceptual loss) and
`vqgan_nets.py` (taming's encoder and decoder).
"""

# errors.py: the exceptions a user sees
from .errors import UserError, Interrupted

# cli.py: Config -> flags, the entry point, importing a lesson
from .cli import lesson, main, TrainConfig, require, _field_help, parse


# device.py: device, seeds, precision, progress bars
from .device import get_device, seed_everything, autocast, exact_float32, progress, echo

# shapes.py: the built-in procedural datasets
from .shapes import (
    SHAPE_CLASSES,
    SHAPES_TRAIN,
    SHAPES_VAL,
    BUILTIN,
    PLAIN_BACKGROUNDS,
    PLAIN_COLOURS,
    PLAIN_COLOUR_NAMES,
    render_shape,
    shape_params,
    shape_caption,
    class_prompts,
    colour_name,
    Shapes,
)

# datasets.py: what a --dataset names: hub registry, presets, image sizes, held-out images
from .datasets import (
    HubDataset,
    DATASETS,
    dataset_choices,
    IMAGE_SUFFIXES,
    native_image_size,
    default_image_size,
    preset_name,
    apply_preset,
    HELD_OUT,
    HOLD_OUT_SEED,
    held_out_indices,
    is_hub_id,
)

# loading.py: loading images, batches
from .loading import load_data, batches, first_images

# images.py: image values <-> tensors, image grids
from .images import image_to_tensor, to_rgb, to_uint8, save_grid, save_titled_grid

# nets.py: the conv encoder/decoder of lessons 01-02, PSNR, code usage
from .nets import ResBlock, Encoder, Decoder, psnr, codebook_stats

# runs.py: the run folder: metrics log, checkpoints, --resume, Ctrl-C
from .runs import Run, read_log, lesson_name, start

# curves.py: loss curves from metrics.jsonl, for the notebooks
from .curves import plot_curves

# checkpoints.py: checkpoint files and downloaded weights
from .checkpoints import (
    fetch_weights,
    save_atomic,
    load_checkpoint,
    load_state,
    saved_config,
    rng_state,
    set_rng_state,
)

# dist.py: torchrun + DDP, gradient accumulation, torch.compile
from .dist import (
    unwrap,
    all_reduce_sum,
    dist_on,
    rank,
    is_main,
    distributed,
    wrap,
    broadcast_from_main,
    compiled,
    accumulating,
    barrier,
    teardown,
)

# text.py: captions -> token ids -> features (the small text encoder, a frozen CLIP)
from . import text  # after the rest: it needs nothing of them
