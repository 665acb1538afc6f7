"""Data sets the trainer reads (MVTec-AD layout, DAGM 2007, texture folders, CIFAR pickles) and the
synthetic surface generator (``trainer synth``)."""
