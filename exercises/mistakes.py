"""Wrong but plausible implementations: the bugs students write, one or more per exercise.

Each must lose points (`python -m exercises selfcheck` and tests/test_exercises.py check it):
an exercise whose tests pass a known bug does not grade anything. Each source is one def, compiled
in its lesson's globals (torch, F, math, rq, vq, ar, LOG_EPS, ... are there), as a student would
write it in that file. An instructor can show them after the deadline: "which test catches this?"
"""

MISTAKES: dict[str, list[tuple[str, str]]] = {
    "01_vq.nearest_code": [
        (
            "the most similar code (largest dot product), not the nearest",
            """
def nearest_code(z, codebook):
    return (z @ codebook.t()).argmax(-1)
""",
        ),
        (
            "the argmax of the distance",
            """
def nearest_code(z, codebook):
    return torch.cdist(z.reshape(-1, z.shape[-1]), codebook).argmax(1).view(z.shape[:-1])
""",
        ),
    ],
    "01_vq.vq_loss": [
        (
            "beta on the codebook term (taming's legacy form)",
            """
def vq_loss(z_e, z_q, beta=0.25):
    return beta * codebook_loss(z_e, z_q) + commitment_loss(z_e, z_q)
""",
        ),
        (
            "no stop-gradient: both terms move both sides",
            """
def vq_loss(z_e, z_q, beta=0.25):
    return F.mse_loss(z_q, z_e) + beta * F.mse_loss(z_e, z_q)
""",
        ),
    ],
    "01_vq.straight_through": [
        (
            "returns z_q: no gradient reaches the encoder",
            """
def straight_through(z_e, z_q):
    return z_q
""",
        ),
        (
            "no detach: the gradient goes to the codes and cancels at z_e",
            """
def straight_through(z_e, z_q):
    return z_e + (z_q - z_e)
""",
        ),
    ],
    "01_vq.ema_update": [
        (
            "decay on the new statistics instead of the old ones",
            """
@torch.no_grad()
def ema_update(cluster_size, embed_sum, z, idx, decay=0.99, eps=1e-5):
    onehot = F.one_hot(idx, len(cluster_size)).to(embed_sum.dtype)  # (N, K)
    cluster_size = (1 - decay) * cluster_size + decay * onehot.sum(0)
    embed_sum = (1 - decay) * embed_sum + decay * onehot.t() @ z.to(embed_sum.dtype)
    n = cluster_size.sum()
    smoothed = (cluster_size + eps) / (n + len(cluster_size) * eps) * n
    return cluster_size, embed_sum, embed_sum / smoothed[:, None]
""",
        ),
        (
            "no Laplace smoothing: an unused code divides 0 by 0",
            """
@torch.no_grad()
def ema_update(cluster_size, embed_sum, z, idx, decay=0.99, eps=1e-5):
    onehot = F.one_hot(idx, len(cluster_size)).to(embed_sum.dtype)  # (N, K)
    cluster_size = decay * cluster_size + (1 - decay) * onehot.sum(0)
    embed_sum = decay * embed_sum + (1 - decay) * onehot.t() @ z.to(embed_sum.dtype)
    return cluster_size, embed_sum, embed_sum / cluster_size[:, None]
""",
        ),
    ],
    "01_vq.restart_dead_codes": [
        (
            "<= threshold: a code used exactly `threshold` times counts as dead",
            """
@torch.no_grad()
def restart_dead_codes(codebook, cluster_size, embed_sum, z, threshold=1.0):
    dead = cluster_size <= threshold
    if not dead.any():
        return codebook, cluster_size, embed_sum, 0
    new = z[torch.randperm(len(z))[: int(dead.sum())]].to(codebook.dtype)
    codebook, cluster_size, embed_sum = codebook.clone(), cluster_size.clone(), embed_sum.clone()
    codebook[dead], cluster_size[dead], embed_sum[dead] = new, threshold, threshold * new
    return codebook, cluster_size, embed_sum, int(dead.sum())
""",
        ),
        (
            "only the code vector restarts; its EMA count and sum stay dead",
            """
@torch.no_grad()
def restart_dead_codes(codebook, cluster_size, embed_sum, z, threshold=1.0):
    dead = (cluster_size < threshold).nonzero().flatten()
    codebook = codebook.clone()
    for k in dead.tolist():
        codebook[k] = z[torch.randint(len(z), ())]
    return codebook, cluster_size, embed_sum, len(dead)
""",
        ),
    ],
    "02_rq.residual_quantize": [
        (
            "the residual is never subtracted: every depth quantizes z itself",
            """
@torch.no_grad()
def residual_quantize(z, codebooks, depth, pick=vq.nearest_code):
    books = [codebooks] * depth if torch.is_tensor(codebooks) else list(codebooks)
    codes = torch.stack([pick(z, book) for book in books], -1)
    partial = torch.stack([book[codes[..., d]] for d, book in enumerate(books)], -2).cumsum(-2)
    return codes, partial
""",
        ),
        (
            "the partial sums are the code vectors e(k_d), not their running sum",
            """
@torch.no_grad()
def residual_quantize(z, codebooks, depth, pick=vq.nearest_code):
    books = [codebooks] * depth if torch.is_tensor(codebooks) else list(codebooks)
    r, codes, partial = z, [], []
    for book in books:
        k = pick(r, book)
        codes.append(k)
        partial.append(book[k])
        r = r - book[k]
    return torch.stack(codes, -1), torch.stack(partial, -2)
""",
        ),
    ],
    "02_rq.rq_commitment_loss": [
        (
            "only the last depth pulls the encoder",
            """
def rq_commitment_loss(z, partial):
    return F.mse_loss(z, partial[:, -1].detach())
""",
        ),
        (
            "no stop-gradient on the partial sums",
            """
def rq_commitment_loss(z, partial):
    return (z[:, None] - partial).pow(2).mean()
""",
        ),
        (
            "a sum over depths where the lesson averages",
            """
def rq_commitment_loss(z, partial):
    return (z[:, None] - partial.detach()).pow(2).mean((0, 2)).sum()
""",
        ),
    ],
    "03_vqgan.hinge_d_loss": [
        (
            "real and fake swapped",
            """
def hinge_d_loss(logits_real, logits_fake):
    return 0.5 * (F.relu(1 + logits_real).mean() + F.relu(1 - logits_fake).mean())
""",
        ),
        (
            "no relu: a linear loss that never stops pushing",
            """
def hinge_d_loss(logits_real, logits_fake):
    return 0.5 * ((1 - logits_real).mean() + (1 + logits_fake).mean())
""",
        ),
    ],
    "03_vqgan.vanilla_d_loss": [
        (
            "log(sigmoid(.)): infinite for a confident wrong logit",
            """
def vanilla_d_loss(logits_real, logits_fake):
    real = -torch.log(torch.sigmoid(logits_real)).mean()
    fake = -torch.log(1 - torch.sigmoid(logits_fake)).mean()
    return 0.5 * (real + fake)
""",
        ),
        (
            "labels swapped",
            """
def vanilla_d_loss(logits_real, logits_fake):
    return 0.5 * (F.softplus(logits_real).mean() + F.softplus(-logits_fake).mean())
""",
        ),
    ],
    "03_vqgan.adaptive_weight": [
        (
            "lambda inverted: the GAN gradient's norm over the reconstruction's",
            """
def adaptive_weight(rec_loss, gan_loss, last_layer, delta=1e-6, max_lambda=1e4):
    g_rec = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_gan = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    return (g_gan.norm() / (g_rec.norm() + delta)).clamp(0, max_lambda).detach()
""",
        ),
        (
            "no clamp: lambda explodes when the GAN gradient vanishes",
            """
def adaptive_weight(rec_loss, gan_loss, last_layer, delta=1e-6, max_lambda=1e4):
    g_rec = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_gan = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    return (g_rec.norm() / (g_gan.norm() + delta)).detach()
""",
        ),
    ],
    "04_rq_transformer.soft_codes": [
        (
            "tau multiplies the distances instead of dividing them",
            """
@torch.no_grad()
def soft_codes(z, codebook, depth, tau, stochastic=False):
    probs = []

    def pick(r, book):
        q = F.softmax(-torch.cdist(r, book).pow(2) * tau, -1)
        probs.append(q)
        return torch.multinomial(q, 1).squeeze(1) if stochastic else q.argmax(1)

    codes, _ = rq.residual_quantize(z.float(), codebook, depth, pick)
    return codes, torch.stack(probs, 1)
""",
        ),
        (
            "the distances without their minus sign: far codes get the mass",
            """
@torch.no_grad()
def soft_codes(z, codebook, depth, tau, stochastic=False):
    probs = []

    def pick(r, book):
        q = F.softmax(torch.cdist(r, book).pow(2) / tau, -1)
        probs.append(q)
        return torch.multinomial(q, 1).squeeze(1) if stochastic else torch.cdist(r, book).argmin(1)

    codes, _ = rq.residual_quantize(z.float(), codebook, depth, pick)
    return codes, torch.stack(probs, 1)
""",
        ),
    ],
    "04_rq_transformer.filter_logits": [
        (
            "top-p drops the code whose mass crosses p",
            """
def filter_logits(logits, top_k=0, top_p=1.0):
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        drop = sorted_logits.softmax(-1).cumsum(-1) > top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), -math.inf)
    return logits
""",
        ),
        (
            "top-k with <=: keeps k - 1 codes",
            """
def filter_logits(logits, top_k=0, top_p=1.0):
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits <= kth, -math.inf)
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        p = sorted_logits.softmax(-1)
        drop = p.cumsum(-1) - p >= top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), -math.inf)
    return logits
""",
        ),
        (
            "top-p on the unsorted probabilities",
            """
def filter_logits(logits, top_k=0, top_p=1.0):
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p < 1.0:
        p = logits.softmax(-1)
        logits = logits.masked_fill(p.cumsum(-1) - p >= top_p, -math.inf)
    return logits
""",
        ),
    ],
    "04_rq_transformer.sample_logits": [
        (
            "temperature multiplies the logits",
            """
def sample_logits(logits, temperature=1.0, top_k=0, top_p=1.0):
    probs = filter_logits(logits.float() * temperature, top_k, top_p).softmax(-1)
    return torch.multinomial(probs, 1).squeeze(1)
""",
        ),
        (
            "the filters are never applied",
            """
def sample_logits(logits, temperature=1.0, top_k=0, top_p=1.0):
    return torch.multinomial((logits.float() / temperature).softmax(-1), 1).squeeze(1)
""",
        ),
    ],
    "04_rq_transformer.guide": [
        (
            "the halves swapped: guidance away from the class",
            """
def guide(logits, scale):
    if scale == 1.0:
        return logits
    l_u, l_c = logits.chunk(2)
    return l_u + scale * (l_c - l_u)
""",
        ),
        (
            "extrapolates from the conditioned logits: l_c + s (l_c - l_u)",
            """
def guide(logits, scale):
    if scale == 1.0:
        return logits
    l_c, l_u = logits.chunk(2)
    return l_c + scale * (l_c - l_u)
""",
        ),
    ],
    "04_rq_transformer.KVCache.append": [
        (
            "the length never advances: every step sees only itself",
            """
def append(self, k, v):
    n = k.shape[2]
    self.k[:, :, self.len : self.len + n], self.v[:, :, self.len : self.len + n] = k, v
    return self.k[:, :, : self.len + n], self.v[:, :, : self.len + n]
""",
        ),
        (
            "returns the whole buffer, unwritten positions included",
            """
def append(self, k, v):
    n = k.shape[2]
    self.k[:, :, self.len : self.len + n], self.v[:, :, self.len : self.len + n] = k, v
    self.len += n
    return self.k, self.v
""",
        ),
    ],
    "04_rq_transformer.nll": [
        (
            "the logits taken as log-probabilities (no log_softmax)",
            """
def nll(logits, codes, soft=None):
    if soft is None:
        return -logits.float().gather(-1, codes[..., None]).mean()
    return -(soft.view_as(logits) * logits.float()).sum(-1).mean()
""",
        ),
        (
            "the soft-label cross-entropy averaged over K instead of summed",
            """
def nll(logits, codes, soft=None):
    logp = logits.float().log_softmax(-1)
    if soft is None:
        return F.nll_loss(logp.flatten(0, -2), codes.flatten())
    return -(soft.view_as(logp) * logp).mean()
""",
        ),
    ],
    "05_vq_diffusion.log_q_xt_given_x0": [
        (
            "the uniform share betabar left out of the codes",
            """
def log_q_xt_given_x0(log_x0, sched, t, exact=False):
    alpha, beta, gamma = (_log(c, exact).to(log_x0) for c in transition(sched, 0, t))
    if torch.is_tensor(t) and t.dim():
        alpha, gamma = alpha[..., None], gamma[..., None]
    total = torch.logsumexp(log_x0, -1, keepdim=True)
    out = torch.cat([log_x0 + alpha, gamma + total], -1)
    return out if exact else out.clamp_min(LOG_EPS)
""",
        ),
        (
            "[MASK] given betabar instead of gammabar",
            """
def log_q_xt_given_x0(log_x0, sched, t, exact=False):
    alpha, beta, gamma = (_log(c, exact).to(log_x0) for c in transition(sched, 0, t))
    if torch.is_tensor(t) and t.dim():
        alpha, beta = alpha[..., None], beta[..., None]
    total = torch.logsumexp(log_x0, -1, keepdim=True)
    out = torch.cat([torch.logaddexp(log_x0 + alpha, beta + total), beta + total], -1)
    return out if exact else out.clamp_min(LOG_EPS)
""",
        ),
    ],
    "05_vq_diffusion.log_q_posterior": [
        (
            "the posterior left unnormalised",
            """
def log_q_posterior(log_x0, x_t, sched, t, s=None):
    s = t - 1 if s is None else s
    log_x0 = log_x0.clamp_min(LOG_EPS)
    lik = log_q_xt_given_xs(x_t, sched, 0, t, log_x0.dtype, exact=True)[..., : sched.K]
    ratio = torch.where(lik > LOG_ZERO, log_x0 - lik, LOG_ZERO)
    log_xs = log_q_xt_given_x0(ratio, sched, s, exact=True)
    return (log_q_xt_given_xs(x_t, sched, s, t, log_x0.dtype, exact=True) + log_xs).clamp_min(LOG_EPS)
""",
        ),
        (
            "divides by a clamped q(x_t | x0) where x_t cannot follow from x0",
            """
def log_q_posterior(log_x0, x_t, sched, t, s=None):
    s = t - 1 if s is None else s
    lik = log_q_xt_given_xs(x_t, sched, 0, t, log_x0.dtype)[..., : sched.K]
    log_xs = log_q_xt_given_x0(log_x0.clamp_min(LOG_EPS) - lik, sched, s)
    log_post = log_q_xt_given_xs(x_t, sched, s, t, log_x0.dtype) + log_xs
    return (log_post - torch.logsumexp(log_post, -1, keepdim=True)).clamp_min(LOG_EPS)
""",
        ),
    ],
    "05_vq_diffusion.q_sample": [
        (
            "a redrawn code is never its own code (K - 1 choices)",
            """
def q_sample(x0, sched, t):
    shape = (-1,) + (1,) * (x0.dim() - 1)
    keep = sched.alphabar[t.cpu()].float().view(shape).to(x0.device)
    mask = sched.gammabar[t.cpu()].float().view(shape).to(x0.device)
    u = torch.rand(x0.shape, device=x0.device)
    other = (x0 + torch.randint_like(x0, 1, sched.K)) % sched.K
    return torch.where(u < keep, x0, torch.where(u < keep + mask, sched.K, other))
""",
        ),
        (
            "the schedule read one step early",
            """
def q_sample(x0, sched, t):
    shape = (-1,) + (1,) * (x0.dim() - 1)
    keep = sched.alphabar[t.cpu() - 1].float().view(shape).to(x0.device)
    mask = sched.gammabar[t.cpu() - 1].float().view(shape).to(x0.device)
    u = torch.rand(x0.shape, device=x0.device)
    other = torch.randint_like(x0, sched.K)
    return torch.where(u < keep, x0, torch.where(u < keep + mask, sched.K, other))
""",
        ),
    ],
    "05_vq_diffusion.log_q_xt_given_xs": [
        (
            "a code kept with alpha only: a redraw can land on its own code too (alpha + beta)",
            """
def log_q_xt_given_xs(x_t, sched, s, t, dtype=torch.float32, exact=False):
    alpha, beta, gamma = (c.to(x_t.device, dtype) for c in transition(sched, s, t))
    if torch.is_tensor(t) and t.dim():
        alpha, beta, gamma = alpha[..., None], beta[..., None], gamma[..., None]
    is_mask = (x_t == sched.K)[..., None]
    row = torch.where(is_mask, gamma, beta).expand(*x_t.shape, sched.K)
    own = torch.where(is_mask, gamma, alpha).expand(*x_t.shape, 1)
    row = row.scatter(-1, x_t.clamp_max(sched.K - 1)[..., None], own)
    return _log(torch.cat([row, is_mask.to(dtype)], -1), exact)
""",
        ),
        (
            "[MASK] is not absorbing: x_t = [MASK] comes from [MASK] with gamma, like a code",
            """
def log_q_xt_given_xs(x_t, sched, s, t, dtype=torch.float32, exact=False):
    alpha, beta, gamma = (c.to(x_t.device, dtype) for c in transition(sched, s, t))
    if torch.is_tensor(t) and t.dim():
        alpha, beta, gamma = alpha[..., None], beta[..., None], gamma[..., None]
    is_mask = (x_t == sched.K)[..., None]
    row = torch.where(is_mask, gamma, beta).expand(*x_t.shape, sched.K)
    own = torch.where(is_mask, gamma, alpha + beta).expand(*x_t.shape, 1)
    row = row.scatter(-1, x_t.clamp_max(sched.K - 1)[..., None], own)
    return _log(torch.cat([row, torch.where(is_mask, gamma, 0.0)], -1), exact)
""",
        ),
    ],
}
