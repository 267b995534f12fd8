"""Training: the two-tower model (contrastive, LiT options, precomputed features, DDP) and the
cross-encoder reranker, with held-out evaluation against named baselines."""
