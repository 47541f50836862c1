"""A small Flax-free trainer for the tutorial's CNN, and its figures.

``jaxloss.train.model`` holds the network as plain functions
(``init_params``, ``apply``), ``jaxloss.train.trainer`` the loop
(``loss_fn``, ``accuracy``, one jitted step), ``jaxloss.train.data`` the
data sets, ``jaxloss.train.plots`` the figures and ``jaxloss.train.article``
the tutorial's example. The command line is ``jaxloss`` (``jaxloss.cli``).

Only the ``train`` extra's packages (matplotlib, scikit-learn, tqdm) are
optional, and they are imported when first needed.
"""
