"""Metrics: FID with the standard Inception (``fid``, ``inception``), the classifier Fréchet
distance for small datasets (``classifier``), the Fréchet distance itself (``frechet``), and the
likelihood bounds in bits per dimension (``nll``). Import the submodules you need."""
