"""Config groups that ship with the library: ``estimator/<name>.yaml`` is the estimator registry.

They live in the package so that an installed wheel lists and builds its estimators; train.py's primary config
(configs/config.yaml in the repository) adds this package to Hydra's search path (``pkg://mixvae.configs``).
"""
