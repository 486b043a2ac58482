"""No-op stand-in for dvclive on the GPU machine (no registry there to install dvc's dependency tree);
the experiment reads the stages' metrics JSON, not the dvclive logs."""


class Live:
    def __init__(self, *a, **k):
        pass

    def log_metric(self, *a, **k):
        pass

    def next_step(self):
        pass

    def end(self):
        pass
