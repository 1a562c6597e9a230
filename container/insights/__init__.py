"""What training saved, read back: the Debugger rules, the profiler report, the loss plot.

Runs after (or beside) a training job, in the training image or on the host; never imported by the
training loop itself.
"""
