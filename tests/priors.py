"""Small autoregressive priors for the tests: lesson 04's RQ-Transformer or the flat baseline of
beyond/flat_gpt.py (the same interface), with random code vectors and weights."""

import importlib

import torch

import common


def small_prior(flatten=False, K=7, d_code=5, T=6, D=3, classes=3, seed=0):
    ar = common.lesson("04_rq_transformer")
    torch.manual_seed(seed)
    cfg = ar.Config(width=16, heads=2, spatial_layers=2, depth_layers=1, dropout=0.0)
    Model = importlib.import_module("beyond.flat_gpt").FlatTransformer if flatten else ar.RQTransformer
    return Model(torch.randn(K, d_code), T, D, cfg, classes).eval()
