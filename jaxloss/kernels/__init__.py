"""Fast paths for the losses that touch every logit: custom VJPs and kernels.

:mod:`jaxloss.kernels.cross_entropy` holds the custom-VJP cross entropy (every
backend) and :mod:`jaxloss.kernels.pallas_cross_entropy` its Pallas (Triton)
kernels for GPUs. The public losses dispatch here through their
``implementation`` keyword; nothing in this package is public API.
"""
