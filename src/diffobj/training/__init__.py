"""The pieces of ``diffobj.training.train.train``, one job each, read top to bottom:

``setup``      device and world, objective, data, network and state of a run (``Setup``)
``objective``  the loss, built once from the run config (weighted process loss or gap density)
``state``      what a checkpoint holds (network, EMA, optimizer, generators, windows, logs)
``step``       one training step, the log row, the refresh of a gap density
``loop``       resume, steps, logging cadence, checkpoints and signals
``outputs``    RUN_DIR's files; ``evaluate``: eval_bins.csv
"""
