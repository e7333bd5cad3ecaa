"""The optimal loss of a finite training set (docs/science.md §3), one module per job, each
building only on those above it:

- ``inputs``: the training images as the estimators' data, and the memory one tile may use;
- ``estimators``: the registry of estimators (``@estimator``), each a plan of the candidate
  points of the posterior sum (exact, snis, dol, cdol), and their checks;
- ``queries``: the queries of a level: their sources, batches, and the standard error of
  their mean;
- ``gaussian_posterior``: the posterior mean's error of a batch of Gaussian queries;
- ``masked_posterior``: the consistent set's cross-entropy of a batch of masked queries;
- ``table``: the optimal-loss table, one row per noise level;
- ``study``: the estimator study, the subset estimators against the exact one;
- ``curve``: the J*(lam) curve over log-SNR that training and figures read, and its critical
  noise level.
"""
