"""The exercises, as data: which function a student writes, what it is worth, and a one-line hint.

An exercise is a function (or a method, `Class.method`) of a lesson, named `lesson.function`.
Its tests are the tests marked `@pytest.mark.exercise("lesson.function")` in tests/test_<lesson>.py;
a wrong implementation that students write is in exercises/mistakes.py. To add an exercise: add
a row here, mark its tests, add a mistake, and run `python -m exercises selfcheck`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Exercise:
    name: str  # "02_rq.residual_quantize": the lesson's file stem, then the function's qualified name
    points: int
    hint: str  # one line, shown in the NotImplementedError of the student's copy

    @property
    def lesson(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def qualname(self) -> str:  # "residual_quantize", or "KVCache.append" for a method
        return self.name.split(".", 1)[1]


EXERCISES = [
    Exercise("01_vq.nearest_code", 6, "expand ||z - e||^2; the term ||z||^2 is the same for every code"),
    Exercise("01_vq.vq_loss", 4, "codebook term plus beta times commitment term; sg[] is .detach()"),
    Exercise("01_vq.straight_through", 3, "z_e plus a detached difference: the forward value is z_q"),
    Exercise("01_vq.ema_update", 6, "bincount and index_add_ give n_k and the vector sums; smooth N_k"),
    Exercise("01_vq.restart_dead_codes", 5, "codes with N_k < threshold take distinct batch vectors"),
    Exercise("02_rq.residual_quantize", 6, "a loop over depths: pick the code of the residual, subtract it"),
    Exercise("02_rq.rq_commitment_loss", 4, "the mean over depths of ||z - sg[Z^(d)]||^2"),
    Exercise("03_vqgan.hinge_d_loss", 3, "relu(1 - D(x)) on real logits, relu(1 + D(x^)) on fake ones"),
    Exercise("03_vqgan.vanilla_d_loss", 3, "-log sigmoid(l) = softplus(-l), in a stable form"),
    Exercise("03_vqgan.adaptive_weight", 5, "torch.autograd.grad of each loss w.r.t. last_layer"),
    Exercise(
        "04_rq_transformer.soft_codes", 6, "give lesson 02's residual_quantize a pick() that keeps Q_tau"
    ),
    Exercise("04_rq_transformer.filter_logits", 6, "sort once for top-p; keep the code whose mass crosses p"),
    Exercise(
        "04_rq_transformer.sample_logits", 5, "divide by T, filter, softmax, then draw one code per row"
    ),
    Exercise("04_rq_transformer.guide", 3, "the batch is [conditioned; unconditioned]: split it in two"),
    Exercise(
        "04_rq_transformer.KVCache.append",
        5,
        "write k, v into the buffers at self.len; return the filled part",
    ),
    Exercise(
        "04_rq_transformer.nll", 4, "log_softmax, then gather the true code (or weigh by the soft labels)"
    ),
    Exercise(
        "05_vq_diffusion.log_q_xt_given_x0", 6, "transition(sched, 0, t) gives alphabar, betabar, gammabar"
    ),
    Exercise(
        "05_vq_diffusion.log_q_posterior", 8, "Bayes: q(x_t | x_s) q(x_s | x_0) / q(x_t | x_0), normalised"
    ),
    Exercise(
        "05_vq_diffusion.q_sample",
        5,
        "one uniform draw per code: keep, mask or redraw by the cumulative probs",
    ),
    Exercise(
        "05_vq_diffusion.log_q_xt_given_xs",
        7,
        "where x_t can come from: kept or redrawn as itself, redrawn from another code, masked; [MASK] stays",
    ),
]
BY_NAME = {e.name: e for e in EXERCISES}
LESSONS = sorted({e.lesson for e in EXERCISES})
