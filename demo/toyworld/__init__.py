"""The toy demo: a world of coloured shapes, its base trainer, its tag domain, evaluation and results.

The core package never imports this one.
"""
