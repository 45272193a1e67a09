"""Loss curves from a run's metrics.jsonl, for the notebooks.

A student may skip this file: it only draws what the training loop logged.
"""

from __future__ import annotations

from .runs import read_log


def plot_curves(run_dir, keys: list[str], log_scale: tuple[str, ...] = ()) -> None:
    """One panel per logged value (those of `keys` the run logged) against the step; the final
    record of the run is left out."""
    from matplotlib import pyplot as plt  # here: the lessons never need pyplot's GUI backends

    log = [r for r in read_log(run_dir) if not r.get("final")]
    keys = [k for k in keys if any(k in r for r in log)]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3), squeeze=False)
    for ax, key in zip(axes[0], keys):
        rows = [r for r in log if key in r]
        ax.plot([r["step"] for r in rows], [r[key] for r in rows])
        ax.set(title=key, xlabel="step", yscale="log" if key in log_scale else "linear")
    fig.tight_layout()
    plt.show()
