"""Tiny text-encoder adapters that teach a frozen AltDiffusion model a new domain's vocabulary."""
