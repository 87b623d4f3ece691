"""Training loops and model cards for the shipped models; imported only by ``mmexplain train``."""
